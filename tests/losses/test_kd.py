import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xtok.losses.kd import cross_entropy_sum, distill_loss, topk_distill_loss
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


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_topk_with_full_vocab_equals_full_loss(logits, beta):
    s, t = logits
    t_lp = F.log_softmax(t, -1)
    vals, ids = t_lp.topk(11, dim=-1)
    full, _ = distill_loss(s, t, beta=beta)
    top, _ = topk_distill_loss(s, vals, ids, beta=beta)
    torch.testing.assert_close(top, full, rtol=1e-4, atol=1e-5)


def test_topk_tail_bucket_matches_a_dense_reference(logits):
    s, t = logits
    t_lp = F.log_softmax(t.double(), -1)
    vals, ids = t_lp.topk(3, dim=-1)
    got, _ = topk_distill_loss(s, vals.float(), ids, beta=0.0)
    s_lp = F.log_softmax(s.double(), -1)
    ref = 0.0
    for i in range(2):
        for j in range(5):
            p = vals[i, j].exp().tolist()
            q = s_lp[i, j, ids[i, j]].exp().tolist()
            p.append(1 - sum(p))
            q.append(1 - sum(q))
            ref += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert got.item() == pytest.approx(ref, rel=1e-4)


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
