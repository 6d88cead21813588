"""Token vectors from a co-occurrence matrix: PPMI + truncated SVD, or GloVe trained in torch.

Every embedder is ``fn(cooc: Cooc, opts: EmbedOptions) -> Tensor (n, dims)`` registered in
``EMBEDDERS``.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import torch

from xtok.align.cooc import Cooc
from xtok.registry import EMBEDDERS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedOptions:
    dims: int = 300
    seed: int = 0
    # GloVe (defaults of the Stanford release TokAlign runs)
    iters: int = 15
    x_max: float = 10.0
    alpha: float = 0.75
    lr: float = 0.05
    batch: int = 1 << 16
    # PPMI
    context_alpha: float = 0.75  # context-distribution smoothing (Levy et al. 2015)
    svd_power: float = 0.0  # vectors U * S^power: 0 (plain U) mapped best, bench/results/align.json
    power_iters: int = 4
    progress: bool = False


def ppmi(cooc: Cooc, context_alpha: float = 0.75) -> Cooc:
    """Positive PMI entries: max(0, log(X_ij * sum / (row_i * ctx_j))), ctx smoothed by ``context_alpha``."""
    total = cooc.vals.sum()
    row = torch.zeros(cooc.n, dtype=torch.float64).index_add_(0, cooc.rows, cooc.vals)
    col = torch.zeros(cooc.n, dtype=torch.float64).index_add_(0, cooc.cols, cooc.vals)
    ctx = col.pow(context_alpha)
    ctx = ctx / ctx.sum()
    pmi = torch.log(cooc.vals / total) - torch.log(row[cooc.rows] / total) - torch.log(ctx[cooc.cols])
    keep = pmi > 0
    return Cooc(cooc.rows[keep], cooc.cols[keep], pmi[keep], cooc.n)


def csr(m: Cooc, transpose: bool = False) -> torch.Tensor:
    """The matrix as a float32 sparse CSR tensor (``m`` is coalesced row-major, as ``cooccurrence`` makes it)."""
    rows, cols, vals = (m.rows, m.cols, m.vals) if not transpose else _sorted(m.cols, m.rows, m.vals, m.n)
    crow = torch.zeros(m.n + 1, dtype=torch.long)
    crow[1:] = torch.bincount(rows, minlength=m.n).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, vals.float(), (m.n, m.n), check_invariants=False)


def _sorted(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int):
    order = torch.argsort(rows * n + cols)
    return rows[order], cols[order], vals[order]


def randomized_svd(m: torch.Tensor, k: int, power_iters: int = 4, oversample: int = 10, seed: int = 0,
                   mt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` left singular vectors and values of an n x n matrix (Halko et al. 2011); ``mt`` = its transpose."""
    n = m.shape[1]
    q_dim = min(k + oversample, n)
    gen = torch.Generator().manual_seed(seed)
    mt = m.t() if mt is None else mt
    y = m @ torch.randn((n, q_dim), generator=gen, dtype=torch.float32)  # (n, q)
    for _ in range(power_iters):
        q, _ = torch.linalg.qr(y)
        z, _ = torch.linalg.qr(mt @ q)
        y = m @ z
    q, _ = torch.linalg.qr(y)  # (n, q) orthonormal basis of the range
    b = (mt @ q).t()  # (q, n) = Q^T M
    ub, s, _ = torch.linalg.svd(b, full_matrices=False)
    return (q @ ub)[:, :k], s[:k]


@EMBEDDERS.register("ppmi-svd", help="positive PMI (smoothed context), rank-dims randomized SVD, U * S^svd_power")
def ppmi_svd(cooc: Cooc, opts: EmbedOptions) -> torch.Tensor:
    p = ppmi(cooc, opts.context_alpha)
    u, s = randomized_svd(csr(p), opts.dims, opts.power_iters, seed=opts.seed, mt=csr(p, transpose=True))
    return u * s.pow(opts.svd_power)


def glove_loss(w: torch.Tensor, c: torch.Tensor, bw: torch.Tensor, bc: torch.Tensor, cooc: Cooc,
               x_max: float = 10.0, alpha: float = 0.75) -> float:
    """The GloVe objective: 1/2 sum f(X_ij) (w_i . c_j + b_i + b~_j - log X_ij)^2 over the non-zeros."""
    f = (cooc.vals / x_max).pow(alpha).clamp_max(1.0)
    diff = (w[cooc.rows] * c[cooc.cols]).sum(1) + bw[cooc.rows] + bc[cooc.cols] - cooc.vals.log()
    return float(0.5 * (f * diff.double() ** 2).sum())


def _adagrad(param: torch.Tensor, sq: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
    """AdaGrad step on the rows a mini-batch touched; a row's gradients within the batch are summed first."""
    uniq, inv = torch.unique(rows, return_inverse=True)
    g = torch.zeros((len(uniq), *grad.shape[1:])).index_add_(0, inv, grad)
    sq.index_add_(0, uniq, g * g)  # rows are unique: index_add_ is a (much faster) indexed +=
    param.index_add_(0, uniq, -lr * g / sq[uniq].sqrt())


def train_glove(cooc: Cooc, opts: EmbedOptions) -> tuple[torch.Tensor, list[float]]:
    """GloVe by AdaGrad over shuffled mini-batches of non-zeros (the Stanford C code updates per pair).

    Returns word + context vectors (n, dims) and the objective after each epoch.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(opts.seed)
    n, d = cooc.n, opts.dims
    w = (torch.rand((n, d), generator=gen) - 0.5) / d
    c = (torch.rand((n, d), generator=gen) - 0.5) / d
    bw, bc = torch.zeros(n), torch.zeros(n)
    gw, gc, gbw, gbc = torch.ones((n, d)), torch.ones((n, d)), torch.ones(n), torch.ones(n)  # AdaGrad sums, start 1
    logx = cooc.vals.log().float()
    fx = (cooc.vals / opts.x_max).pow(opts.alpha).clamp_max(1.0).float()
    batch = min(opts.batch, max(256, -(-len(logx) // 100)))  # at least ~100 steps an epoch on small matrices
    losses = []
    for _ in tqdm(range(opts.iters), desc="glove", unit="epoch", disable=not opts.progress):
        perm = torch.randperm(len(logx), generator=gen)
        total = 0.0
        for s in range(0, len(perm), batch):
            idx = perm[s : s + batch]
            i, j = cooc.rows[idx], cooc.cols[idx]
            wi, cj = w[i], c[j]  # (B, d)
            diff = (wi * cj).sum(1) + bw[i] + bc[j] - logx[idx]  # (B,)
            total += float(0.5 * (fx[idx] * diff * diff).sum())
            fdiff = (fx[idx] * diff).clamp(-100.0, 100.0)  # the C code clips the same way
            _adagrad(w, gw, i, fdiff[:, None] * cj, opts.lr)
            _adagrad(c, gc, j, fdiff[:, None] * wi, opts.lr)
            _adagrad(bw, gbw, i, fdiff, opts.lr)
            _adagrad(bc, gbc, j, fdiff, opts.lr)
        if not math.isfinite(total):
            raise RuntimeError(f"GloVe diverged (objective {total}); lower lr (now {opts.lr})")
        losses.append(total)
        log.debug("glove epoch %d: objective %.4g", len(losses), total)
    return w + c, losses


@EMBEDDERS.register("glove", help="GloVe (x_max 10, alpha 0.75, AdaGrad), word + context vectors")
def glove(cooc: Cooc, opts: EmbedOptions) -> torch.Tensor:
    return train_glove(cooc, opts)[0]


def embed(cooc: Cooc, method: str, opts: EmbedOptions) -> torch.Tensor:
    """Vectors (n, dims) for the compact vocabulary of ``cooc``."""
    if cooc.n <= opts.dims:
        raise ValueError(f"only {cooc.n} tokens are frequent enough for a vector, not more than dims={opts.dims}; "
                         "give a larger corpus, lower --min-count, or lower --dims")
    if len(cooc.vals) == 0:
        raise ValueError("no co-occurring token pairs in the corpus; give a larger corpus or lower --min-count")
    out = EMBEDDERS.get(method)(cooc, opts)
    if not torch.isfinite(out).all():
        raise RuntimeError(f"embedding {method!r} produced NaN or Inf vectors")
    return out.float()
