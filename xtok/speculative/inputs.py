"""Checks and tokenization every drafter backend shares, so bad input fails the same way on each."""

from __future__ import annotations


def check_request(k: int, prompts: list[str], target_vocab: int, drafter_vocab: int, cross_tokenizer: bool) -> None:
    if k < 1:
        raise ValueError(f"k={k} must be at least 1 draft token")
    if not prompts:
        raise ValueError("no prompts: give a prompt file with at least one document")
    if not cross_tokenizer and target_vocab != drafter_vocab:
        raise ValueError(
            f"drafter vocab_size {drafter_vocab} != target vocab_size {target_vocab}: transplant the drafter to the "
            "target's tokenizer first (xtok transplant), or run the cross-tokenizer baseline (--cross-tokenizer)"
        )


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
