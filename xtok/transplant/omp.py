"""Batched Orthogonal Matching Pursuit over a fixed dictionary of anchor embeddings.

For each target x (a row of X) OMP picks k dictionary atoms greedily, each time the atom most
correlated with the current residual, and re-fits all coefficients by least squares on the chosen
support. Here a whole chunk of targets advances together: the correlation step is one matrix
product (chunk × d) @ (d × n_atoms) per iteration, which dominates; the least squares is kept up
to date with a per-target Cholesky factor that grows by one row per iteration (cost k^2, not k^3).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def resolve_dtype(name: str) -> torch.dtype:
    """Exact OMP's correlation product dtype. "auto" is float32 on every CPU, so a transplant's atoms do not depend on
    the machine: a bf16 product (``bfloat16``) chooses among near-ties differently (~3x faster per iteration where bf16
    is fast, its choices approximate)."""
    if name == "auto":
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def screen_dtype(name: str) -> torch.dtype:
    """The candidate search's screening product dtype. Its bf16 screen keeps 64 atoms more and rescores them in float32
    (``_screen``): the float32 screen's candidates for every one of the default pair's 112,699 new tokens but 12
    (near-ties of float32 rounding: 11 with 32 extra, 848 with 16), so "auto" takes bf16 wherever bf16 products are
    fast (``xtok.utils.hardware.fast_bf16``), float32 elsewhere."""
    from xtok.utils.hardware import fast_bf16

    if name == "auto":
        return torch.bfloat16 if fast_bf16() else torch.float32
    return resolve_dtype(name)


REFIT_CONDITION = 1e-8  # a support whose Gram eigenvalues go below this share of the largest is solved by SVD


def _refit(x: torch.Tensor, atoms: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Coefficients by a float64 least-squares solve on each final support.

    A well-conditioned support is solved by its normal equations (the k × k Gram matrix's eigendecomposition, in
    float64: an error near cond × 1e-16, far below float32's). One whose Gram matrix has an eigenvalue under
    ``REFIT_CONDITION`` of its largest (near-collinear atoms; an atom zeroed when a target was reproduced exactly
    before k steps) goes to LAPACK's gelsd, the SVD's minimum-norm solution (its gelsy, pivoted QR, returned a wrong
    solution now and then: 3 runs in 100 dropped a needed atom). gelsd on every support took 0.11 s per 1,024 targets
    at k=8 on this CPU, the normal equations 0.01 s.
    """
    a = atoms[support].double()  # (B, k, d)
    x64 = x.double().unsqueeze(-1)
    val, vec = torch.linalg.eigh(a @ a.transpose(1, 2))
    coef = (vec @ ((vec.transpose(1, 2) @ (a @ x64)) / val.clamp_min(1e-300).unsqueeze(-1))).squeeze(-1)
    bad = torch.nonzero(val[:, 0] <= REFIT_CONDITION * val[:, -1]).flatten()
    if len(bad):
        coef[bad] = torch.linalg.lstsq(a[bad].transpose(1, 2), x64[bad], driver="gelsd").solution.squeeze(-1)
    return coef.float()


def _omp_chunk(x: torch.Tensor, atoms: torch.Tensor, atoms_unit: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, d = x.shape
    x64 = x.double()  # the small per-target algebra runs in float64: near-collinear anchors are common
    support = torch.empty((b, k), dtype=torch.long)
    chosen = torch.zeros((b, k, d), dtype=torch.float64)  # (B, k, d) the selected atoms
    chol = torch.zeros((b, k, k), dtype=torch.float64)  # lower-triangular Cholesky of the support's Gram
    rhs = torch.zeros((b, k), dtype=torch.float64)  # <atom_j, x> for the support
    residual = x64
    for t in range(k):
        corr = residual.to(atoms_unit.dtype) @ atoms_unit.T  # (B, n): the dominant product
        hi, lo = corr.max(dim=1), corr.min(dim=1)  # argmax |corr| without writing a (B, n) abs copy
        j = torch.where(hi.values >= -lo.values, hi.indices, lo.indices)  # (B,)
        del corr
        # The residual is orthogonal to the support, so a chosen atom comes back only when the target is
        # already reproduced exactly; such a row gets a zero atom (coefficient 0) instead of a duplicate.
        fresh = ~(support[:, :t] == j[:, None]).any(dim=1) if t else torch.ones(b, dtype=torch.bool)
        support[:, t] = j
        a = atoms[j].double() * fresh[:, None]  # (B, d)
        chosen[:, t] = a
        rhs[:, t] = (a * x64).sum(-1)
        if t:
            g = _row_products(a, chosen[:, :t]).unsqueeze(-1)  # (B, t, 1) inner products with the support
            w = torch.linalg.solve_triangular(chol[:, :t, :t], g, upper=False).squeeze(-1)  # (B, t)
            chol[:, t, :t] = w
            diag2 = (a * a).sum(-1) - (w * w).sum(-1)
        else:
            diag2 = (a * a).sum(-1)
        chol[:, t, t] = torch.where(fresh, diag2.clamp_min(1e-30).sqrt(), torch.ones((), dtype=torch.float64))
        coef = torch.cholesky_solve(rhs[:, : t + 1].unsqueeze(-1), chol[:, : t + 1, : t + 1]).squeeze(-1)  # (B, t+1)
        residual = x64 - torch.bmm(coef.unsqueeze(1), chosen[:, : t + 1]).squeeze(1)  # (B, d)
    return support, _refit(x, atoms, support)


CANDIDATE_BLOCK = 32  # targets whose candidate atoms are gathered at a time: (32, m, d) stays in cache across iterations
SCREEN_EXTRA = 64  # atoms past the m-th that a bf16 screen keeps and rescores in float32


def _screen(x: torch.Tensor, atoms_unit: torch.Tensor, atoms_screen: torch.Tensor, m: int) -> torch.Tensor:
    """(B, m') atom indices whose set holds each target's m atoms of largest |normalized correlation|.

    A float32 screen (``atoms_screen`` float32) returns exactly those m. A bf16 one (3.2x faster products on a CPU
    with avx512_bf16) returns its own top m + ``SCREEN_EXTRA``, which the caller rescores in float32. That finds the
    float32 screen's set unless bf16 rounding moved a true top-m atom below 63 others; on the default pair's 112,699
    new tokens the set was the same for all but 12, float32 near-ties (16 extra: 848 differ), and the median bf16 error
    on the first 1,024 was 1e-4 of ||x||. It is not certified: the worst-case rounding bound (3 · 2^-8 · ||x||,
    Cauchy-Schwarz) would need ~450 kept atoms per target there, whose rescoring costs more than the float32 product
    saves.
    """
    if atoms_screen.dtype == torch.float32:
        return (x @ atoms_unit.T).abs_().topk(m, dim=1).indices
    kept = min(m + SCREEN_EXTRA, atoms_unit.shape[0])
    return (x.to(atoms_screen.dtype) @ atoms_screen.T).abs_().topk(kept, dim=1).indices


def _omp_chunk_candidates(x: torch.Tensor, atoms: torch.Tensor, atoms_unit: torch.Tensor, atoms_screen: torch.Tensor,
                          k: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OMP restricted to each target's ``m`` atoms most correlated with it (Batch-OMP in the Gram domain).

    One screening product with all atoms (``_screen``) picks the candidates; after that an iteration needs only the
    Gram column of the atom it chose (m inner products per target, never the whole m × m Gram), and the residual's
    correlations follow from them. The candidates of ``CANDIDATE_BLOCK`` targets are gathered at a time, so the
    (block, m, d) copy stays in cache. With ``m`` = all atoms this is exactly OMP.
    """
    kept = _screen(x, atoms_unit, atoms_screen, m)  # (B, m') with m' >= m
    sq_norm = (atoms * atoms).sum(1)  # (n,) the Gram's diagonal
    inv_norm = sq_norm.clamp_min(1e-24).rsqrt()
    picked = torch.empty((x.shape[0], k), dtype=torch.long)
    for s in range(0, x.shape[0], CANDIDATE_BLOCK):
        sl = slice(s, s + CANDIDATE_BLOCK)
        cand, c = kept[sl], atoms[kept[sl]]  # (b, m'), (b, m', d)
        if cand.shape[1] > m:  # a bf16 screen's survivors, rescored in float32
            score = _row_products(x[sl], c).abs_() * inv_norm[cand]
            pos = score.topk(m, dim=1).indices
            cand, c = cand.gather(1, pos), c[torch.arange(len(pos))[:, None], pos]
        picked[sl] = cand.gather(1, _candidate_support(x[sl], c, sq_norm[cand], k))
    return picked, _refit(x, atoms, picked)


def _row_products(v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(B, m) inner products of each row of ``v`` (B, d) with its own ``c`` (B, m, d): a (1, d) @ (d, m) product per
    target, ~10x faster on CPU than (m, d) @ (d, 1), which torch runs as slow batched matrix-vector products."""
    return torch.bmm(v.unsqueeze(1), c.transpose(1, 2)).squeeze(1)


def _candidate_support(x: torch.Tensor, c: torch.Tensor, sq_norm: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) positions in each target's candidate list ``c`` (B, m, d) that OMP picks, ``sq_norm`` (B, m) their
    squared norms.

    The support grows by Gram-Schmidt in the Gram domain: with q_1..q_t an orthonormal basis of the chosen atoms,
    the residual's correlations are <c_i, x> − sum_s <c_i, q_s> <q_s, x>, and <c_i, q_t> comes from the new atom's Gram
    column and the earlier <c_i, q_s> alone (q_s is never formed in d dimensions). No triangular solves: each step is
    a few batched products and element-wise operations, in float64 past the Gram column.
    """
    b, m = c.shape[:2]
    b0 = _row_products(x, c).double()  # (B, m) <c_i, x>
    inv_norm = sq_norm.double().clamp_min(1e-24).rsqrt()
    rows = torch.arange(b)
    support = torch.empty((b, k), dtype=torch.long)
    z = torch.zeros((b, m, k), dtype=torch.float64)  # <c_i, q_s>
    qx = torch.zeros((b, k), dtype=torch.float64)  # <q_s, x>
    corr = b0.clone()  # <c_i, residual>
    taken = torch.zeros((b, m), dtype=torch.bool)
    for t in range(k):
        j = (corr * inv_norm).abs_().masked_fill_(taken, -1.0).argmax(dim=1)  # (B,)
        taken[rows, j] = True
        support[:, t] = j
        g = _row_products(c[rows, j], c).double()  # (B, m) <c_i, c_j>: the Gram column
        zj = z[rows, j, :t]  # (B, t) <c_j, q_s>
        g_jj = g[rows, j]
        left = g_jj - (zj * zj).sum(-1)  # ||c_j − its projection on the support||^2
        # c_j inside the support's span (reachable only once x is reproduced): it adds no direction, coefficient 0
        inv = torch.where(left > 1e-12 * g_jj, left.clamp_min(1e-300).rsqrt(), torch.zeros((), dtype=torch.float64))
        zt = (g - torch.bmm(z[:, :, :t], zj.unsqueeze(-1)).squeeze(-1)) * inv[:, None]  # <c_i, q_t>
        z[:, :, t] = zt
        qx[:, t] = (b0[rows, j] - (zj * qx[:, :t]).sum(-1)) * inv
        corr -= zt * qx[:, t, None]
    return support


def batch_omp(
    x: torch.Tensor, atoms: torch.Tensor, k: int, *, chunk: int = 1024, dtype: str = "float32",
    candidates: int | None = None, progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of each row of ``x`` (N, d) over the rows of ``atoms`` (n, d).

    Returns ``(indices (N, k) long, coefficients (N, k) float32)`` with
    ``x[i] ≈ coefficients[i] @ atoms[indices[i]]``. Memory is bounded by ``chunk`` rows at a time;
    ``dtype`` sets the correlation product only: for exact OMP "auto" is float32 and "bfloat16"
    approximates the choices (``resolve_dtype``); the candidate search's bf16 screen is rescored in
    float32 (all but 12 of 112,699 targets get the float32 screen's candidates), and "auto" takes
    it where bf16 is fast (``screen_dtype``).
    The least squares is always float64. ``candidates=m``
    restricts each target's search to the m atoms most correlated with it (exact OMP when None or
    >= n; much faster, since k products with all atoms dominate exact OMP).
    """
    if x.ndim != 2 or atoms.ndim != 2 or x.shape[1] != atoms.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and atoms {tuple(atoms.shape)} must be (N, d) and (n, d)")
    n = atoms.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of anchors ({n}); lower k")
    if candidates is not None and candidates < k:
        raise ValueError(f"candidates={candidates} must be at least k={k}")
    use_candidates = candidates is not None and candidates < n
    if not (torch.isfinite(x).all() and torch.isfinite(atoms).all()):
        raise ValueError("NaN or Inf in the embeddings given to OMP; check the model weights")
    atoms = atoms.float()
    norms = atoms.norm(dim=1, keepdim=True)
    atoms_unit = atoms / norms.clamp_min(1e-12)  # select by normalized correlation
    product = screen_dtype(dtype) if use_candidates else resolve_dtype(dtype)
    atoms_product = atoms_unit.to(product)
    idx_out = torch.empty((x.shape[0], k), dtype=torch.long)
    coef_out = torch.empty((x.shape[0], k), dtype=torch.float32)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, x.shape[0], chunk), desc=f"omp k={k}", unit="chunk", disable=not progress):
        stop = min(start + chunk, x.shape[0])
        if use_candidates:
            idx, coef = _omp_chunk_candidates(x[start:stop].float(), atoms, atoms_unit, atoms_product, k, candidates)
        else:
            idx, coef = _omp_chunk(x[start:stop].float(), atoms, atoms_product, k)
        idx_out[start:stop] = idx
        coef_out[start:stop] = coef
    return idx_out, coef_out
