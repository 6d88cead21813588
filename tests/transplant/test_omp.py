import numpy as np
import pytest
import torch

from xtok.transplant.omp import batch_omp


def _reference_omp(x: np.ndarray, atoms: np.ndarray, k: int):
    """Textbook OMP for one vector: normalized correlation, dense least squares on the support each step."""
    unit = atoms / np.linalg.norm(atoms, axis=1, keepdims=True)
    support, r, c = [], x.copy(), None
    for _ in range(k):
        support.append(int(np.argmax(np.abs(unit @ r))))
        c, *_ = np.linalg.lstsq(atoms[support].T, x, rcond=None)
        r = x - atoms[support].T @ c
    return support, c


def test_matches_textbook_omp():
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((300, 24))
    x = rng.standard_normal((40, 24))
    idx, coef = batch_omp(torch.tensor(x, dtype=torch.float32), torch.tensor(atoms, dtype=torch.float32), 6, chunk=16)
    for i in range(40):
        support, c = _reference_omp(x[i], atoms, 6)
        assert idx[i].tolist() == support
        np.testing.assert_allclose(coef[i].numpy(), c, rtol=1e-3, atol=1e-4)


def test_coefficients_are_least_squares_on_the_support():
    torch.manual_seed(0)
    atoms, x = torch.randn(2000, 64), torch.randn(50, 64)
    idx, coef = batch_omp(x, atoms, 12, chunk=32)
    for i in range(50):
        ref = torch.linalg.lstsq(atoms[idx[i]].T.double(), x[i].double().unsqueeze(-1)).solution.squeeze(-1)
        torch.testing.assert_close(coef[i].double(), ref, rtol=1e-4, atol=1e-4)


def test_recovers_exact_sparse_combinations():
    torch.manual_seed(1)
    atoms = torch.randn(1000, 128)
    true = torch.stack([torch.randperm(1000)[:5] for _ in range(30)])
    c = torch.randn(30, 5)
    x = torch.einsum("bk,bkd->bd", c, atoms[true])
    idx, coef = batch_omp(x, atoms, 5)
    for i in range(30):
        assert set(idx[i].tolist()) == set(true[i].tolist())
    recon = torch.einsum("bk,bkd->bd", coef, atoms[idx])
    torch.testing.assert_close(recon, x, rtol=1e-4, atol=1e-4)


def test_exact_target_with_spare_iterations_stays_finite():
    """Reproduced after 2 of 4 steps: the support repeats an atom and the final least squares is rank deficient
    (LAPACK's gelsy got this wrong about 3 times in 100, so the check runs many times)."""
    atoms = torch.eye(8)
    x = torch.tensor([[1.0, 2.0, 0, 0, 0, 0, 0, 0]])
    for _ in range(200):
        idx, coef = batch_omp(x, atoms, 4)
        recon = coef @ atoms[idx[0]]
        torch.testing.assert_close(recon[0], x[0])
        assert torch.isfinite(coef).all()


def test_candidate_search_with_spare_iterations_stays_finite():
    """A target reproduced by 2 atoms, searched with k=5 among 12 candidates: the Gram-Schmidt steps past the
    reproduction add atoms at coefficient 0 (or directions of no weight), never NaN, and the refit rebuilds x."""
    torch.manual_seed(8)
    atoms = torch.randn(60, 16)
    x = (1.5 * atoms[3] - 0.5 * atoms[17]).unsqueeze(0)
    for dtype in ("float32", "bfloat16"):
        idx, coef = batch_omp(x, atoms, 5, candidates=12, dtype=dtype)
        assert {3, 17} <= set(idx[0].tolist()) and len(set(idx[0].tolist())) == 5
        assert torch.isfinite(coef).all()
        torch.testing.assert_close(coef[0] @ atoms[idx[0]], x[0], rtol=1e-4, atol=1e-4)


def test_chunking_does_not_change_results():
    torch.manual_seed(2)
    atoms, x = torch.randn(500, 32), torch.randn(77, 32)
    a = batch_omp(x, atoms, 8, chunk=7)
    b = batch_omp(x, atoms, 8, chunk=1000)
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_bad_inputs():
    with pytest.raises(ValueError, match="number of anchors"):
        batch_omp(torch.randn(2, 4), torch.randn(3, 4), 5)
    bad = torch.randn(3, 4)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        batch_omp(torch.randn(2, 4), bad, 2)
    with pytest.raises(ValueError, match="must be"):
        batch_omp(torch.randn(2, 4), torch.randn(3, 5), 2)


def test_candidate_search_with_all_atoms_is_exact_omp():
    from xtok.transplant.omp import _omp_chunk_candidates

    torch.manual_seed(3)
    atoms, x = torch.randn(300, 24), torch.randn(40, 24)
    idx, coef = batch_omp(x, atoms, 6)
    unit = atoms / atoms.norm(dim=1, keepdim=True)
    idx2, coef2 = _omp_chunk_candidates(x, atoms, unit, unit, 6, 300)
    assert torch.equal(idx, idx2)
    torch.testing.assert_close(coef, coef2, rtol=1e-4, atol=1e-5)


def test_candidate_search_gives_least_squares_on_its_support():
    torch.manual_seed(4)
    atoms, x = torch.randn(3000, 48), torch.randn(30, 48)
    idx, coef = batch_omp(x, atoms, 8, candidates=64)
    exact_idx, _ = batch_omp(x, atoms, 8)
    assert (idx[:, 0] == exact_idx[:, 0]).all()  # the first pick is always among the candidates
    for i in range(30):
        assert len(set(idx[i].tolist())) == 8
        ref = torch.linalg.lstsq(atoms[idx[i]].T.double(), x[i].double().unsqueeze(-1)).solution.squeeze(-1)
        torch.testing.assert_close(coef[i].double(), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="at least k"):
        batch_omp(x, atoms, 8, candidates=4)


@pytest.mark.parametrize("spread", [1.0, 1e-3, 1e-6])
def test_refit_is_the_least_squares_solution_at_any_conditioning(spread):
    """Well-conditioned supports take the normal equations, near-collinear ones the SVD: both give numpy's float64
    least squares to float32 precision (relative to the largest coefficient, since near-collinear pairs get large,
    opposite coefficients)."""
    from xtok.transplant.omp import REFIT_CONDITION, _refit

    rng = np.random.default_rng(5)
    base = rng.standard_normal((40, 64))
    atoms = np.concatenate([base, base[:20] + spread * rng.standard_normal((20, 64))])  # atom 40+i ~ atom i
    support = np.stack([np.r_[rng.choice(20, 1), rng.choice(np.arange(20, 40), 5)] for _ in range(30)])
    support[:, 1] = support[:, 0] + 40  # every support holds one near-collinear pair
    x = rng.standard_normal((30, 64))
    coef = _refit(torch.tensor(x, dtype=torch.float32), torch.tensor(atoms, dtype=torch.float32),
                  torch.tensor(support)).double().numpy()
    a32 = torch.tensor(atoms, dtype=torch.float32).double().numpy()  # the float32 atoms _refit sees
    x32 = torch.tensor(x, dtype=torch.float32).double().numpy()
    for i in range(30):
        ref, *_ = np.linalg.lstsq(a32[support[i]].T, x32[i], rcond=None)
        np.testing.assert_allclose(coef[i], ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    gram_cond = np.linalg.cond(a32[support[0]] @ a32[support[0]].T)
    assert (gram_cond > 1 / REFIT_CONDITION) == (spread < 1e-4)  # 1e-3: normal equations at cond ~4e6; 1e-6: SVD


def _float64_top(x: np.ndarray, atoms: np.ndarray, m: int):
    """Each row's m atoms of largest |normalized correlation| in float64, and the gap between the m-th and the next."""
    score = np.abs(x @ (atoms / np.linalg.norm(atoms, axis=1, keepdims=True)).T)
    order = np.argsort(-score, axis=1)
    ranked = np.take_along_axis(score, order, axis=1)
    return [set(row[:m].tolist()) for row in order], ranked[:, m - 1] - ranked[:, m]


def test_bf16_screen_rescored_finds_the_float32_candidates(monkeypatch):
    """The bf16 screen keeps SCREEN_EXTRA atoms past the m-th and rescores them in float32: each target gets the m
    candidates of float64 scoring (wherever the m-th and next atom are further apart than float32 rounding), so the
    codes of the float32 screen. Without the extra atoms bf16 rounding loses true candidates of some targets."""
    import xtok.transplant.omp as omp

    rng = np.random.default_rng(6)
    atoms = rng.standard_normal((4000, 96)) * rng.uniform(0.5, 2.0, (4000, 1))
    x = rng.standard_normal((300, 96))
    m = 40
    top, gap = _float64_top(x, atoms, m)
    clear = gap > 1e-5 * np.linalg.norm(x, axis=1)  # float32 scoring cannot order closer pairs
    assert clear.mean() > 0.9
    xt, at = torch.tensor(x, dtype=torch.float32), torch.tensor(atoms, dtype=torch.float32)
    unit = at / at.norm(dim=1, keepdim=True)

    def candidates():
        kept = omp._screen(xt, unit, unit.bfloat16(), m)
        score = (xt.unsqueeze(1) @ at[kept].transpose(1, 2)).squeeze(1).abs() / at.norm(dim=1)[kept]
        found = kept.gather(1, score.topk(m, dim=1).indices)
        return kept.shape[1], sum(set(found[i].tolist()) != top[i] for i in np.flatnonzero(clear))

    assert candidates() == (m + omp.SCREEN_EXTRA, 0)
    monkeypatch.setattr(omp, "SCREEN_EXTRA", 0)
    assert candidates()[1] > 0
    monkeypatch.undo()
    a = batch_omp(xt, at, 6, candidates=m, dtype="float32")
    b = batch_omp(xt, at, 6, candidates=m, dtype="bfloat16")
    same = (a[0] == b[0]).all(1)
    assert same[torch.tensor(clear)].all()
    torch.testing.assert_close(a[1], b[1], rtol=1e-4, atol=1e-5)
