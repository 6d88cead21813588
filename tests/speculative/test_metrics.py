import pytest

from xtok.speculative.metrics import summarize_counts, summarize_rounds


def test_scripted_run():
    # k=4: all accepted, none, two, then a short final round (2 drafted, 1 accepted)
    s = summarize_rounds([(4, 4), (4, 0), (4, 2), (2, 1)], k=4)
    assert s["drafted_tokens"] == 14 and s["accepted_tokens"] == 7 and s["rounds"] == 4
    assert s["acceptance_rate"] == pytest.approx(7 / 14)
    assert s["mean_acceptance_length"] == pytest.approx(1 + 7 / 4)
    # position 1: 3 of 4 rounds; 2: 2 of 4; 3: 1 of 3 (the short round drafted only 2); 4: 1 of 3
    assert s["acceptance_per_position"] == pytest.approx([3 / 4, 2 / 4, 1 / 3, 1 / 3])


def test_empty_and_impossible_rounds():
    s = summarize_rounds([], k=2)
    assert s["acceptance_rate"] is None and s["acceptance_per_position"] == [None, None]
    with pytest.raises(ValueError, match="impossible"):
        summarize_rounds([(2, 3)], k=4)
    with pytest.raises(ValueError, match="impossible"):
        summarize_rounds([(5, 1)], k=4)
    with pytest.raises(ValueError, match="at least 1"):
        summarize_rounds([], k=0)


def test_counts_give_the_same_figures_as_rounds_that_draft_k():
    rounds = [(3, 3), (3, 0), (3, 1), (3, 2), (3, 1)]
    # rounds with the first 1, 2, 3 drafts accepted: 4, 2, 1
    assert summarize_counts(5, 15, 7, [4, 2, 1], k=3) == summarize_rounds(rounds, k=3)
    assert summarize_counts(0, 0, 0, [0, 0], k=2)["acceptance_rate"] is None


def test_impossible_counts():
    for args in [(5, 15, 7, [4, 2], 3), (5, 15, 8, [4, 2, 1], 3), (2, 6, 5, [3, 1, 1], 3), (2, 6, 3, [1, 2, 0], 3),
                 (2, 7, 3, [2, 1, 0], 3)]:
        with pytest.raises(ValueError, match="impossible"):
            summarize_counts(*args[:4], k=args[4])
