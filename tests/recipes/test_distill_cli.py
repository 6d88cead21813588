"""`xtok distill` through the real CLI: one process, and two CPU processes under torchrun (DDP over gloo)."""

import json
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.test_cli import xtok

CONFIG = """recipe: distill
student: {student}
teacher: {teacher}
out: {out}
data: {{spec: {data}}}
seq_len: 16
max_sequences: 8
batch_size: 1
teacher_cache: {{top_k: 8}}
logging_steps: 1
stages:
  - {{train: embeddings, steps: 2, learning_rate: 1.0e-2}}
  - {{train: full, steps: 2, learning_rate: 1.0e-3}}
"""


@pytest.fixture
def config(tiny_model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["def f(x):\n    return x * 2\n" * 6, "Hello world. " * 20]))
    path = tmp_path / "distill.yaml"
    path.write_text(CONFIG.format(student=tiny_model_dir("smollm2-135m"), teacher=tiny_model_dir("smollm2-135m", seed=1),
                                  out=tmp_path / "out", data=data))
    return path


def _epochs(out):
    log = json.loads((out / "distill_log.json").read_text())
    return log["processes"], [max(e["epoch"] for e in s["log_history"]) for s in log["stages"]]


def test_distill_cli_single_process(config, tmp_path):
    res = xtok("distill", "--config", str(config), "stages.1.steps=1", "--out", str(tmp_path / "o1"))
    assert res.returncode == 0, res.stderr
    assert "stage-1-embeddings" in res.stdout and "stage-2-full" in res.stdout
    # a bar with the time left for the teacher cache and for each stage's steps
    assert re.search(r"teacher cache: 100%\|.*\| 8/8 \[\d\d:\d\d<00:00", res.stderr), res.stderr[-2000:]
    assert re.search(r"100%\|.*\| 1/1 \[\d\d:\d\d<00:00", res.stderr), res.stderr[-2000:]
    assert _epochs(tmp_path / "o1") == (1, [0.25, 0.125])  # 2 and 1 steps of 1 of 8 sequences
    AutoModelForCausalLM.from_pretrained(tmp_path / "o1")
    again = xtok("distill", "--config", str(config), "--out", str(tmp_path / "o1"))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_distill_two_cpu_processes_ddp(config, tmp_path):
    out = tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "xtok", "distill",
                          "--config", str(config), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # Each optimizer step consumed one sequence per process: two processes cover twice the data per step.
    assert _epochs(out) == (2, [0.5, 0.5])
    final = AutoModelForCausalLM.from_pretrained(out).state_dict()
    stage1 = AutoModelForCausalLM.from_pretrained(out / "stages" / "stage-1-embeddings" / "model").state_dict()
    assert not torch.equal(final["model.layers.1.mlp.down_proj.weight"], stage1["model.layers.1.mlp.down_proj.weight"])
