"""row_norms: new rows' norms held to the student's own range, checked against a float64 row-by-row reference."""

import numpy as np
import pytest
import torch

from xtok.transplant.apply import transplant
from xtok.transplant.norms import NORM_QUANTILES, fit_row_norms, norm_range
from xtok.vocab.shared import build_token_map

from ..conftest import build_tiny


def _reference(rows: np.ndarray, low: float, high: float, mode: str) -> np.ndarray:
    out = rows.astype(np.float64).copy()
    for i, r in enumerate(out):
        n = np.sqrt((r * r).sum())
        want = min(n, high) if mode == "cap" else min(max(n, low), high)
        if n > 0 and mode != "keep":
            out[i] = r * (want / n)
    return out


@pytest.mark.parametrize("mode", ["keep", "cap", "clamp"])
def test_fit_row_norms_against_a_row_by_row_reference(mode):
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(200, 16, generator=g) * torch.logspace(-2, 2, 200)[:, None]  # norms from ~0.04 to ~400
    rows[7] = 0
    low, high = 1.0, 10.0
    got, changed = fit_row_norms(rows, low, high, mode)
    want = _reference(rows.numpy(), low, high, mode)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-6, atol=0)  # one float32 scale per row
    norms = rows.norm(dim=1)
    outside = (norms > high) if mode == "cap" else ((norms > high) | ((norms < low) & (norms > 0)))
    if mode == "keep":
        assert changed == 0 and got is rows
    else:
        assert changed == int(outside.sum()) > 0
    assert torch.equal(got[7], rows[7])  # a zero row stays zero
    cos = torch.nn.functional.cosine_similarity(got[norms > 0], rows[norms > 0], dim=1)
    assert (cos > 1 - 1e-5).all()  # the direction never changes


def test_norm_range_is_the_quantiles_of_the_shared_rows_norms_and_bad_input_is_refused():
    rows = torch.randn(1000, 8, generator=torch.Generator().manual_seed(1))
    low, high = norm_range(rows.norm(dim=1))
    want = np.quantile(np.linalg.norm(rows.double().numpy(), axis=1), NORM_QUANTILES)  # numpy's linear interpolation
    np.testing.assert_allclose([low, high], want, rtol=1e-6)
    with pytest.raises(ValueError, match="no"):
        norm_range(rows[:0].norm(dim=1))
    with pytest.raises(ValueError, match="row_norms='stretch' is not one of keep, cap, clamp"):
        fit_row_norms(rows, low, high, "stretch")


def test_transplant_holds_new_input_rows_to_the_students_range_and_leaves_the_rest(real_tokenizer):
    smol, qwen = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    student, teacher = build_tiny("llama", smol), build_tiny("qwen2", qwen, seed=1)
    # the mean row is far shorter than any row of a random student: clamp lengthens every new row to the range's low end
    kw = dict(teacher_model=teacher, method="mean", head_method="subword-prior", calibration_tokens=256)
    kept, rep_keep = transplant(student, smol, qwen, **kw)
    clamped, report = transplant(student, smol, qwen, row_norms="clamp", **kw)
    tmap = build_token_map(qwen, smol)
    low, high = norm_range(student.get_input_embeddings().weight.detach().norm(dim=1)[tmap.student_of[tmap.shared_teacher_ids]])
    rn = report["spaces"]["input"]["row_norms"]
    assert rn["mode"] == "clamp" and rn["low"] == round(low, 4) and rn["high"] == round(high, 4)
    assert rep_keep["spaces"]["input"]["row_norms"] == {"mode": "keep"}
    assert report["spaces"]["output"]["row_norms"] == {"mode": "keep"}  # subword-prior's rows are logits: left alone
    e_keep, e_clamp = kept.get_input_embeddings().weight, clamped.get_input_embeddings().weight
    new, shared = tmap.new_teacher_ids, tmap.shared_teacher_ids
    n = e_clamp[new].norm(dim=1)
    assert (n >= low * (1 - 1e-5)).all() and (n <= high * (1 + 1e-5)).all()
    assert rn["changed"] == len(new) and (e_keep[new].norm(dim=1) < low).all()
    cos = torch.nn.functional.cosine_similarity(e_clamp[new], e_keep[new], dim=1)
    assert (cos > 1 - 1e-5).all()
    assert torch.equal(e_clamp[shared], e_keep[shared])
    assert torch.equal(clamped.get_output_embeddings().weight, kept.get_output_embeddings().weight)
    with pytest.raises(ValueError, match="row_norms='x' is not one of"):
        transplant(student, smol, qwen, row_norms="x", **kw)
