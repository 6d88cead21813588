"""transformers assisted generation as a drafter backend, instrumented for exact acceptance counts."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import torch

from xtok.registry import DRAFT_BACKENDS
from xtok.speculative.metrics import summarize_rounds

log = logging.getLogger(__name__)


@contextlib.contextmanager
def record_rounds(model) -> Iterator[list[tuple[int, int]]]:
    """Record (drafted, accepted) for every verification round of ``model.generate(assistant_model=...)``.

    transformers returns no acceptance figures; its candidate generator sees both numbers, so the
    generator it builds is wrapped for the duration of the context.
    """
    rounds: list[tuple[int, int]] = []
    original = model._get_candidate_generator

    def patched(*args, **kwargs):
        gen = original(*args, **kwargs)
        get, update = gen.get_candidates, gen.update_candidate_strategy
        last = {"drafted": 0}

        def get_candidates(input_ids, *a, **kw):
            cand, logits = get(input_ids, *a, **kw)
            last["drafted"] = cand.shape[1] - input_ids.shape[1]
            return cand, logits

        def update_candidate_strategy(input_ids, scores, num_matches):
            rounds.append((last["drafted"], int(num_matches)))
            return update(input_ids, scores, num_matches)

        gen.get_candidates, gen.update_candidate_strategy = get_candidates, update_candidate_strategy
        return gen

    model._get_candidate_generator = patched
    try:
        yield rounds
    finally:
        del model._get_candidate_generator


GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)


@DRAFT_BACKENDS.register("hf", help="transformers assisted generation (batch size 1), counts from its candidate generator")
def hf_draft_check(target, drafter, tokenizer, prompts: list[str], *, k: int, max_new_tokens: int,
                   drafter_tokenizer=None, progress: bool = False) -> dict:
    """Greedy generation with and without the drafter on each prompt: acceptance, speed-up, losslessness.

    ``drafter_tokenizer`` set = the cross-tokenizer baseline (Universal Assisted Generation).
    """
    if k < 1:
        raise ValueError(f"k={k} must be at least 1 draft token")
    if not prompts:
        raise ValueError("no prompts: give a prompt file with at least one document")
    if drafter_tokenizer is None and target.config.vocab_size != drafter.config.vocab_size:
        raise ValueError(
            f"drafter vocab_size {drafter.config.vocab_size} != target vocab_size {target.config.vocab_size}: "
            "transplant the drafter to the target's tokenizer first (xtok transplant), or run the cross-tokenizer "
            "baseline (--cross-tokenizer)"
        )
    gc = drafter.generation_config
    gc.num_assistant_tokens, gc.num_assistant_tokens_schedule, gc.assistant_confidence_threshold = k, "constant", 0.0
    ctx = getattr(target.config, "max_position_embeddings", None)
    extra = {"tokenizer": tokenizer, "assistant_tokenizer": drafter_tokenizer} if drafter_tokenizer is not None else {}
    all_rounds: list[tuple[int, int]] = []
    plain_s = spec_s = 0.0
    plain_tokens = spec_tokens = 0
    mismatched = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt")
        n = ids["input_ids"].shape[1]
        if ctx is not None and n + max_new_tokens > ctx:
            raise ValueError(f"prompt {i} has {n} tokens; with {max_new_tokens} new tokens it exceeds the context ({ctx}); "
                             "shorten the prompts or --max-new-tokens")
        with torch.no_grad():
            t0 = time.perf_counter()
            plain = target.generate(**ids, max_new_tokens=max_new_tokens, pad_token_id=pad, **GREEDY)
            t1 = time.perf_counter()
            with record_rounds(target) as rounds:
                spec = target.generate(**ids, assistant_model=drafter, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                       **GREEDY, **extra)
            t2 = time.perf_counter()
        plain_s, spec_s = plain_s + t1 - t0, spec_s + t2 - t1
        plain_tokens += plain.shape[1] - n
        spec_tokens += spec.shape[1] - n
        all_rounds.extend(rounds)
        if not torch.equal(plain, spec):
            mismatched.append(i)
        if progress:
            log.info("prompt %d/%d: %d rounds", i + 1, len(prompts), len(rounds))
    stats = summarize_rounds(all_rounds, k)
    plain_tps, spec_tps = plain_tokens / plain_s, spec_tokens / spec_s
    return {
        **stats, "k": k, "prompts": len(prompts), "max_new_tokens": max_new_tokens,
        "tokens_per_second_target_alone": plain_tps, "tokens_per_second_with_drafter": spec_tps,
        "speedup": spec_tps / plain_tps, "lossless": not mismatched, "mismatched_prompts": mismatched,
        "cross_tokenizer": drafter_tokenizer is not None,
    }
