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
    """The correlation product's dtype. "auto" is float32 on every CPU, so a transplant's atoms do not depend on the
    machine: a bf16 product (``bfloat16``) chooses among near-ties differently, and it did not pay where it could,
    on a CPU with AMX (a 1,024-target chunk of the default search: bf16 product 0.10 s against float32's 0.30 s, but
    its top-k and the rest unchanged, 0.96 s against 0.97 s; a float32 rescoring of a bf16 screen, certified by its
    rounding bound, cost more than it saved). It pays for ``--exact`` there (each iteration's product ~3x faster),
    where its choices are approximate."""
    if name == "auto":
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


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
            g = torch.bmm(chosen[:, :t], a.unsqueeze(-1))  # (B, t, 1) inner products with the support
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


def _omp_chunk_candidates(x: torch.Tensor, atoms: torch.Tensor, atoms_unit: torch.Tensor, k: int,
                          m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OMP restricted to each target's ``m`` atoms most correlated with it (Batch-OMP in the Gram domain).

    One product with all atoms picks the candidates; after that an iteration needs only the Gram column of the atom
    it chose (m inner products per target, never the whole m × m Gram), and the residual's correlations follow from
    them: alpha = b0 − G[:, support] · coef. The candidates of ``CANDIDATE_BLOCK`` targets are gathered at a time, so
    the (block, m, d) copy stays in cache. With ``m`` = all atoms this is exactly OMP.
    """
    corr = x.to(atoms_unit.dtype) @ atoms_unit.T  # (B, n): the one product with every atom
    cand = corr.float().abs_().topk(m, dim=1).indices  # (B, m)
    del corr
    sq_norm = (atoms * atoms).sum(1)  # (n,) the Gram's diagonal
    support = torch.empty((x.shape[0], k), dtype=torch.long)
    for s in range(0, x.shape[0], CANDIDATE_BLOCK):
        sl = slice(s, s + CANDIDATE_BLOCK)
        support[sl] = _candidate_support(x[sl], atoms[cand[sl]], sq_norm[cand[sl]], k)
    picked = cand.gather(1, support)
    return picked, _refit(x, atoms, picked)


def _candidate_support(x: torch.Tensor, c: torch.Tensor, sq_norm: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) positions in each target's candidate list ``c`` (B, m, d) that OMP picks, ``sq_norm`` (B, m) their
    squared norms."""
    b, m = c.shape[:2]
    b0 = torch.bmm(c, x.unsqueeze(-1)).squeeze(-1)  # (B, m) <atom, x>
    inv_norm = sq_norm.clamp_min(1e-24).rsqrt()
    rows = torch.arange(b)
    support = torch.empty((b, k), dtype=torch.long)
    chol = torch.zeros((b, k, k), dtype=torch.float64)  # lower-triangular Cholesky of the support's Gram
    alpha = b0 * inv_norm
    taken = torch.zeros((b, m), dtype=torch.bool)
    g_sup = torch.empty((b, m, k), dtype=torch.float32)  # (B, m, k) Gram columns of the support, grown per step
    for t in range(k):
        j = alpha.abs().masked_fill_(taken, -1.0).argmax(dim=1)  # (B,)
        taken[rows, j] = True
        support[:, t] = j
        g_col = torch.bmm(c, c[rows, j].unsqueeze(-1)).squeeze(-1)  # (B, m): <atom_i, atom_j>
        g_sup[:, :, t] = g_col
        if t:
            g = g_col.gather(1, support[:, :t]).unsqueeze(-1).double()  # (B, t, 1)
            w = torch.linalg.solve_triangular(chol[:, :t, :t], g, upper=False).squeeze(-1)
            chol[:, t, :t] = w
            diag2 = g_col[rows, j].double() - (w * w).sum(-1)
        else:
            diag2 = g_col[rows, j].double()
        chol[:, t, t] = diag2.clamp_min(1e-30).sqrt()
        coef = torch.cholesky_solve(b0.gather(1, support[:, : t + 1]).double().unsqueeze(-1),
                                    chol[:, : t + 1, : t + 1]).squeeze(-1)
        alpha = (b0 - torch.bmm(g_sup[:, :, : t + 1], coef.float().unsqueeze(-1)).squeeze(-1)) * inv_norm  # residual corr.
    return support


def batch_omp(
    x: torch.Tensor, atoms: torch.Tensor, k: int, *, chunk: int = 1024, dtype: str = "float32",
    candidates: int | None = None, progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of each row of ``x`` (N, d) over the rows of ``atoms`` (n, d).

    Returns ``(indices (N, k) long, coefficients (N, k) float32)`` with
    ``x[i] ≈ coefficients[i] @ atoms[indices[i]]``. Memory is bounded by ``chunk`` rows at a time;
    ``dtype`` sets the correlation product only ("auto": float32; "bfloat16" approximates the
    choices, see ``resolve_dtype``); the least squares is always float64. ``candidates=m``
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
    atoms_unit = (atoms / norms.clamp_min(1e-12)).to(resolve_dtype(dtype))  # select by normalized correlation
    idx_out = torch.empty((x.shape[0], k), dtype=torch.long)
    coef_out = torch.empty((x.shape[0], k), dtype=torch.float32)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, x.shape[0], chunk), desc=f"omp k={k}", unit="chunk", disable=not progress):
        stop = min(start + chunk, x.shape[0])
        if use_candidates:
            idx, coef = _omp_chunk_candidates(x[start:stop].float(), atoms, atoms_unit, k, candidates)
        else:
            idx, coef = _omp_chunk(x[start:stop].float(), atoms, atoms_unit, k)
        idx_out[start:stop] = idx
        coef_out[start:stop] = coef
    return idx_out, coef_out
