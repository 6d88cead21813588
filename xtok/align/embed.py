"""Token vectors from a co-occurrence matrix: PPMI + truncated SVD, or GloVe trained in torch.

Every embedder is ``fn(cooc: Cooc, opts: EmbedOptions) -> Tensor (n, dims)`` registered in
``EMBEDDERS``.
"""

from __future__ import annotations

import logging
import math
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


def randomized_svd(m: torch.Tensor, k: int, power_iters: int = 4, oversample: int = 10,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` left singular vectors and values of a (sparse or dense) n x n matrix (Halko et al. 2011)."""
    n = m.shape[1]
    q_dim = min(k + oversample, n)
    gen = torch.Generator().manual_seed(seed)
    mt = m.t().to_sparse_csr() if m.layout == torch.sparse_csr else m.t()
    y = m @ torch.randn((n, q_dim), generator=gen, dtype=torch.float32)  # (n, q)
    for _ in range(power_iters):
        q, _ = torch.linalg.qr(y)
        z, _ = torch.linalg.qr(mt @ q)
        y = m @ z
    q, _ = torch.linalg.qr(y)  # (n, q) orthonormal basis of the range
    b = (mt @ q).t()  # (q, n) = Q^T M
    ub, s, _ = torch.linalg.svd(b, full_matrices=False)
    return (q @ ub)[:, :k], s[:k]


@EMBEDDERS.register("ppmi-svd", help="positive PMI (smoothed context), rank-dims randomized SVD, U*sqrt(S)")
def ppmi_svd(cooc: Cooc, opts: EmbedOptions) -> torch.Tensor:
    p = ppmi(cooc, opts.context_alpha)
    m = torch.sparse_coo_tensor(torch.stack([p.rows, p.cols]), p.vals.float(), (p.n, p.n)).coalesce().to_sparse_csr()
    u, s = randomized_svd(m, opts.dims, opts.power_iters, seed=opts.seed)
    return u * s.sqrt()


def glove_loss(w: torch.Tensor, c: torch.Tensor, bw: torch.Tensor, bc: torch.Tensor, cooc: Cooc,
               x_max: float = 10.0, alpha: float = 0.75) -> float:
    """The GloVe objective: 1/2 sum f(X_ij) (w_i . c_j + b_i + b~_j - log X_ij)^2 over the non-zeros."""
    f = (cooc.vals / x_max).pow(alpha).clamp_max(1.0)
    diff = (w[cooc.rows] * c[cooc.cols]).sum(1) + bw[cooc.rows] + bc[cooc.cols] - cooc.vals.log()
    return float(0.5 * (f * diff.double() ** 2).sum())


def train_glove(cooc: Cooc, opts: EmbedOptions) -> tuple[torch.Tensor, list[float]]:
    """GloVe by AdaGrad over shuffled mini-batches of non-zeros (as the Stanford C code, batched).

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
    losses = []
    for _ in tqdm(range(opts.iters), desc="glove", unit="epoch", disable=not opts.progress):
        perm = torch.randperm(len(logx), generator=gen)
        total = 0.0
        for s in range(0, len(perm), opts.batch):
            idx = perm[s : s + opts.batch]
            i, j = cooc.rows[idx], cooc.cols[idx]
            wi, cj = w[i], c[j]  # (B, d)
            diff = (wi * cj).sum(1) + bw[i] + bc[j] - logx[idx]  # (B,)
            total += float(0.5 * (fx[idx] * diff * diff).sum())
            fdiff = (fx[idx] * diff).clamp(-100.0, 100.0)  # the C code clips the same way
            g_w, g_c = fdiff[:, None] * cj, fdiff[:, None] * wi  # (B, d)
            w.index_add_(0, i, -opts.lr * g_w / gw[i].sqrt())
            c.index_add_(0, j, -opts.lr * g_c / gc[j].sqrt())
            bw.index_add_(0, i, -opts.lr * fdiff / gbw[i].sqrt())
            bc.index_add_(0, j, -opts.lr * fdiff / gbc[j].sqrt())
            gw.index_add_(0, i, g_w * g_w)
            gc.index_add_(0, j, g_c * g_c)
            gbw.index_add_(0, i, fdiff * fdiff)
            gbc.index_add_(0, j, fdiff * fdiff)
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
