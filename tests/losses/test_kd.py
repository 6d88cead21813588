import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.distill.tolerance import EPS32, SAFETY, float32_atol
from xtok.losses.kd import (
    cross_entropy_sum,
    distill_loss,
    teacher_topk_from_logits,
    topk_distill_loss,
    topk_forward_kl_grad,
)
from xtok.registry import LOSSES


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 5, 11, generator=g) * 2, torch.randn(2, 5, 11, generator=g) * 2  # student, teacher


def test_forward_and_reverse_kl_equal_torch_kl_div(logits):
    s, t = logits
    s_lp, t_lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
    fwd, n = distill_loss(s, t, beta=0.0)
    rev, _ = distill_loss(s, t, beta=1.0)
    assert n == 10
    torch.testing.assert_close(fwd, F.kl_div(s_lp, t_lp, log_target=True, reduction="sum"))
    torch.testing.assert_close(rev, F.kl_div(t_lp, s_lp, log_target=True, reduction="sum"))
    assert not torch.isclose(fwd, rev)


def test_jsd_matches_the_definition_in_numpy(logits):
    s, t = logits
    p = torch.softmax(t.double(), -1).numpy()
    q = torch.softmax(s.double(), -1).numpy()
    for beta in (0.1, 0.5, 0.9):
        m = beta * p + (1 - beta) * q
        ref = beta * (p * np.log(p / m)).sum() + (1 - beta) * (q * np.log(q / m)).sum()
        got, _ = distill_loss(s, t, beta=beta)
        assert got.item() == pytest.approx(ref, rel=1e-5)
    half_st, _ = distill_loss(s, t, beta=0.5)
    half_ts, _ = distill_loss(t, s, beta=0.5)
    torch.testing.assert_close(half_st, half_ts)  # β = 1/2 is the symmetric JSD


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_identical_distributions_give_zero(logits, beta):
    s, _ = logits
    loss, _ = distill_loss(s, s.clone(), beta=beta)
    assert abs(loss.item()) < 1e-5


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_chunked_equals_unchunked_and_mask_counts(logits, beta):
    s, t = logits
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    a, na = distill_loss(s, t, mask, beta=beta, chunk=1)
    b, nb = distill_loss(s, t, mask, beta=beta, chunk=100)
    torch.testing.assert_close(a, b)
    assert na == nb == 7
    per_pos = torch.stack([distill_loss(s[i:i + 1, j:j + 1], t[i:i + 1, j:j + 1], beta=beta)[0]
                           for i in range(2) for j in range(5) if mask[i, j]])
    torch.testing.assert_close(a, per_pos.sum())


def test_temperature_scales_by_tau_squared(logits):
    s, t = logits
    tau = 2.5
    got, _ = distill_loss(s, t, beta=0.0, temperature=tau)
    ref = F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True, reduction="sum") * tau**2
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_topk_with_full_vocab_equals_full_loss(logits, beta, tau):
    """K = V: no tail, so the top-k loss is the dense loss, at any temperature the cache was built at."""
    s, t = logits
    top, _ = topk_distill_loss(s, teacher_topk_from_logits(t, 11, tau), beta=beta, temperature=tau)
    full, _ = distill_loss(s, t, beta=beta, temperature=tau)
    atol = float32_atol(full, terms=s.numel())
    torch.testing.assert_close(top, full, rtol=0.0, atol=atol)
    if beta in (0.0, 1.0):  # independent of distill_loss: torch's kl_div, times tau^2 (Hinton)
        s_lp, t_lp = F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1)
        a, b = (s_lp, t_lp) if beta == 0.0 else (t_lp, s_lp)
        ref = F.kl_div(a, b, log_target=True, reduction="sum") * tau**2
        torch.testing.assert_close(top, ref, rtol=0.0, atol=atol)


def test_topk_refuses_a_teacher_of_another_temperature(logits):
    """A tail bucket cannot be re-tempered (its tokens need tempering one by one): a cache of another temperature is
    refused, naming both values and the fix."""
    s, t = logits
    with pytest.raises(ValueError, match=r"temperature 1\.0 but the loss runs at temperature 2\.0; rebuild the teacher cache"):
        topk_distill_loss(s, teacher_topk_from_logits(t, 3, 1.0), temperature=2.0)
    with pytest.raises(ValueError, match="must lie in"):
        teacher_topk_from_logits(t, 12)


def _bucket_reference(s, t, k, tau, beta):
    """Float64, from the definitions: softmax at tau, the teacher's top-k tokens and one bucket summing the rest."""
    p, q = torch.softmax(t / tau, -1), torch.softmax(s / tau, -1)  # (B, T, V)
    ids = p.topk(k, -1).indices
    rest = torch.ones_like(p, dtype=torch.bool).scatter(-1, ids, False)
    big_p = torch.cat([p.gather(-1, ids), (p * rest).sum(-1, keepdim=True)], -1)  # (B, T, K+1)
    big_q = torch.cat([q.gather(-1, ids), (q * rest).sum(-1, keepdim=True)], -1)

    def kl(a, b):
        return (a * (a / b).log()).sum()

    m = beta * big_p + (1 - beta) * big_q
    d = kl(big_p, big_q) if beta == 0 else kl(big_q, big_p) if beta == 1 else beta * kl(big_p, m) + (1 - beta) * kl(big_q, m)
    return d * tau**2, rest


def _shift_tail_mass(x, ids, tau, mass):
    """Move the logits outside ``ids`` so that, at ``tau``, they hold exactly ``mass`` of the probability."""
    rest = torch.ones_like(x, dtype=torch.bool).scatter(-1, ids, False)
    lse_rest = torch.logsumexp((x / tau).masked_fill(~rest, -math.inf), -1, keepdim=True)
    lse_top = torch.logsumexp((x / tau).masked_fill(rest, -math.inf), -1, keepdim=True)
    c = math.log(mass / (1 - mass)) - (lse_rest - lse_top)
    return torch.where(rest, x + tau * c, x)


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("case", ["random", "student top-k holds 1-1e-9", "teacher top-k holds 1-1e-9"])
def test_topk_loss_and_gradient_match_a_float64_dense_reference(case, beta, tau):
    """Loss and gradient of the float32 top-k loss against autograd of the float64 definition, with the tail bucket
    nearly empty for the student (its log-mass must be exact and carry a gradient: log(1 - sum p) in float32 gives
    log 0) or for the teacher."""
    g = torch.Generator().manual_seed(0)
    v, k = 11, 3
    t = torch.randn(2, 5, v, generator=g, dtype=torch.float64) * 2
    s = torch.randn(2, 5, v, generator=g, dtype=torch.float64) * 2
    ids = torch.softmax(t / tau, -1).topk(k, -1).indices
    if case.startswith("student"):
        s = _shift_tail_mass(s, ids, tau, 1e-9)
    elif case.startswith("teacher"):
        t = _shift_tail_mass(t, ids, tau, 1e-9)
    s64 = s.clone().requires_grad_(True)
    ref, rest = _bucket_reference(s64, t, k, tau, beta)
    ref.backward()
    s32 = s.float().requires_grad_(True)
    got, n = topk_distill_loss(s32, teacher_topk_from_logits(t.float(), k, tau), beta=beta, temperature=tau)
    got.backward()
    assert n == 10
    # Float32 log-probs err by eps * |log p| (absolute), so the largest |log| of any bucket, L, scales the noise.
    big = torch.cat([torch.log_softmax(x / tau, -1).abs().flatten() for x in (s, t)]).max().item()
    L = max(big, -math.log(1e-9))
    torch.testing.assert_close(got.double(), ref.detach(), rtol=0.0, atol=float32_atol(ref, terms=v * n) * (1 + L))
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=0.0, atol=float32_atol(s64.grad, terms=v) * (1 + L))
    if case.startswith("student"):
        # The tail logits' gradient: non-zero and, being one product of float32 factors each good to eps * L (no
        # cancellation when the tail is this small), equal to the reference element by element.
        tail_ref, tail_got = s64.grad[rest], s32.grad.double()[rest]
        assert (tail_ref != 0).all() and (tail_got != 0).all()
        torch.testing.assert_close(tail_got, tail_ref, rtol=SAFETY * EPS32 * (1 + L), atol=0.0)


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("k", [3, 11])
@pytest.mark.parametrize("case", ["random", "student top-k holds 1-1e-9", "teacher top-k holds 1-1e-9",
                                  "student tail underflows"])
def test_closed_form_forward_kl_gradient_matches_the_float64_reference(case, k, tau):
    """topk_forward_kl_grad's loss and gradient against autograd of the float64 definition (k = V: no tail bucket),
    with one position masked out (no loss, zero gradient), and a student whose mass outside the top k underflows
    float32 (its exact log-mass then comes from the logits)."""
    g = torch.Generator().manual_seed(1)
    v = 11
    t = torch.randn(2, 5, v, generator=g, dtype=torch.float64) * 2
    s = torch.randn(2, 5, v, generator=g, dtype=torch.float64) * 2
    ids = torch.softmax(t / tau, -1).topk(min(k, v - 1), -1).indices
    if case.startswith("student top"):
        s = _shift_tail_mass(s, ids, tau, 1e-9)
    elif case.startswith("teacher"):
        t = _shift_tail_mass(t, ids, tau, 1e-9)
    elif case.startswith("student tail"):
        s = _shift_tail_mass(s, ids, tau, 1e-50)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 2] = False
    s64 = s.clone().requires_grad_(True)
    ref = _masked_bucket_reference(s64, t, k, tau, mask)
    ref.backward()
    got, grad = topk_forward_kl_grad(s.float(), teacher_topk_from_logits(t.float(), k, tau), mask, temperature=tau)
    assert grad.dtype == torch.float32 and grad.shape == s.shape
    assert not grad[1, 2].any()
    big = torch.cat([torch.log_softmax(x / tau, -1).abs().flatten() for x in (s, t)]).max().item()
    L = max(big, -math.log(1e-9)) if case != "student tail underflows" else big
    torch.testing.assert_close(got.double(), ref.detach(), rtol=0.0, atol=float32_atol(ref, terms=v * 9) * (1 + L))
    torch.testing.assert_close(grad.double(), s64.grad, rtol=0.0, atol=float32_atol(s64.grad, terms=v) * (1 + L))
    # and what autograd gives through topk_distill_loss, the loss it replaces
    s32 = s.float().requires_grad_(True)
    loss, _ = topk_distill_loss(s32, teacher_topk_from_logits(t.float(), k, tau), mask, beta=0.0, temperature=tau)
    loss.backward()
    torch.testing.assert_close(got, loss.detach(), rtol=0.0, atol=float32_atol(loss, terms=v * 9) * (1 + L))
    torch.testing.assert_close(grad, s32.grad, rtol=0.0, atol=float32_atol(s32.grad, terms=v) * (1 + L))


def _masked_bucket_reference(s, t, k, tau, mask):
    """Forward KL of ``_bucket_reference`` (k < V) or of the full distributions (k = V), over the counted positions."""
    if k == s.shape[-1]:
        p, logq = torch.softmax(t / tau, -1), torch.log_softmax(s / tau, -1)
        return ((p * (p.log() - logq)).sum(-1) * mask).sum() * tau**2
    total = 0.0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask[b, i]:
                total = total + _bucket_reference(s[b:b + 1, i:i + 1], t[b:b + 1, i:i + 1], k, tau, 0.0)[0]
    return total


def test_cross_entropy_sum_equals_torch(logits):
    s, _ = logits
    labels = torch.randint(0, 11, (2, 5))
    got, n = cross_entropy_sum(s, labels, chunk=2)
    torch.testing.assert_close(got, F.cross_entropy(s.reshape(-1, 11), labels.reshape(-1), reduction="sum"))
    assert n == 10


def test_registry_and_errors(logits):
    s, t = logits
    assert {"forward_kl", "reverse_kl", "jsd"} <= set(LOSSES.names())
    torch.testing.assert_close(LOSSES.get("forward_kl")(s, t)[0], distill_loss(s, t, beta=0.0)[0])
    with pytest.raises(ValueError, match="transplant the student first"):
        distill_loss(s, torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="beta"):
        distill_loss(s, t, beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(s, t, temperature=0)


def test_gradients_flow_and_are_finite(logits):
    s, t = logits
    s = s.clone().requires_grad_(True)
    loss, n = distill_loss(s, t, beta=0.5)
    (loss / n).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_uld_is_the_sorted_l1_of_paired_positions():
    import numpy as np

    from xtok.losses.kd import uld_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 4, 11, generator=g)
    s_mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    t_mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    got, n = uld_loss(s, t, s_mask, t_mask, chunk=2)
    ref, pairs = 0.0, 0
    for b in range(2):  # independent reference in numpy: pair counted positions in order
        sp = [i for i in range(5) if s_mask[b, i]]
        tp = [i for i in range(4) if t_mask[b, i]]
        for i, j in zip(sp, tp):
            a = np.sort(np.exp(s[b, i].numpy()) / np.exp(s[b, i].numpy()).sum())[::-1]
            c = np.sort(np.exp(t[b, j].numpy()) / np.exp(t[b, j].numpy()).sum())[::-1]
            a = np.concatenate([a, np.zeros(11 - 7)])
            ref += np.abs(a - c).sum()
            pairs += 1
    assert int(n) == pairs == 5
    assert got.item() == pytest.approx(ref, rel=1e-5)
    same, _ = uld_loss(t, t[:, :, torch.randperm(11, generator=g)], t_mask, t_mask)  # a relabelled vocabulary costs 0
    assert same.item() == pytest.approx(0.0, abs=1e-6)
