import numpy as np
import pytest
import torch

from xtok.align.cooc import Cooc
from xtok.align.embed import EmbedOptions, embed, glove_loss, ppmi, ppmi_svd, randomized_svd, train_glove


def random_cooc(n: int, density: float = 0.4, seed: int = 0) -> Cooc:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, n), generator=gen, dtype=torch.float64) * 5
    x = (x + x.T) * (torch.rand((n, n), generator=gen) < density).double()
    x = (x + x.T) / 2  # symmetric with a symmetric support
    r, c = torch.nonzero(x, as_tuple=True)
    return Cooc(r, c, x[r, c], n)


def test_ppmi_matches_the_dense_formula():
    m = random_cooc(15)
    x = m.dense().numpy()
    total = x.sum()
    ctx = x.sum(0) ** 0.75
    ctx = ctx / ctx.sum()
    with np.errstate(divide="ignore"):
        ref = np.log(x / total) - np.log(x.sum(1, keepdims=True) / total) - np.log(ctx[None, :])
    ref = np.where((x > 0) & (ref > 0), ref, 0.0)
    got = ppmi(m, 0.75)
    assert (got.vals > 0).all()
    np.testing.assert_allclose(got.dense().numpy(), ref, rtol=1e-10, atol=1e-12)


def test_randomized_svd_matches_exact_svd_on_a_low_rank_matrix():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(60, 5, generator=gen) @ torch.randn(5, 60, generator=gen)
    u, s = randomized_svd(a, 5, power_iters=2)
    ref = torch.linalg.svdvals(a)[:5]
    torch.testing.assert_close(s, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(u @ (u.T @ a), a, rtol=1e-3, atol=1e-3)  # the basis spans the whole range


def test_ppmi_svd_gives_the_top_singular_subspace():
    m = random_cooc(40, seed=1)
    e = ppmi_svd(m, EmbedOptions(dims=6, power_iters=30, svd_power=0.5))  # (n, 6) = U sqrt(S)
    u, s, _ = torch.linalg.svd(ppmi(m).dense().float())
    ref = u[:, :6] * s[:6]  # E E^T = U S U^T is sign-free
    torch.testing.assert_close(e @ e.T, ref @ u[:, :6].T, rtol=1e-3, atol=1e-3)
    plain = ppmi_svd(m, EmbedOptions(dims=6, power_iters=30))  # default power 0: U, orthonormal columns
    torch.testing.assert_close(plain.T @ plain, torch.eye(6), rtol=1e-4, atol=1e-4)


def test_glove_objective_decreases():
    m = random_cooc(50, seed=2)
    vec, losses = train_glove(m, EmbedOptions(dims=8, iters=6, lr=0.05))
    assert vec.shape == (50, 8) and torch.isfinite(vec).all()
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 * losses[0]


def test_glove_loss_is_the_weighted_least_squares():
    m = random_cooc(6, seed=3)
    gen = torch.Generator().manual_seed(0)
    w, c, bw, bc = (torch.randn(s, generator=gen) for s in ((6, 3), (6, 3), (6,), (6,)))
    ref = 0.0
    for i, j, x in zip(m.rows.tolist(), m.cols.tolist(), m.vals.tolist()):
        ref += 0.5 * min(1.0, (x / 10) ** 0.75) * (float(w[i] @ c[j]) + float(bw[i] + bc[j]) - np.log(x)) ** 2
    assert glove_loss(w, c, bw, bc, m) == pytest.approx(ref, rel=1e-5)


def test_embed_refuses_too_few_tokens_for_dims():
    with pytest.raises(ValueError, match="only 6 tokens .* dims=8.*lower --dims"):
        embed(random_cooc(6), "ppmi-svd", EmbedOptions(dims=8))
