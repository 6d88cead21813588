"""Approximate Likelihood Matching (Minixhofer et al. 2025): match a teacher that reads the same text in its own
tokens, chunk by chunk.

A chunk (``xtok.vocab.chunks``) is a span of bytes that both tokenizations start and end a token at. Its
log-probability on each side is the sum of that side's next-token log-probabilities over its tokens in the
chunk: ``s_c`` for the student, ``t_c`` for the teacher. The loss of a chunk is the binary KL divergence
between the two chunk probabilities, at temperature τ on the log-probabilities (p = exp(log p / τ)):

    KL(p_t || p_s) = p_t (log p_t − log p_s) + (1 − p_t) (log(1 − p_t) − log(1 − p_s))

zero where the two agree. A chunk counts only where every token of it on both sides is predicted (not a
sequence's first token) and both tokenizations spell it (chunk id ≥ 0). Returns (summed loss, chunks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xtok.registry import LOSSES

_MAX_LOGP = -1e-6  # a chunk probability of exactly 1 has no defined log(1 − p); keep it a hair below


@dataclass(frozen=True)
class TeacherChunks:
    """The teacher's side of ALM: its next-token log-probabilities of its own tokens (B, L) (position k: log p of
    token k given tokens < k; position 0 unused), their chunk ids (B, L), and the student's chunk ids (B, T) for
    the student's tokens (position 0 included), -1 outside every chunk."""

    logprobs: torch.Tensor
    chunk: torch.Tensor
    student_chunk: torch.Tensor


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, accurate at both ends (Mächler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def binary_kl(t_logp: torch.Tensor, s_logp: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bernoulli(exp t) || Bernoulli(exp s)) of log-probabilities < 0."""
    t_logp, s_logp = t_logp.clamp_max(_MAX_LOGP), s_logp.clamp_max(_MAX_LOGP)
    return t_logp.exp() * (t_logp - s_logp) + (-torch.expm1(t_logp)) * (log1mexp(t_logp) - log1mexp(s_logp))


def chunk_sums(logprobs: torch.Tensor, chunk: torch.Tensor, n_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chunk sums of (B, L) log-probs at positions ≥ 1, and whether each chunk is whole: (B, C), (B, C).

    A chunk is whole when it has a token and none of its tokens sits at position 0 (that one is not predicted)."""
    b = chunk.shape[0]
    idx = chunk.clamp_min(0)
    inside = chunk >= 0
    sums = logprobs.new_zeros((b, n_chunks)).scatter_add(1, idx[:, 1:], torch.where(inside[:, 1:], logprobs[:, 1:], 0))
    tokens = torch.zeros((b, n_chunks), dtype=torch.long, device=chunk.device).scatter_add(1, idx, inside.long())
    first = torch.zeros((b, n_chunks), dtype=torch.bool, device=chunk.device)
    first[torch.arange(b), idx[:, 0]] = inside[:, 0]
    return sums, (tokens > 0) & ~first


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """(B, t) log-probability of ``targets`` (B, t) under ``logits`` (B, t, V), in float32, ``chunk`` positions at a
    time (no (B, t, V) float32 copy)."""
    parts = []
    for s in range(0, logits.shape[1], chunk):
        lg = logits[:, s : s + chunk].float()
        parts.append(lg.gather(-1, targets[:, s : s + chunk, None])[..., 0] - torch.logsumexp(lg, -1))
    return torch.cat(parts, 1)


def alm_loss(student_logits: torch.Tensor, targets: torch.Tensor, teacher: TeacherChunks, *,
             temperature: float = 1.0, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """ALM over the chunks of a batch. ``student_logits`` (B, T-1, V) predict ``targets`` (B, T-1) = the student's
    tokens 1..T-1; ``teacher`` holds both sides' chunk ids (see ``TeacherChunks``)."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive")
    b, t1 = targets.shape
    if teacher.student_chunk.shape != (b, t1 + 1) or teacher.logprobs.shape != teacher.chunk.shape:
        raise ValueError(f"student chunk ids {tuple(teacher.student_chunk.shape)} must be (B, T) = {(b, t1 + 1)} and the "
                         f"teacher's log-probs {tuple(teacher.logprobs.shape)} match its chunk ids {tuple(teacher.chunk.shape)}")
    n = max(int(max(teacher.student_chunk.max(), teacher.chunk.max())) + 1, 1)  # no chunk at all: a zero loss
    s_tok = token_logprobs(student_logits, targets, chunk)  # (B, T-1)
    s_tok = torch.cat([s_tok.new_zeros((b, 1)), s_tok], 1)  # position 0: not predicted
    s_sum, s_ok = chunk_sums(s_tok, teacher.student_chunk, n)
    t_sum, t_ok = chunk_sums(teacher.logprobs.float(), teacher.chunk, n)
    ok = s_ok & t_ok
    loss = binary_kl(t_sum[ok] / temperature, s_sum[ok] / temperature)
    return loss.sum(), ok.sum()


@LOSSES.register("alm", help="Approximate Likelihood Matching: binary KL of chunk likelihoods at shared byte "
                 "boundaries, for a teacher with its own tokenizer", needs_teacher=True, same_vocab=False, chunks=True)
def alm(student_logits, teacher, mask=None, *, labels, beta=None, temperature: float = 1.0, chunk: int = 128):
    if not isinstance(teacher, TeacherChunks):
        raise ValueError("loss 'alm' compares two tokenizations of one text chunk by chunk: give TeacherChunks "
                         "(the distill data builds them for a teacher with its own tokenizer)")
    return alm_loss(student_logits, labels, teacher, temperature=temperature, chunk=chunk)
