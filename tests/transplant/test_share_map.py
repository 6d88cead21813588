"""The head fit's share map: one map from the teacher's head rows to in-family shares, and its family-mass correction."""

import json

import pytest
import torch

from tests.test_cli import xtok
from xtok.transplant.apply import REPORT_FILE
from xtok.transplant.share_map import Families, Group, apply_share_map, fit_share_map, mass_correction, share_loss


def _families(v=30, seed=0):
    """Teacher ids 0..v-1 in families by their first piece: singletons (one member) and -1 (none) mixed in."""
    g = torch.Generator().manual_seed(seed)
    family_of = torch.randint(0, 6, (v,), generator=g)
    family_of[[3, 11]] = -1
    family_of[7] = 9  # alone in its family
    return family_of


def _problem(n=300, d_s=6, d_t=5, v=30, seed=0, m_true=None):
    """States, a head, teacher rows, and the groups of positions whose next token is in a multi-member family with
    the teacher's within-family distribution given by the module's own form at ``m_true`` (random targets if None)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d_s, generator=g)
    weight = torch.randn(v, d_s, generator=g) * 0.3
    teacher_rows = torch.randn(v, d_t, generator=g)
    family_of = _families(v, seed)
    fam = Families.of(family_of)
    targets = fam.tokens[torch.randint(0, len(fam.tokens), (n,), generator=g)]
    groups = []
    for f in torch.unique(family_of[fam.tokens]).tolist():
        members = torch.nonzero(family_of == f).flatten()
        pos = torch.nonzero(family_of[targets] == f).flatten()
        if m_true is None:
            q = torch.rand(len(pos), len(members), generator=g).softmax(1)
        else:
            h = hidden[pos]
            q = (h @ weight[members].T + (h @ m_true) @ teacher_rows[members].T).softmax(1)
        groups.append(Group(pos, members, q))
    return hidden, weight, teacher_rows, family_of, groups


def _reference_loss(m, hidden, groups, weight, teacher_rows):
    """The within-family cross-entropy position by position, for autograd: an independent formulation."""
    total, n = 0.0, 0
    for g in groups:
        for row, p in enumerate(g.positions.tolist()):
            h = hidden[p]
            logits = weight[g.members] @ h + teacher_rows[g.members] @ (m.T @ h)
            total = total - (g.teacher[row] * torch.log_softmax(logits, 0)).sum()
            n += 1
    return total / n


def test_families_hold_multi_member_families_only_and_their_log_mass_is_a_logsumexp():
    family_of = _families()
    fam = Families.of(family_of)
    sizes = {f: int((family_of == f).sum()) for f in family_of.tolist() if f >= 0}
    assert sorted(fam.tokens.tolist()) == [t for t, f in enumerate(family_of.tolist()) if f >= 0 and sizes[f] > 1]
    assert 7 not in fam.tokens.tolist() and 3 not in fam.tokens.tolist()
    logits = torch.randn(4, len(fam.tokens), dtype=torch.float64).float()
    got = fam.log_mass(logits)
    for i, f in enumerate(torch.unique(family_of[fam.tokens]).tolist()):
        cols = family_of[fam.tokens] == f
        assert torch.allclose(got[:, i], torch.logsumexp(logits[:, cols], 1), atol=1e-5)


def test_share_loss_and_its_gradient_match_autograd_on_the_direct_formulation():
    hidden, weight, teacher_rows, _, groups = _problem()
    m = torch.randn(hidden.shape[1], teacher_rows.shape[1]) * 0.2
    ridge = 0.01
    value, grad, ce = share_loss(m, hidden, groups, weight, teacher_rows, ridge)
    ref_m = m.clone().double().requires_grad_(True)
    ref = _reference_loss(ref_m, hidden.double(), [Group(g.positions, g.members, g.teacher.double()) for g in groups],
                          weight.double(), teacher_rows.double())
    (ref + ridge * (ref_m ** 2).sum()).backward()
    # float32 sums of a few hundred terms of size ~1: a relative error of order 1e-6
    assert ce == pytest.approx(float(ref.detach()), rel=1e-5)
    assert value == pytest.approx(float(ref.detach()) + ridge * float((m.double() ** 2).sum()), rel=1e-5)
    assert torch.allclose(grad.double(), ref_m.grad, rtol=1e-4, atol=1e-6)


def test_the_fit_recovers_shares_made_by_a_known_map():
    g = torch.Generator().manual_seed(1)
    m_true = torch.randn(6, 5, generator=g) * 0.7
    hidden, weight, teacher_rows, _, groups = _problem(n=2000, m_true=m_true)
    entropy = -sum(float((gr.teacher * gr.teacher.log()).sum()) for gr in groups) / sum(len(gr.positions) for gr in groups)
    m, before, after = fit_share_map(hidden, groups, weight, teacher_rows, ridge=1e-7, iterations=200)
    # the targets are the model's own form at m_true: the cross-entropy's minimum is their entropy, reached at m_true
    assert after - entropy < 0.01 * (before - entropy)
    assert torch.allclose(m, m_true, atol=0.05)


def test_mass_correction_is_the_ridge_regression_of_an_exactly_linear_added_mass():
    """Rows moved by one vector a_f for the whole family add exactly h · a_f to its log-mass, so γ_f is the ridge
    solution (HᵀH + λI)⁻¹ HᵀH a_f, computed here in closed form."""
    from xtok.transplant.share_map import MASS_RIDGE

    hidden, weight, _, family_of, _ = _problem(n=500)
    fam = Families.of(family_of)
    per_family = torch.randn(fam.count, hidden.shape[1], generator=torch.Generator().manual_seed(2))
    gamma, mean_mass = mass_correction(hidden, fam, weight, per_family[fam.index])
    h = hidden.double()
    gram = h.T @ h
    lam = MASS_RIDGE * float(gram.diagonal().mean())
    expected = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), gram @ per_family.double().T).T
    assert torch.allclose(gamma.double(), expected, atol=1e-4)
    assert mean_mass == pytest.approx(float((h @ per_family.double().T).mean()), abs=1e-4)


@pytest.mark.parametrize("scope", ["seen", "all"])
def test_apply_share_map_moves_every_member_of_the_families_its_scope_names_and_only_them(scope):
    hidden, weight, teacher_rows, family_of, groups = _problem()
    fam = Families.of(family_of)
    unseen = groups.pop(1).members  # the fit text never reaches this family
    before = weight.clone()
    new, report = apply_share_map(weight, hidden, groups, teacher_rows, fam, scope=scope, iterations=20)
    assert torch.equal(weight, before)  # not modified
    moved = torch.nonzero((new - weight).abs().sum(1) > 0).flatten().tolist()
    expect = set(fam.tokens.tolist()) - (set(unseen.tolist()) if scope == "seen" else set())
    assert moved == sorted(expect) and len(expect) > len(unseen) > 1
    assert report["rows_changed"] == len(moved) and report["share_ce_after"] < report["share_ce_before"]
    assert report["families_changed"] == fam.count - (scope == "seen") and report["scope"] == scope
    with pytest.raises(ValueError, match="ridge"):
        fit_share_map(hidden, groups, weight, teacher_rows, ridge=0)
    with pytest.raises(ValueError, match="'some' is not one of seen, all"):
        apply_share_map(weight, hidden, groups, teacher_rows, fam, scope="some")


def test_transplant_cli_with_a_share_map(tiny_model_dir, tmp_path):
    student = tiny_model_dir("smollm2-135m", tie_word_embeddings=True)
    teacher = tiny_model_dir("qwen2.5-coder-0.5b")
    out = tmp_path / "out"
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(out), "--k", "4",
               "--head-fit-tokens", "300", "--head-fit-share-map", "all")
    assert res.returncode == 0, res.stderr
    share = json.loads((out / REPORT_FILE).read_text())["head_fit"]["share_map"]
    assert share["positions"] > 0 and share["rows_changed"] > share["families_seen"] and share["scope"] == "all"
    assert share["share_ce_after"] < share["share_ce_before"]
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(tmp_path / "nofit"),
               "--k", "4", "--head-fit-share-map", "seen")
    assert res.returncode == 2 and "needs a head fit" in " ".join(res.stderr.split())
    assert not (tmp_path / "nofit").exists()
