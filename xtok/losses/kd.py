"""Token-level distillation losses, written once and tested against the math.

Convention (as in GKD and TRL): P = teacher, Q = student, per token over the vocabulary.
- forward KL   = KL(P || Q)   (mode-covering; β = 0)
- reverse KL   = KL(Q || P)   (mode-seeking;  β = 1)
- generalized JSD(β), 0 < β < 1: with M = β·P + (1-β)·Q,
  JSD_β = β·KL(P || M) + (1-β)·KL(Q || M); β = 0 and β = 1 are defined as the two KLs above.
Temperature τ divides both logits and multiplies the loss by τ² (Hinton). Positions where
``mask`` is False (prompt, padding) contribute nothing. Logits are processed in chunks of
positions, so a (B, T, V) float32 copy of the logits never exists.

Each function returns ``(summed loss, number of counted positions)``; the caller divides by the
total count over all accumulation steps (dividing per micro-batch is wrong when they differ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xtok.registry import LOSSES


def _divergence(s_logp: torch.Tensor, t_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-position divergence over the last dim of float32 log-probabilities (..., V) -> (...)."""
    if beta == 0.0:
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    if beta == 1.0:
        return (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    m = torch.logsumexp(torch.stack([t_logp + math.log(beta), s_logp + math.log(1 - beta)]), dim=0)
    kl_t = (t_logp.exp() * (t_logp - m)).sum(-1)
    kl_s = (s_logp.exp() * (s_logp - m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def _full_mask(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    b, t = logits.shape[:2]
    return torch.ones((b, t), dtype=torch.bool, device=logits.device) if mask is None else mask.bool()


def _rows(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The counted rows (N, ...) of a chunk ``x`` (B, c, ...): a chunk counted throughout is reshaped, not indexed (no
    gather, and no scatter in backward)."""
    return x.flatten(0, 1) if bool(m.all()) else x[m]


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 log-probabilities of ``logits`` (..., V) at ``temperature`` (no division at 1)."""
    logits = logits.float()
    return torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def _counted_chunks(mask: torch.Tensor, chunk: int, *tensors: torch.Tensor):
    """Yield ((B, c) mask, the (B, c, ...) chunk of each of ``tensors``) for every chunk of positions with a counted
    one. The chunks come from ``split``, whose backward writes the gradient of the whole once (slicing would make a
    (B, T, V) gradient per chunk)."""
    parts = [t.split(chunk, dim=1) for t in tensors]
    for i, m in enumerate(mask.split(chunk, dim=1)):
        if m.any():
            yield m, *(p[i] for p in parts)


def _check(student: torch.Tensor, teacher_shape: tuple, mask: torch.Tensor | None, beta: float, temperature: float) -> None:
    if student.shape[:-1] != teacher_shape[:-1]:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher {teacher_shape} differ in (B, T)")
    if mask is not None and mask.shape != student.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, T) = {tuple(student.shape[:-1])}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} must lie in [0, 1] (0 = forward KL, 1 = reverse KL)")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive")


def distill_loss(
    student_logits: torch.Tensor,  # (B, T, V)
    teacher_logits: torch.Tensor,  # (B, T, V)
    mask: torch.Tensor | None = None,  # (B, T) bool: positions that count
    *,
    beta: float = 0.0,
    temperature: float = 1.0,
    chunk: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized JSD(β) between full teacher and student distributions; returns (sum, count)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "teacher and student must share one vocabulary: transplant the student first (xtok transplant)"
        )
    _check(student_logits, tuple(teacher_logits.shape), mask, beta, temperature)
    mask = _full_mask(student_logits, mask)
    total = student_logits.new_zeros((), dtype=torch.float32)
    for m, s_part, t_part in _counted_chunks(mask, chunk, student_logits, teacher_logits):
        s_logp = _log_softmax(_rows(s_part, m), temperature)  # (N, V)
        t_logp = _log_softmax(_rows(t_part, m), temperature)  # (N, V)
        total = total + _divergence(s_logp, t_logp, beta).sum()
    return total * temperature**2, mask.sum()


def topk_distill_loss(
    student_logits: torch.Tensor,  # (B, T, V)
    teacher: TeacherTopK,  # (B, T, K) top-K log-probs and ids, (B, T) tail log-mass, at teacher.temperature
    mask: torch.Tensor | None = None,  # (B, T)
    *,
    beta: float = 0.0,
    temperature: float = 1.0,
    chunk: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The divergence over K+1 buckets: the teacher's top-K tokens and one tail bucket holding the rest.

    With K = V this equals ``distill_loss`` (there is no tail). The teacher's log-probs must have been taken at
    the loss's ``temperature`` (``teacher_topk_from_logits(logits, k, temperature)``): a temperature cannot be
    applied afterwards, since the tail bucket is a sum over tokens that each need their own tempering.
    The student's tail log-mass is a logsumexp over its log-probs outside the top K: exact, and differentiable
    however close the top K comes to holding all the mass.
    """
    _check_topk(student_logits, teacher, mask, beta, temperature)
    vocab, k = student_logits.shape[-1], teacher.ids.shape[-1]
    mask = _full_mask(student_logits, mask)
    total = student_logits.new_zeros((), dtype=torch.float32)
    for m, s_part, t_lp, t_ids, t_tail in _counted_chunks(mask, chunk, student_logits, teacher.logprobs, teacher.ids,
                                                          teacher.tail):
        s_logp = _log_softmax(_rows(s_part, m), temperature)  # (N, V)
        ids = _rows(t_ids, m).long()  # (N, K)
        s_b, t_b = s_logp.gather(-1, ids), _rows(t_lp, m).float()  # (N, K)
        if k < vocab:  # the tail bucket: everything outside the teacher's top K
            s_tail = _tail_logmass(s_logp, ids)  # (N,)
            t_tail = _rows(t_tail, m).float().clamp_min(_LOG_TINY)  # (N,); 0 mass -> the least float32 mass
            s_b, t_b = torch.cat([s_b, s_tail[:, None]], -1), torch.cat([t_b, t_tail[:, None]], -1)  # (N, K+1)
        total = total + _divergence(s_b, t_b, beta).sum()
    return total * temperature**2, mask.sum()


_LOG_TINY = math.log(torch.finfo(torch.float32).tiny)


def _check_topk(student_logits: torch.Tensor, teacher: TeacherTopK, mask: torch.Tensor | None, beta: float,
                temperature: float) -> None:
    _check(student_logits, tuple(teacher.logprobs.shape), mask, beta, temperature)
    if not math.isclose(teacher.temperature, temperature, rel_tol=1e-6):
        raise ValueError(f"the teacher's top-k log-probs were taken at temperature {teacher.temperature} but the loss "
                         f"runs at temperature {temperature}; rebuild the teacher cache at temperature {temperature} "
                         f"(xtok distill does so when the config's temperature changes) or set temperature: "
                         f"{teacher.temperature}")
    if teacher.ids.shape[-1] > student_logits.shape[-1]:
        raise ValueError(f"the teacher's top-{teacher.ids.shape[-1]} exceeds the student's vocabulary of "
                         f"{student_logits.shape[-1]}; transplant the student to the teacher's tokenizer first "
                         "(xtok transplant)")


TAIL_EXACT = 1e-12  # a student tail mass below this is recomputed from log-probabilities (float32 q_j / q_tail loses
# relative precision as q_tail nears float32's smallest normal numbers, 1.2e-38: entries below them are denormal)


def topk_forward_kl_grad(student_logits: torch.Tensor, teacher: TeacherTopK, mask: torch.Tensor | None = None, *,
                         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_distill_loss(..., beta=0)`` of one chunk of logits (B, c, V), summed over its counted positions, and its
    gradient with respect to the logits (B, c, V; float32, or float64 for float64 logits), in closed form instead of by
    autograd.

    With q = softmax(z / τ), p the teacher's K+1 bucket probabilities (its top K and the tail), S = sum of p, and
    r_j = q_j / q_tail a token's share of the student's mass outside the K, the loss τ² Σ_b p_b (log p_b − log q_b)
    has the gradient τ (q_j S − p_j) for a top-K token j and τ (q_j S − p_tail r_j) for any other. Computed in a few
    passes over the (c, V) logits (exp, a sum, a scale, two scatters), against autograd's log-softmax, gather, tail
    logsumexp and their backward (each a pass or more, and a zero-filled (c, V) gradient per gather). A position whose
    mass outside the K is below ``TAIL_EXACT`` (its shares would lose precision in q_j / q_tail) is recomputed from
    its log-probabilities.
    """
    _check_topk(student_logits, teacher, mask, 0.0, temperature)
    b, c, vocab = student_logits.shape
    k = teacher.ids.shape[-1]
    counted = _full_mask(student_logits, mask).reshape(-1)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    z = student_logits.reshape(-1, vocab).to(dtype, copy=True)  # (N, V), becomes q, then the gradient
    if temperature != 1.0:
        z.div_(temperature)
    ids = teacher.ids.reshape(-1, k).long()
    t_b = teacher.logprobs.reshape(-1, k).to(dtype)  # the teacher's bucket log-probs: its top K (and the tail)
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (N, 1)
    s_b = z.gather(-1, ids) - lse  # (N, K) the student's log-probs there
    q = z.sub_(lse).exp_()
    q_top = q.gather(-1, ids)
    exact = torch.zeros(0, dtype=torch.long)
    if k < vocab:
        q.scatter_(-1, ids, 0.0)
        q_tail = q.sum(-1)  # (N,) the student's mass outside the top K, summed without cancellation
        exact = torch.nonzero(q_tail < TAIL_EXACT).flatten()
        s_tail = q_tail.clamp_min(TAIL_EXACT).log()
        t_b = torch.cat([t_b, teacher.tail.reshape(-1, 1).to(dtype).clamp_min(_LOG_TINY)], -1)
        mass = t_b.exp()
        total_p = mass.sum(-1, keepdim=True)  # S
        q.mul_(total_p - mass[:, -1:] / q_tail.clamp_min(TAIL_EXACT)[:, None])
    else:
        mass = t_b.exp()
        total_p = mass.sum(-1, keepdim=True)
    q.scatter_(-1, ids, q_top * total_p - mass[:, :k])
    if len(exact):  # from the log-probabilities: the tail's log-mass and each token's share of it
        logp = torch.log_softmax(student_logits.reshape(-1, vocab)[exact].to(dtype) / temperature, dim=-1)
        rest = logp.scatter(-1, ids[exact], float("-inf"))
        s_tail[exact] = torch.logsumexp(rest, dim=-1)
        share = (rest - s_tail[exact, None]).exp()  # 0 at the top K
        grad = logp.exp() * total_p[exact] - mass[exact, -1:] * share
        q[exact] = grad.scatter(-1, ids[exact], q_top[exact] * total_p[exact] - mass[exact, :k])
    if k < vocab:
        s_b = torch.cat([s_b, s_tail[:, None]], -1)
    loss = (mass * (t_b - s_b)).sum(-1)[counted].sum() * temperature**2
    if temperature != 1.0:
        q.mul_(temperature)
    if not bool(counted.all()):
        q[~counted] = 0.0
    return loss, q.reshape(b, c, vocab)


def _tail_logmass(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability outside ``ids``: (N, V) log-probs, (N, K) ids -> (N,), a logsumexp of the rest."""
    return torch.logsumexp(logp.scatter(-1, ids, float("-inf")), dim=-1)


def teacher_topk_from_logits(logits: torch.Tensor, k: int, temperature: float = 1.0) -> TeacherTopK:
    """A teacher's top-``k`` view of its logits (..., V) at ``temperature``: float32 log-probs, int32 ids, tail log-mass."""
    vocab = logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"top_k={k} must lie in [1, {vocab}] (the teacher's vocabulary)")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive")
    logp = _log_softmax(logits, temperature)  # (..., V)
    top = logp.topk(k, dim=-1)
    tail = _tail_logmass(logp, top.indices) if k < vocab else logp.new_full(logp.shape[:-1], float("-inf"))
    return TeacherTopK(top.values, top.indices.int(), tail, float(temperature))


def cross_entropy_sum(student_logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
                      chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy of ``labels`` (B, T) at the counted positions; returns (sum, count)."""
    mask = _full_mask(student_logits, mask)
    total = student_logits.new_zeros((), dtype=torch.float32)
    for m, s_part, label in _counted_chunks(mask, chunk, student_logits, labels):
        total = total + torch.nn.functional.cross_entropy(_rows(s_part, m).float(), _rows(label, m), reduction="sum")
    return total, mask.sum()


@dataclass(frozen=True)
class TeacherOtherVocab:
    """A teacher that kept its own tokenizer: its logits (B, Tt, Vt) over its own tokenization of the same text, and
    the (B, Tt) mask of its counted positions (for ``uld``)."""

    logits: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class TeacherTopK:
    """A teacher's top-K next tokens at ``temperature``: log_softmax(logits / temperature) over the full vocabulary
    at those ids, the ids, both (B, T, K), and ``tail`` (B, T), the log of the probability of all other tokens
    (a logsumexp over them, -inf when K = V). Built by ``teacher_topk_from_logits``."""

    logprobs: torch.Tensor
    ids: torch.Tensor
    tail: torch.Tensor
    temperature: float = 1.0

    def __post_init__(self):
        if self.logprobs.shape != self.ids.shape or self.tail.shape != self.logprobs.shape[:-1]:
            raise ValueError(f"top-k log-probs {tuple(self.logprobs.shape)}, ids {tuple(self.ids.shape)} and tail "
                             f"{tuple(self.tail.shape)} must be (B, T, K), (B, T, K) and (B, T)")

    def positions(self, pos: slice) -> TeacherTopK:
        """The view of positions ``pos`` (a slice of T)."""
        return TeacherTopK(self.logprobs[:, pos], self.ids[:, pos], self.tail[:, pos], self.temperature)


def divergence_loss(student_logits, teacher, mask=None, *, beta: float, temperature: float = 1.0, chunk: int = 128):
    """``distill_loss`` for full teacher logits (B, T, V), ``topk_distill_loss`` for a ``TeacherTopK``."""
    if isinstance(teacher, TeacherTopK):
        return topk_distill_loss(student_logits, teacher, mask, beta=beta, temperature=temperature, chunk=chunk)
    return distill_loss(student_logits, teacher, mask, beta=beta, temperature=temperature, chunk=chunk)


# The registry's interface: fn(student_logits (B, T, V), teacher (B, T, V) logits | TeacherTopK | None, mask (B, T),
# *, labels (B, T), beta, temperature, chunk) -> (summed loss, counted positions).
@LOSSES.register("forward_kl", help="KL(teacher || student), mode-covering", needs_teacher=True)
def forward_kl(student_logits, teacher, mask=None, *, labels=None, beta=None, **kw):
    return divergence_loss(student_logits, teacher, mask, beta=0.0, **kw)


@LOSSES.register("reverse_kl", help="KL(student || teacher), mode-seeking", needs_teacher=True)
def reverse_kl(student_logits, teacher, mask=None, *, labels=None, beta=None, **kw):
    return divergence_loss(student_logits, teacher, mask, beta=1.0, **kw)


@LOSSES.register("jsd", help="generalized JSD(beta); beta=0/1 are forward/reverse KL", needs_teacher=True)
def jsd(student_logits, teacher, mask=None, *, labels=None, beta: float = 0.5, **kw):
    return divergence_loss(student_logits, teacher, mask, beta=beta, **kw)


@LOSSES.register("ce", help="plain next-token cross-entropy on the text (sentence-level baseline, no teacher)",
                 needs_teacher=False)
def ce(student_logits, teacher=None, mask=None, *, labels, beta=None, temperature: float = 1.0, chunk: int = 128):
    return cross_entropy_sum(student_logits, labels, mask, chunk=chunk)


def uld_loss(
    student_logits: torch.Tensor,  # (B, Ts, Vs)
    teacher_logits: torch.Tensor,  # (B, Tt, Vt): another tokenizer, another vocabulary
    student_mask: torch.Tensor,  # (B, Ts) bool
    teacher_mask: torch.Tensor,  # (B, Tt) bool
    *,
    temperature: float = 1.0,
    chunk: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Universal Logit Distillation (Boizard et al. 2024) for a student that kept its own tokenizer.

    Per sequence, the n-th counted student position is paired with the n-th counted teacher position
    (up to the shorter of the two); the loss at a pair is the L1 distance between the two probability
    vectors sorted in decreasing order, the shorter vocabulary padded with zeros (a Wasserstein-1
    distance between the two distributions with the token identities forgotten). Returns (sum, pairs).
    """
    if student_mask.shape != student_logits.shape[:2] or teacher_mask.shape != teacher_logits.shape[:2]:
        raise ValueError(f"masks {tuple(student_mask.shape)}, {tuple(teacher_mask.shape)} must match the logits' (B, T): "
                         f"{tuple(student_logits.shape[:2])}, {tuple(teacher_logits.shape[:2])}")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive")
    s_rows, t_rows = [], []
    for b in range(student_logits.shape[0]):
        s_pos, t_pos = student_mask[b].nonzero().flatten(), teacher_mask[b].nonzero().flatten()
        n = min(len(s_pos), len(t_pos))
        s_rows.append(student_logits[b, s_pos[:n]])
        t_rows.append(teacher_logits[b, t_pos[:n]])
    s_all, t_all = torch.cat(s_rows), torch.cat(t_rows)  # (N, Vs), (N, Vt)
    width = max(s_all.shape[-1], t_all.shape[-1])
    total = student_logits.new_zeros((), dtype=torch.float32)
    for s in range(0, len(s_all), chunk):
        ps = torch.softmax(s_all[s : s + chunk].float() / temperature, -1).sort(-1, descending=True).values
        pt = torch.softmax(t_all[s : s + chunk].float() / temperature, -1).sort(-1, descending=True).values
        ps = torch.nn.functional.pad(ps, (0, width - ps.shape[-1]))
        pt = torch.nn.functional.pad(pt, (0, width - pt.shape[-1]))
        total = total + (ps - pt).abs().sum()
    return total, torch.tensor(len(s_all))


@LOSSES.register("uld", help="Universal Logit Distillation: sorted-probability L1, for a student with its own tokenizer",
                 needs_teacher=True, same_vocab=False)
def uld(student_logits, teacher, mask=None, *, labels=None, beta=None, temperature: float = 1.0, chunk: int = 128):
    if not isinstance(teacher, TeacherOtherVocab):
        raise ValueError("loss 'uld' compares two tokenizations of one text: give the teacher's logits and mask "
                         "(TeacherOtherVocab); for a student that shares the teacher's vocabulary use forward_kl")
    return uld_loss(student_logits, teacher.logits, _full_mask(student_logits, mask), teacher.mask,
                    temperature=temperature, chunk=chunk)
