import pytest
import torch

from xtok.registry import INIT_METHODS
from xtok.transplant.methods import Space, sparsemax


def _space(student, donor, n_anchor, student_tok=None, teacher_bytes=None, k=4):
    ids = torch.arange(n_anchor)
    return Space("input", student, donor, ids, ids, teacher_bytes or [], student_tok, k=k, chunk=8)


def test_every_method_gives_finite_rows_of_student_width():
    torch.manual_seed(0)
    donor, student = torch.randn(60, 12), torch.randn(40, 7)
    new = torch.arange(40, 60)
    for name in INIT_METHODS.names():
        spec = INIT_METHODS.spec(name)
        if name == "subword" or spec.needs_alignment or spec.needs_calibration:
            continue  # needs a tokenizer / an alignment / a calibration; covered below, in tests/align, test_calibrate
        rows = INIT_METHODS.get(name)(_space(student, donor, 40), new)
        assert rows.shape == (20, 7) and torch.isfinite(rows).all(), name


def test_mean_and_zero():
    student = torch.randn(10, 3)
    sp = _space(student, None, 10)
    assert torch.allclose(INIT_METHODS.get("mean")(sp, torch.tensor([0, 1])), student.mean(0).expand(2, 3))
    assert not INIT_METHODS.get("zero")(sp, torch.tensor([0])).any()


def test_randn_matches_mean_and_covariance():
    torch.manual_seed(0)
    student = torch.randn(4000, 3) @ torch.tensor([[2.0, 0, 0], [0.5, 1, 0], [0, 0, 0.2]]) + torch.tensor([1.0, -2, 0])
    rows = INIT_METHODS.get("randn")(_space(student, None, 10), torch.arange(20000))
    torch.testing.assert_close(rows.mean(0), student.mean(0), atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(rows.T), torch.cov(student.T), atol=0.1, rtol=0.05)


def test_omp_recovers_a_linear_relation_between_spaces():
    """If student = donor @ W and a new donor row is a sparse mix of anchors, OMP rebuilds its student row exactly."""
    torch.manual_seed(0)
    donor_anchor = torch.randn(200, 32)
    w = torch.randn(32, 16)
    mix = torch.zeros(5, 200)
    for r in range(5):
        mix[r, torch.randperm(200)[:3]] = torch.randn(3)
    donor = torch.cat([donor_anchor, mix @ donor_anchor])
    student = donor @ w
    rows = INIT_METHODS.get("omp")(_space(student[:200], donor, 200, k=3), torch.arange(200, 205))
    torch.testing.assert_close(rows, student[200:], rtol=1e-3, atol=1e-3)


def test_focus_is_a_convex_mix_of_similar_anchors():
    torch.manual_seed(0)
    donor, student = torch.eye(50) * torch.rand(50, 1).add(0.5), torch.randn(40, 4)  # orthogonal anchors
    donor[45] = donor[3] * 2.0  # cosine 1 with anchor 3, 0 with the rest: sparsemax puts all weight there
    donor[46] = donor[3] / donor[3].norm() + donor[7] / donor[7].norm()  # equally like anchors 3 and 7: half each
    rows = INIT_METHODS.get("focus")(_space(student, donor, 40), torch.tensor([45, 46]))
    torch.testing.assert_close(rows[0], student[3], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rows[1], (student[3] + student[7]) / 2, rtol=1e-4, atol=1e-4)


def test_sparsemax_is_a_projection_onto_the_simplex():
    z = torch.tensor([[3.0, 1.0, 0.2], [0.1, 0.1, 0.1], [1.0, 0.5, -4.0]])
    p = sparsemax(z)
    torch.testing.assert_close(p.sum(-1), torch.ones(3))
    assert (p >= 0).all() and p[0, 0] == 1.0
    torch.testing.assert_close(p[1], torch.full((3,), 1 / 3))
    torch.testing.assert_close(p[2], torch.tensor([0.75, 0.25, 0.0]))


def test_subword_is_the_mean_of_the_student_pieces(real_tokenizer):
    smol = real_tokenizer("smollm2-135m")
    student = torch.randn(len(smol), 4)
    word = b" unbelievablyxyz"
    pieces = smol(word.decode(), add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    sp = _space(student, None, 10, smol, teacher_bytes=[word, b"\xe6\x9d"])
    rows = INIT_METHODS.get("subword")(sp, torch.tensor([0, 1]))
    torch.testing.assert_close(rows[0], student[pieces].mean(0))
    assert torch.isfinite(rows[1]).all()  # a partial UTF-8 sequence is spelled from byte tokens
    assert sp.fallbacks == 0
    sp_none = _space(student, None, 10, smol, teacher_bytes=[None])
    torch.testing.assert_close(INIT_METHODS.get("subword")(sp_none, torch.tensor([0]))[0], student.mean(0))
    assert sp_none.fallbacks == 1


def test_donor_methods_refuse_a_bare_tokenizer():
    with pytest.raises(ValueError, match=r"bare tokenizer.*mean.*subword"):
        INIT_METHODS.get("omp")(_space(torch.randn(5, 2), None, 5), torch.tensor([0]))


def test_rowwise_methods_give_the_same_rows_a_slice_at_a_time():
    """What a method declares row-wise is made ROW_SLICE tokens at a time: the rows must not depend on the slicing."""
    torch.manual_seed(0)
    donor, student = torch.randn(60, 12), torch.randn(40, 7)
    new = torch.arange(40, 60)
    rowwise = [m for m in INIT_METHODS.names() if INIT_METHODS.spec(m).rowwise and m != "subword"]
    assert {"omp", "mean", "focus", "zero"} <= set(rowwise)
    for name in rowwise:
        whole = INIT_METHODS.get(name)(_space(student, donor, 40), new)
        sliced = torch.cat([INIT_METHODS.get(name)(_space(student, donor, 40), new[s:s + 7]) for s in range(0, 20, 7)])
        torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-6, msg=name)  # row-independent float32 products
    assert not INIT_METHODS.spec("randn").rowwise and not INIT_METHODS.spec("subword-prior").rowwise
