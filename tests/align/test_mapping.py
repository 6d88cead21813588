import pytest
import torch

from xtok.align.embed import EmbedOptions
from xtok.align.mapping import ALIGNED, NO_VECTOR, SHARED, Side, map_rows, nearest, relative
from xtok.align.pipeline import AlignSettings, align


def test_nearest_in_chunks_equals_dense_topk():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(37, 8, generator=gen), torch.randn(50, 8, generator=gen)
    s, i = nearest(q, k, top_k=3, chunk=5)
    ref_s, ref_i = (q @ k.T).topk(3, dim=1)
    torch.testing.assert_close(s, ref_s)
    assert torch.equal(i, ref_i)


def test_relative_representation_ignores_rotation_and_scale():
    """The point of pivots: two spaces that differ by an orthogonal map and scale give the same representations."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(30, 6, generator=gen)
    rot, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen))
    pivots = torch.arange(10)
    a = relative(v, pivots, v.mean(0))
    w = 3.0 * v @ rot
    torch.testing.assert_close(relative(w, pivots, w.mean(0)), a, rtol=1e-4, atol=1e-5)


def test_map_rows_recovers_a_rotated_permuted_copy():
    gen = torch.Generator().manual_seed(1)
    src = torch.randn(80, 10, generator=gen)
    perm = torch.randperm(80, generator=gen)
    rot, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen))
    tgt = src[perm] @ rot  # target row r is source row perm[r]
    side = lambda v: Side(torch.arange(80), v, torch.ones(80, dtype=torch.long), 80)  # noqa: E731
    pivots = (torch.arange(20), perm[:20])
    _, idx = map_rows(side(tgt), side(src), pivots, torch.arange(80), top_k=2, chunk=7)
    assert torch.equal(idx[:, 0], perm)


def test_synthetic_pair_true_map_is_recovered(synthetic_pair, synthetic_alignment):
    target, source, _, truth = synthetic_pair
    al, report = synthetic_alignment
    got = {t: int(al.source_of[t]) for t in truth}
    assert sum(t == s for t, s in truth.items()) < 5  # ids are permuted: an identity map would fail
    assert sum(got[t] == s for t, s in truth.items()) / len(truth) >= 0.95, got
    assert all(al.how[t] == ALIGNED for t in truth)
    # byte-shared words keep their exact partner; the map is never the identity on ids
    sv, tv = source.get_vocab(), target.get_vocab()
    assert all(al.source_of[tv[f"a{i}"]] == sv[f"a{i}"] and al.how[tv[f"a{i}"]] == SHARED for i in range(150))
    q = report["quality"]
    assert q["hidden"] == 15 and q["top1"] >= 0.9 and q["top5"] >= q["top1"] and q["shared_agreement"] >= 0.95
    assert report["tokens"] == {"target_vocab": 191, "shared": 151, "aligned": 40, "no_vector": 0, "shared_bytes": 150,
                                "shared_special": 1}


def test_rare_tokens_get_no_vector_and_are_reported(synthetic_pair, caplog):
    target, source, texts, truth = synthetic_pair
    settings = AlignSettings(window=4, min_count=3, pivots=60, embed=EmbedOptions(dims=24))
    few = [t.replace("b7 ", "").replace("b3 ", "") for t in texts]  # two renamed words vanish
    al, report = align(target, source, few, settings)
    tv = target.get_vocab()
    assert al.how[tv["c7"]] == NO_VECTOR and al.source_of[tv["c7"]] == -1
    assert report["tokens"]["no_vector"] == 2 and report["no_vector_fallback"] == "subword"
    assert "2 target tokens are too rare" in caplog.text


@pytest.mark.parametrize("texts,settings,message", [
    ([], AlignSettings(), "corpus is empty"),
    (["  \n"], AlignSettings(), "corpus is empty"),
    (["a1 a2"], AlignSettings(pivots=10, embed=EmbedOptions(dims=24)), "pivots=10 is fewer than dims=24"),
    (["a1 a2 a3 a1 a2 a3"] * 3, AlignSettings(min_count=1, pivots=24, embed=EmbedOptions(dims=24)),
     r"only 3 tokens are frequent enough.*lower --min-count"),
])
def test_bad_input(synthetic_pair, texts, settings, message):
    target, source, _, _ = synthetic_pair
    with pytest.raises(ValueError, match=message):
        align(target, source, texts, settings)


def test_too_few_shared_pivots_for_dims(synthetic_pair):
    target, source, texts, _ = synthetic_pair
    only_renamed = [" ".join(w for w in t.split() if w.startswith("b") or w in ("a1", "a2")) for t in texts]
    settings = AlignSettings(window=4, min_count=3, pivots=24, embed=EmbedOptions(dims=24))
    with pytest.raises(ValueError, match=r"only 2 shared tokens with a vector on both sides, fewer than the dims=24"):
        align(target, source, only_renamed, settings)


def test_map_scores_are_cosines_of_relative_representations():
    """map_rows never forms the (n, P) representations; its scores must equal their explicit cosines."""
    gen = torch.Generator().manual_seed(2)
    t, s = torch.randn(40, 6, generator=gen), torch.randn(30, 6, generator=gen)
    side = lambda v: Side(torch.arange(len(v)), v, torch.ones(len(v), dtype=torch.long), len(v))  # noqa: E731
    piv = (torch.arange(12), torch.randperm(30, generator=gen)[:12])
    scores, idx = map_rows(side(t), side(s), piv, torch.arange(40), top_k=3, chunk=9)
    ref = relative(t, piv[0], t.mean(0)) @ relative(s, piv[1], s.mean(0)).T  # (40, 30)
    ref_s, ref_i = ref.topk(3, dim=1)
    torch.testing.assert_close(scores, ref_s, rtol=1e-4, atol=1e-5)
    assert torch.equal(idx, ref_i)
