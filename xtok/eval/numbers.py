"""How a tokenizer splits digits: the seed paper found mismatched digit tokenization hurts most."""

from __future__ import annotations

import re

PROBES = ("7", "42", "1234", "12345678", "3.14159", "1,234,567", "2026-11-22", "-0.001", "$19.99", "x = 1000000")
_DIGIT_RUN = re.compile(r"\d+")


def token_pieces(tokenizer, text: str) -> list[str]:
    """The text of each token of ``text`` (decoded one by one; a byte split mid-character shows as '\\ufffd')."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode([i]) for i in ids]


def digit_split_stats(tokenizer, texts: list[str]) -> dict:
    """Counts over every digit-bearing token of ``texts`` plus how each probe number is split."""
    digit_tokens = single = digits = longest = 0
    run_pieces: dict[int, int] = {}
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        for i in ids:
            piece = tokenizer.decode([i])
            n = sum(ch.isdigit() for ch in piece)
            if not n:
                continue
            digit_tokens += 1
            digits += n
            single += n == 1 and len(piece.strip()) == 1
            run = max((len(r) for r in _DIGIT_RUN.findall(piece)), default=0)
            longest = max(longest, run)
            run_pieces[run] = run_pieces.get(run, 0) + 1
    return {
        "digit_tokens": digit_tokens,
        "single_digit_token_share": single / digit_tokens if digit_tokens else None,
        "mean_digits_per_digit_token": digits / digit_tokens if digit_tokens else None,
        "max_digits_in_one_token": longest,
        "digit_run_length_histogram": dict(sorted(run_pieces.items())),
        "probes": {p: token_pieces(tokenizer, p) for p in PROBES},
    }
