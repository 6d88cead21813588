"""Checks and tokenization every drafter backend shares, so bad input fails the same way on each."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

TRANSPLANT_FIRST = ("transplant the drafter to the target's tokenizer first (xtok transplant), or run the "
                    "cross-tokenizer baseline (--cross-tokenizer)")


def check_request(k: int, prompts: list[str]) -> None:
    if k < 1:
        raise ValueError(f"k={k} must be at least 1 draft token")
    if not prompts:
        raise ValueError("no prompts: give a prompt file with at least one document")


def check_vocab(target_vocab: int, drafter_vocab: int, tokenizer, drafter_tokenizer=None,
                cross_tokenizer: bool = False) -> bool:
    """Whether the drafter's head must be seen through the target's vocabulary size (True: they differ by padding only).

    Same tokenizer content (every token at the same id) with different embedding sizes is padding, as vLLM and most
    checkpoints pad the vocabulary to a multiple of 64 or 128: accepted. Different content is refused, and so are
    different sizes when the drafter's tokenizer is not known (``drafter_tokenizer`` None). The cross-tokenizer
    baseline compares nothing, but needs the drafter's tokenizer.
    """
    if cross_tokenizer:
        if drafter_tokenizer is None:
            raise ValueError("the cross-tokenizer baseline needs the drafter's tokenizer (drafter_tokenizer)")
        return False
    if drafter_tokenizer is None:
        if target_vocab != drafter_vocab:
            raise ValueError(f"drafter vocab_size {drafter_vocab} != target vocab_size {target_vocab}: {TRANSPLANT_FIRST}")
        return False
    table, d_table = tokenizer.get_vocab(), drafter_tokenizer.get_vocab()
    if table != d_table:
        differ = sorted(set(table.items()) ^ set(d_table.items()), key=lambda kv: kv[1])
        example = ", ".join(f"{piece!r}={i}" for piece, i in differ[:3])
        raise ValueError(f"the drafter's tokenizer is not the target's ({len(d_table)} vs {len(table)} tokens, "
                         f"{len(differ)} (token, id) pairs in one only, e.g. {example}): {TRANSPLANT_FIRST}")
    if target_vocab == drafter_vocab:
        return False
    n = len(table)
    for who, rows in (("target", target_vocab), ("drafter", drafter_vocab)):
        if rows < n:
            raise ValueError(f"the {who} has {rows} embedding rows for a tokenizer of {n} tokens: its checkpoint does not "
                             "match its tokenizer")
    log.info("drafter vocab_size %d and target vocab_size %d differ by padding only (one tokenizer of %d tokens): the "
             "drafter's head is read at the target's size", drafter_vocab, target_vocab, n)
    return True


def drafter_size_warning(target_params: int, drafter_params: int) -> str | None:
    """A warning when the drafter is not smaller than its target: every round then costs more than it can save."""
    if drafter_params < target_params:
        return None
    msg = (f"the drafter has {drafter_params / 1e6:.0f}M parameters, the target {target_params / 1e6:.0f}M: a drafter "
           "at least as large as its target cannot make it faster (each draft token costs about a target step)")
    log.warning("%s", msg)
    return msg


def tokenize_prompts(tokenizer, prompts: list[str], max_new_tokens: int, context: int | None) -> list[list[int]]:
    """Token ids of each prompt as the target reads it; a prompt that cannot fit ``max_new_tokens`` more is an error."""
    out = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt)["input_ids"]
        if context is not None and len(ids) + max_new_tokens > context:
            raise ValueError(f"prompt {i} has {len(ids)} tokens; with {max_new_tokens} new tokens it exceeds the context "
                             f"({context}); shorten the prompts or --max-new-tokens")
        out.append(list(ids))
    return out


def check_drafter_context(prompts: list[str], prompt_ids: list[list[int]], max_new_tokens: int, k: int,
                          context: int | None, cross_tokenizer_of=None) -> None:
    """The drafter reads the prompt, every generated token, and k drafts past them: all must fit its context.
    ``cross_tokenizer_of``: the drafter's own tokenizer in the cross-tokenizer baseline, where it reads the prompts
    in its own tokens (and about as many new ones as the target's, give or take); else it reads ``prompt_ids``."""
    if context is None:
        return
    tok = cross_tokenizer_of
    lengths = [len(tok(p)["input_ids"]) for p in prompts] if tok is not None else list(map(len, prompt_ids))
    if k >= context:
        raise ValueError(f"k={k} draft tokens is beyond the drafter's context ({context} positions); use a smaller --k")
    need = max(lengths) + max_new_tokens + k
    if need > context:
        raise ValueError(f"the drafter needs {need} positions (longest prompt {max(lengths)} tokens + {max_new_tokens} "
                         f"new + k={k}) but its context is {context}; shorten the prompts, --max-new-tokens or --k")
