"""Acceptance arithmetic over verification rounds, independent of any backend.

A round is one target forward: the drafter proposed ``drafted`` tokens, the target accepted the
first ``accepted`` of them, and emitted one token of its own after them.
"""

from __future__ import annotations


def summarize_rounds(rounds: list[tuple[int, int]], k: int) -> dict:
    """acceptance rate α = accepted / drafted; mean acceptance length = 1 + accepted / rounds
    (tokens emitted per target forward); acceptance per draft position i = share of rounds that
    drafted at least i tokens and had the first i accepted."""
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    for drafted, accepted in rounds:
        if not 0 <= accepted <= drafted <= k:
            raise ValueError(f"round (drafted={drafted}, accepted={accepted}) is impossible with k={k}")
    drafted = sum(d for d, _ in rounds)
    accepted = sum(a for _, a in rounds)
    per_position = []
    for i in range(1, k + 1):
        eligible = [a for d, a in rounds if d >= i]
        per_position.append(sum(a >= i for a in eligible) / len(eligible) if eligible else None)
    return {
        "rounds": len(rounds),
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "acceptance_rate": accepted / drafted if drafted else None,
        "mean_acceptance_length": 1 + accepted / len(rounds) if rounds else None,
        "acceptance_per_position": per_position,
    }
