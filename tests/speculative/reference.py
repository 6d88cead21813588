"""What every drafter backend is checked against: a plain greedy speculative-decoding loop, and bad input."""

from __future__ import annotations

import pytest
import torch


def reference_rounds(target, drafter, ids, k: int, max_new: int, *, vllm_style: bool = False):
    """Draft k, keep the agreeing prefix, add the target's token; returns (rounds, sequence).

    hf style: the first round drafts from the prompt and a round never drafts past ``max_new``.
    vLLM style: the prefill emits one token before any draft, every round drafts k, and the
    output is cut at ``max_new`` afterwards.
    """
    seq = ids[0].tolist()
    end = len(seq) + max_new

    def argmax(tokens):
        return target(input_ids=torch.tensor([tokens])).logits[0].argmax(-1).tolist()

    rounds = []
    with torch.no_grad():
        if vllm_style:
            seq.append(argmax(seq)[-1])
        while len(seq) < end:
            n_draft = k if vllm_style else min(k, end - len(seq) - 1)
            draft = list(seq)
            for _ in range(n_draft):
                draft.append(int(drafter(input_ids=torch.tensor([draft])).logits[0, -1].argmax()))
            choice = argmax(draft)[len(seq) - 1 :]
            accepted = 0
            while accepted < n_draft and draft[len(seq) + accepted] == choice[accepted]:
                accepted += 1
            seq = seq + draft[len(seq) : len(seq) + accepted] + [choice[accepted]]
            rounds.append((n_draft, accepted))
    return rounds, seq[:end]


def assert_rejects_bad_input(check, target, drafter, other_vocab, tokenizer, prompts: list[str]) -> None:
    """``check`` = a backend; ``other_vocab`` = a drafter whose vocabulary differs from the target's."""
    with pytest.raises(ValueError, match="transplant the drafter"):
        check(target, other_vocab, tokenizer, prompts, k=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="at least 1"):
        check(target, drafter, tokenizer, prompts, k=0, max_new_tokens=4)
    with pytest.raises(ValueError, match="no prompts"):
        check(target, drafter, tokenizer, [], k=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="exceeds the context"):
        check(target, drafter, tokenizer, ["word " * 600], k=2, max_new_tokens=4)
