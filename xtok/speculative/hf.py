"""transformers assisted generation as a drafter backend, instrumented for exact acceptance counts."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import torch

from xtok.registry import DRAFT_BACKENDS
from xtok.speculative.inputs import check_request, tokenize_prompts
from xtok.speculative.metrics import draft_check_result, summarize_rounds

log = logging.getLogger(__name__)


@contextlib.contextmanager
def record_rounds(model) -> Iterator[list[tuple[int, int]]]:
    """Record (drafted, accepted) for every verification round of ``model.generate(assistant_model=...)``.

    transformers returns no acceptance figures; its candidate generator sees both numbers, so the
    generator it builds is wrapped for the duration of the context.
    """
    rounds: list[tuple[int, int]] = []
    original = model._get_candidate_generator
    shadowed = model.__dict__.get("_get_candidate_generator")  # an enclosing record_rounds, restored on exit

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
        if shadowed is None:
            del model._get_candidate_generator
        else:
            model._get_candidate_generator = shadowed


GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)


def warm_up(target, drafter, ids: list[int], pad: int, extra: dict) -> None:
    """Two untimed short generations, plain and assisted: a process's first generate pays one-time kernel and
    allocator costs (seen once: a process's first run timed the target alone at 3.7 tok/s, its next at 6.8)."""
    first = torch.tensor([ids])
    with torch.no_grad():
        for assistant in ({}, {"assistant_model": drafter, **extra}):
            target.generate(first, attention_mask=torch.ones_like(first), max_new_tokens=2, pad_token_id=pad, **GREEDY,
                            **assistant)


@DRAFT_BACKENDS.register("hf", help="transformers assisted generation (batch size 1), counts from its candidate generator",
                         takes="models")
def hf_draft_check(target, drafter, tokenizer, prompts: list[str], *, k: int, max_new_tokens: int,
                   drafter_tokenizer=None, progress: bool = False) -> dict:
    """Greedy generation with and without the drafter on each prompt: acceptance, speed-up, losslessness.

    ``drafter_tokenizer`` set = the cross-tokenizer baseline (Universal Assisted Generation).
    """
    cross = drafter_tokenizer is not None
    check_request(k, prompts, target.config.vocab_size, drafter.config.vocab_size, cross)
    gc = drafter.generation_config
    gc.num_assistant_tokens, gc.num_assistant_tokens_schedule, gc.assistant_confidence_threshold = k, "constant", 0.0
    prompt_ids = tokenize_prompts(tokenizer, prompts, max_new_tokens, getattr(target.config, "max_position_embeddings", None))
    extra = {"tokenizer": tokenizer, "assistant_tokenizer": drafter_tokenizer} if cross else {}
    all_rounds: list[tuple[int, int]] = []
    plain_s = spec_s = 0.0
    plain_tokens = spec_tokens = 0
    mismatched = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    warm_up(target, drafter, prompt_ids[0], pad, extra)
    for i, ids in enumerate(prompt_ids):
        n = len(ids)
        ids = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, n, dtype=torch.long)}
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
    # UAG re-tokenizes the drafter's k tokens into the target's vocabulary: a round can hold more than k of those.
    positions = max([k, *(d for d, _ in all_rounds)])
    return draft_check_result(summarize_rounds(all_rounds, positions), k=k, prompts=len(prompts), max_new_tokens=max_new_tokens,
                              plain_tokens=plain_tokens, plain_s=plain_s, spec_tokens=spec_tokens, spec_s=spec_s,
                              mismatched=mismatched, cross_tokenizer=cross)
