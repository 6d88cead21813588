"""The safety scan: statistics against direct computation, and a planted (breaker) code caught in a tiny pair."""

import numpy as np
import pytest
import torch

from tests.conftest import build_tiny
from xtok.transplant.apply import transplant
from xtok.transplant.safety import ROW_NORM_FLOOR, CodeStats, code_stats, robust_z, scan
from xtok.vocab.shared import build_token_map


def test_code_stats_and_robust_z_against_direct_computation():
    g = torch.Generator().manual_seed(0)
    atoms, x = torch.randn(50, 16, generator=g), torch.randn(7, 16, generator=g)
    idx = torch.randint(0, 50, (7, 3), generator=g)
    coef = torch.randn(7, 3, generator=g)
    cn, res, used = code_stats(x, atoms, idx, coef, chunk=3)
    for i in range(7):
        a = atoms[idx[i]].double().numpy()
        c = coef[i].double().numpy()
        xi = x[i].double().numpy()
        want_cn = sum(abs(c[j]) * np.linalg.norm(a[j]) for j in range(3)) / np.linalg.norm(xi)
        want_res = np.linalg.norm(xi - c @ a) / np.linalg.norm(xi)
        assert cn[i].item() == pytest.approx(want_cn, rel=1e-5)  # float32 sums of 16 terms
        assert res[i].item() == pytest.approx(want_res, rel=1e-4, abs=1e-6)
        assert used[i].item() == sum(abs(c[j]) * np.linalg.norm(a[j]) > 0.01 * np.linalg.norm(xi) for j in range(3))
    ref = torch.randn(201, generator=g)
    vals = torch.tensor([0.0, 3.0, -2.5])
    z, med, scale = robust_z(vals, ref)
    r = ref.double().numpy()
    want_scale = 1.4826 * np.median(np.abs(r - np.median(r)))
    assert med == pytest.approx(np.median(r)) and scale == pytest.approx(want_scale)
    np.testing.assert_allclose(z.numpy(), (vals.double().numpy() - np.median(r)) / want_scale, rtol=1e-12)


def test_row_norm_outliers_are_relative_on_a_student_whose_rows_share_one_norm():
    """Gemma-3's rows all have norms 1.028-1.035 (MAD ~0.002): a new row 10% longer is no outlier, one twice as long
    is, at the default z_max of 15 (flagged above (1 + 15 x ROW_NORM_FLOOR) x the median)."""
    g = torch.Generator().manual_seed(0)
    shared = 1.028 + 0.007 * torch.rand(5000, generator=g)
    rows = torch.randn(4, 8, generator=g)
    rows = rows / rows.norm(dim=1, keepdim=True) * torch.tensor([[1.03], [1.13], [2.06], [1.0]])
    codes = [CodeStats(torch.arange(4), torch.ones(4), torch.full((4,), 0.8), torch.full((4,), 3), {})]
    out = scan(codes, rows, shared, [b"a", b"b", b"c", b"d"], z_max=15.0)
    assert [r["id"] for r in out["flagged_rows"]] == [2] and out["flagged_by"] == {"row norm": 1}
    med = float(shared.median())
    assert out["statistics"]["row_norm"]["shared_scale"] == pytest.approx(ROW_NORM_FLOOR * med, abs=1e-4)


@pytest.fixture(scope="module")
def pair(real_tokenizer):
    """Student: tiny Qwen2 (Qwen's tokenizer); teacher: tiny Llama with SmolLM2's, whose new tokens OMP builds."""
    qwen, smol = real_tokenizer("qwen2.5-coder-0.5b"), real_tokenizer("smollm2-135m")
    return qwen, smol, build_tiny("qwen2", qwen), build_tiny("llama", smol, seed=1)


def _plant(teacher, t_tok, s_tok):
    """Give one new teacher token a donor vector that is exactly 20 a1 - 20 a2 for two anchors 5 degrees apart, in
    two dimensions no other row uses: OMP finds that code, whose anchors cancel (a planted, breaker-style code)."""
    tmap = build_token_map(t_tok, s_tok)
    a1, a2 = tmap.shared_teacher_ids[100].item(), tmap.shared_teacher_ids[200].item()
    target = tmap.new_teacher_ids[10].item()
    emb = teacher.get_input_embeddings().weight
    with torch.no_grad():
        scale = emb.norm(dim=1).median()
        emb[:, :2] = 0
        theta = torch.tensor(5.0).deg2rad()
        emb[a1] = 0
        emb[a1, 0] = scale
        emb[a2] = 0
        emb[a2, 0], emb[a2, 1] = scale * theta.cos(), scale * theta.sin()
        emb[target] = 20 * emb[a1] - 20 * emb[a2]
    return target


def test_a_planted_code_is_flagged_and_refused(pair, caplog):
    s_tok, t_tok, student, teacher = pair
    clean_model, clean = transplant(student, s_tok, t_tok, teacher_model=teacher, method="omp", head_method="mean", k=4, candidates=32)
    assert clean["spaces"]["input"]["safety"]["rows_scanned"] == clean["tokens"]["new"]
    assert clean["spaces"]["input"]["safety"]["flagged"] == 0  # random embeddings: nothing looks planted
    assert "safety" not in clean["spaces"]["output"]  # mean rows carry no donor code

    target = _plant(teacher, t_tok, s_tok)
    model, report = transplant(student, s_tok, t_tok, teacher_model=teacher, method="omp", head_method="mean", k=4, candidates=32)
    scan = report["spaces"]["input"]["safety"]
    assert scan["flagged_rows"] and scan["flagged_rows"][0]["id"] == target
    top = scan["flagged_rows"][0]
    assert top["coef_norm"] > 20  # 40 |a| / |20 (a1 - a2)| = 1 / sin(2.5 deg) = 22.9
    assert set(top["why"]) >= {"coefficient norm", "row norm", "exact multi-anchor code"}
    assert top["residual"] < 1e-3
    assert scan["flagged"] <= 3  # the planted row, not a flood of natural ones
    assert scan["flagged_by"]["coefficient norm"] >= 1 and scan["flagged_by"]["row norm"] >= 1
    assert "--row-norms cap holds new rows" in caplog.text
    # capped to the student's range, the row does no harm, and the scan still names its code
    _, capped = transplant(student, s_tok, t_tok, teacher_model=teacher, method="omp", head_method="mean", k=4,
                           candidates=32, row_norms="cap")
    top_cap = capped["spaces"]["input"]["safety"]["flagged_rows"][0]
    assert top_cap["id"] == target and "coefficient norm" in top_cap["why"] and "row norm" not in top_cap["why"]
    assert top_cap["row_norm"] <= capped["spaces"]["input"]["row_norms"]["high"] * (1 + 1e-4)
    with pytest.raises(ValueError, match=rf"above max_coef_norm=5.0: .*\(id {target}, 2\d\.\d\d\)"):
        transplant(student, s_tok, t_tok, teacher_model=teacher, method="omp", head_method="mean", k=4, candidates=32,
                   max_coef_norm=5.0)
