"""ALM against a dense float64 reference written with plain loops, and its identities."""

import math

import pytest
import torch

from xtok.losses.alm import TeacherChunks, alm_loss, binary_kl, log1mexp
from xtok.registry import LOSSES


def _reference(s_logits, s_ids, s_chunk, t_logits, t_ids, t_chunk, temperature):
    """Sum over whole chunks of KL(Bernoulli(p_t) || Bernoulli(p_s)), p = exp(chunk log-prob / temperature)."""
    total, count = 0.0, 0
    for b in range(s_ids.shape[0]):
        def side(logits, ids, chunk, b=b):
            sums, whole = {}, {}
            for j, c in enumerate(chunk[b].tolist()):
                if c < 0:
                    continue
                whole.setdefault(c, True)
                if j == 0:
                    whole[c] = False
                    continue
                row = [float(x) for x in logits[b, j - 1]]
                lse = math.log(sum(math.exp(x) for x in row))
                sums[c] = sums.get(c, 0.0) + row[int(ids[b, j])] - lse
            return sums, whole

        s_sum, s_whole = side(s_logits, s_ids, s_chunk)
        t_sum, t_whole = side(t_logits, t_ids, t_chunk)
        for c in set(s_whole) & set(t_whole):
            if not (s_whole[c] and t_whole[c]):
                continue
            pt, ps = math.exp(t_sum[c] / temperature), math.exp(s_sum[c] / temperature)
            total += pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
            count += 1
    return total, count


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_alm_equals_the_dense_reference(temperature):
    g = torch.Generator().manual_seed(0)
    b, t, v, lt, vt = 2, 7, 11, 6, 13
    s_logits = torch.randn(b, t, v, generator=g, dtype=torch.float64)
    t_logits = torch.randn(b, lt, vt, generator=g, dtype=torch.float64)
    s_ids = torch.randint(0, v, (b, t), generator=g)
    t_ids = torch.randint(0, vt, (b, lt), generator=g)
    # chunk ids per token: consecutive runs, -1 outside; chunk 0 holds position 0 on one side (not whole)
    s_chunk = torch.tensor([[0, 0, 1, 2, 2, 3, -1], [0, 1, 1, 1, 2, 3, 3]])
    t_chunk = torch.tensor([[0, 1, 2, 2, 3, -1], [-1, 0, 1, 2, 2, 3]])
    with torch.no_grad():
        t_lp = torch.log_softmax(t_logits[:, :-1], -1).gather(-1, t_ids[:, 1:, None])[..., 0]
    teacher = TeacherChunks(torch.cat([torch.zeros(b, 1, dtype=t_lp.dtype), t_lp], 1), t_chunk, s_chunk)
    loss, count = alm_loss(s_logits[:, :-1].float(), s_ids[:, 1:], teacher, temperature=temperature, chunk=3)
    want, want_count = _reference(s_logits.float().double(), s_ids, s_chunk, t_logits, t_ids, t_chunk, temperature)
    assert int(count) == want_count == 6  # chunks 1-3 of each row: chunk 0 holds a first (unpredicted) token
    # float32 log-softmax of O(1) logits: each chunk log-prob is off by ~V * 2^-24; the loss by as much per chunk
    torch.testing.assert_close(loss.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert LOSSES.get("alm")(s_logits[:, :-1].float(), teacher, labels=s_ids[:, 1:], temperature=temperature,
                             chunk=4)[0].item() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_alm_is_zero_when_the_chunk_likelihoods_agree_and_pulls_toward_the_teacher():
    g = torch.Generator().manual_seed(1)
    b, t, v = 1, 6, 5
    logits = torch.randn(b, t, v, generator=g, requires_grad=True)
    ids = torch.randint(0, v, (b, t), generator=g)
    chunk = torch.tensor([[0, 1, 1, 2, 3, 3]])
    lp = torch.log_softmax(logits[:, :-1].detach(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    same = TeacherChunks(torch.cat([torch.zeros(b, 1), lp], 1), chunk, chunk)  # the teacher is the student itself
    loss, count = alm_loss(logits[:, :-1], ids[:, 1:], same)
    assert int(count) == 3 and abs(loss.item()) < 1e-6
    surer = TeacherChunks(torch.cat([torch.zeros(b, 1), lp * 0.5], 1), chunk, chunk)  # the teacher is surer of each chunk
    loss, _ = alm_loss(logits[:, :-1], ids[:, 1:], surer)
    loss.backward()
    target_grad = logits.grad[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
    assert loss.item() > 0 and (target_grad <= 0).all() and (target_grad < 0).any()  # descent raises p(target)


def test_log1mexp_and_binary_kl_against_float64():
    x = torch.tensor([-1e-5, -0.1, -0.6931, -0.7, -5.0, -40.0], dtype=torch.float64)
    # float64 1 - exp(-40) rounds to 1: the reference is 0 there, the true value -4.2e-18 (hence the atol)
    torch.testing.assert_close(log1mexp(x.float()).double(), torch.log(1 - torch.exp(x)), rtol=1e-5, atol=1e-12)
    p, q = torch.tensor([-0.2, -3.0]), torch.tensor([-1.0, -0.01])
    want = [math.exp(a) * (a - b) + (1 - math.exp(a)) * math.log((1 - math.exp(a)) / (1 - math.exp(b)))
            for a, b in zip(p.tolist(), q.tolist())]
    torch.testing.assert_close(binary_kl(p, q), torch.tensor(want), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="TeacherChunks"):
        LOSSES.get("alm")(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), labels=torch.zeros(1, 2, dtype=torch.long))
