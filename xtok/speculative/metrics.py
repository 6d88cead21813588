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


def summarize_counts(rounds: int, drafted: int, accepted: int, accepted_per_position: list[int], k: int) -> dict:
    """The same figures from totals (what vLLM's counters give): ``accepted_per_position[i]`` = rounds whose
    first i+1 drafts were accepted. Per position it divides by all rounds, which equals summarize_rounds
    when every round drafts k tokens (vLLM's draft model always does)."""
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    per = list(accepted_per_position)
    non_increasing = all(a >= b >= 0 for a, b in zip([rounds, *per], per))
    if len(per) != k or sum(per) != accepted or not non_increasing or not accepted <= drafted <= k * rounds:
        raise ValueError(f"counts rounds={rounds}, drafted={drafted}, accepted={accepted}, per position={per} "
                         f"are impossible with k={k}")
    return {
        "rounds": rounds,
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "acceptance_rate": accepted / drafted if drafted else None,
        "mean_acceptance_length": 1 + accepted / rounds if rounds else None,
        "acceptance_per_position": [a / rounds if rounds else None for a in per],
    }


def draft_check_result(stats: dict, *, k: int, prompts: int, max_new_tokens: int, plain_tokens: int, plain_s: float,
                       spec_tokens: int, spec_s: float, mismatched: list[int], cross_tokenizer: bool) -> dict:
    """One backend's answer: acceptance figures, tokens/s with and without drafting, and losslessness."""
    plain_tps, spec_tps = plain_tokens / plain_s, spec_tokens / spec_s
    return {
        **stats, "k": k, "prompts": prompts, "max_new_tokens": max_new_tokens,
        "tokens_per_second_target_alone": plain_tps, "tokens_per_second_with_drafter": spec_tps,
        "speedup": spec_tps / plain_tps, "lossless": not mismatched, "mismatched_prompts": mismatched,
        "cross_tokenizer": cross_tokenizer,
    }


def time_breakdown(plain_s: float, plain_forward_s: float, plain_tokens: int, spec_s: float, draft_s: float,
                   verify_s: float, rounds: int) -> dict:
    """Where the seconds go. Target alone: its forward passes and the rest (generate's own work). With the drafter:
    drafting (the drafter proposing, its generate included), verification (the target's forward passes) and the rest.
    ``round_cost_in_target_steps``: each part of a round in plain target steps; drafting pays only when the tokens
    a round emits (the mean acceptance length) exceed the sum of the parts."""
    step = plain_s / plain_tokens if plain_tokens else None
    per_round = {name: (value / rounds if rounds else None) for name, value in
                 (("drafting_s", draft_s), ("verification_s", verify_s), ("overhead_s", spec_s - draft_s - verify_s))}
    return {
        "target_alone": {"seconds": plain_s, "forward_s": plain_forward_s, "overhead_s": plain_s - plain_forward_s,
                         "seconds_per_token": step},
        "with_drafter": {"seconds": spec_s, "drafting_s": draft_s, "verification_s": verify_s,
                         "overhead_s": spec_s - draft_s - verify_s, "rounds": rounds},
        "per_round": per_round,
        "round_cost_in_target_steps": {name: (v / step if v is not None and step else None) for name, v in per_round.items()},
    }
