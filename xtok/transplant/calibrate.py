"""Output statistics of the student and the teacher on a little text, for the head methods that need them.

Two facts, measured once per transplant:

- the student's **constant direction** ``v``: its final hidden states h (after the last norm) have
  ``h · v ≈ 1`` at every position (least squares over the calibration positions; on SmolLM2-135M the
  residual spread is about 0.02). Adding ``b · v`` to a head row then adds a logit bias of about
  ``b``, in a head that has no bias vector.
- the teacher's **prior**: its next-token distribution averaged over the calibration positions, or,
  for a teacher that is only a tokenizer, its tokens' frequencies in an alignment's corpus.

and, where a head method asks for it (``context=True``), a third:

- the **context map** ``A``: the teacher's final hidden state predicted from the student's, ``t ≈ A h + b``, a ridge
  regression over the positions where both tokenizations of the calibration text end a token (both models have then
  read the same bytes and predict the same next bytes). ``A`` carries the teacher's view of the context into the
  student's space: ``(A h) · u`` is an estimate of the logit the teacher's head row ``u`` would get here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from xtok.utils.hardware import autocast_bf16


@dataclass
class ContextMap:
    """``t ≈ weight @ h + b``: the teacher's final hidden state estimated from the student's (ridge, closed form)."""

    weight: torch.Tensor  # (d_t, d_s)
    student_mean: torch.Tensor  # (d_s,) mean student state over the fitted positions: the term is centred there
    ridge: float  # the ridge chosen on held-out positions, relative to the mean eigenvalue of the Gram matrix
    r2: float  # held-out share of the teacher states' variance explained, at that ridge
    positions: int

    def report(self) -> dict:
        return {"positions": self.positions, "ridge": self.ridge, "held_out_r2": round(self.r2, 4)}


@dataclass
class Calibration:
    direction: torch.Tensor  # (d_s,) v with h · v ≈ 1 for the student's final hidden states h
    direction_spread: float  # std of h · v over the calibration positions (0: an exact constant)
    teacher_prior: torch.Tensor  # (V,) float64: the teacher's mean next-token distribution, or token frequencies
    tokens: dict[str, int]  # calibration positions per side
    seconds: float
    context: ContextMap | None = None  # fitted when a head method asks for it (subword-prior with head_context > 0)
    bf16: bool = False  # the models' forward passes ran under bf16 autocast

    def report(self) -> dict:
        out = {"direction_spread": round(self.direction_spread, 4), "tokens": self.tokens, "seconds": round(self.seconds, 1),
               "precision": "bf16" if self.bf16 else "float32"}
        return out if self.context is None else {**out, "context_map": self.context.report()}


def calibration_texts(spec: str, tokens: int) -> list[str]:
    """Documents of ``spec`` taken in turn from each domain, about ``tokens`` × 8 characters in all."""
    from xtok.corpus import domain_rounds, load_corpus

    ds = load_corpus(spec)
    out, chars = [], 0
    for rnd in domain_rounds(list(ds["text"]), list(ds["domain"])):
        if chars >= tokens * 8:
            break
        out.extend(rnd)
        chars += sum(map(len, rnd))
    return out


def _final_states(model, tok, texts: list[str], tokens: int, max_len: int, logits: bool, ends: bool = False):
    """Yield (text index, final hidden states (T, d), logits (T, V) or None, token ends or None) per text until
    ``tokens`` positions are seen, in float32. Token ends (``ends=True``) map each character offset where a token ends
    to the last position ending there (a character split over byte tokens ends once, at its last piece)."""
    seen = 0
    with torch.no_grad():
        for i, text in enumerate(texts):
            enc = tok(text, return_offsets_mapping=True) if ends else tok(text, return_tensors="pt")
            ids = torch.as_tensor(enc.input_ids).reshape(1, -1)[:, : min(max_len, tokens - seen)]
            if ids.shape[1] < 2:
                continue
            out = model(input_ids=ids, output_hidden_states=True, **({} if logits else {"logits_to_keep": 1}))
            where = None
            if ends:
                where = {int(e): pos for pos, (_, e) in enumerate(enc.offset_mapping[: ids.shape[1]]) if e > 0}
            yield i, out.hidden_states[-1][0].float(), out.logits[0].float() if logits else None, where
            seen += ids.shape[1]
            if seen >= tokens:
                return


def paired_states(student: list, teacher: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(student states (N, d_s), teacher states (N, d_t)) at the N positions where both tokenizations of a text end a
    token at the same character, from ``_final_states(..., ends=True)`` items of each model."""
    by_text = {i: (h, where) for i, h, _, where in student}
    hs, ht = [], []
    for i, h_t, _, where in teacher:
        if i in by_text:
            h_s, where_s = by_text[i]
            common = sorted(where_s.keys() & where.keys())
            hs.append(h_s[[where_s[e] for e in common]])
            ht.append(h_t[[where[e] for e in common]])
    if not hs:
        raise ValueError("the context map found no text that both models read; give more calibration text")
    return torch.cat(hs), torch.cat(ht)


RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # relative to the mean eigenvalue of the student states' Gram matrix


def fit_context_map(h: torch.Tensor, t: torch.Tensor, holdout: float = 0.2) -> ContextMap:
    """Ridge regression ``t ≈ A h + b`` (``h`` (N, d_s), ``t`` (N, d_t)), in float64 and closed form: the ridge is
    chosen on the last ``holdout`` of the positions (held-out R², every output dimension pooled), then refitted on all."""
    n, d = h.shape
    if n < 2 * d:
        raise ValueError(f"the context map got {n} aligned positions; it needs at least {2 * d} (2 x student hidden size "
                         f"{d}): give more text or a larger calibration_tokens")
    h, t = h.double(), t.double()

    def solve(hs: torch.Tensor, ts: torch.Tensor, ridge: float):
        mh, mt = hs.mean(0), ts.mean(0)
        gram = (hs - mh).T @ (hs - mh)
        lam = ridge * float(gram.diagonal().mean())
        a = torch.linalg.solve(gram + lam * torch.eye(d, dtype=gram.dtype), (hs - mh).T @ (ts - mt)).T  # (d_t, d_s)
        return a, mh, mt

    cut = int(n * (1 - holdout))
    scores = {}
    for ridge in RIDGES:
        a, mh, mt = solve(h[:cut], t[:cut], ridge)
        resid = t[cut:] - (mt + (h[cut:] - mh) @ a.T)
        scores[ridge] = 1 - float(resid.pow(2).sum() / (t[cut:] - t[cut:].mean(0)).pow(2).sum())
    best = max(scores, key=scores.get)
    a, mh, _ = solve(h, t, best)
    return ContextMap(a.float(), mh.float(), best, scores[best], n)


def calibrate(student_model, student_tok, texts: list[str], tokens: int = 2048, max_len: int = 512, *,
              teacher_model=None, teacher_tok=None, counts: torch.Tensor | None = None, context: bool = False,
              bf16: bool = False) -> Calibration:
    """The student's constant direction, and the prior: the teacher's mean next-token distribution over ``texts``
    when a teacher model is given, else token frequencies ``counts`` (e.g. an alignment's corpus counts of the
    teacher's tokens), add-half smoothed. ``context`` (needs the teacher model) also fits the context map on the
    positions where both tokenizations of a text end a token. ``bf16``: the forward passes run under bf16 autocast
    (every statistic is still fitted in float32/float64)."""
    if context and teacher_model is None:
        raise ValueError("the context map needs the teacher model (its hidden states); pass the teacher, or turn "
                         "head_context off")
    t0 = time.perf_counter()
    with autocast_bf16(student_model, bf16):
        student = list(_final_states(student_model, student_tok, texts, tokens, max_len, logits=False, ends=context))
    hidden = torch.cat([h for _, h, _, _ in student])
    d = hidden.shape[1]
    if hidden.shape[0] < 2 * d:
        raise ValueError(
            f"calibration text gave the student only {hidden.shape[0]} positions; fitting its constant direction needs "
            f"at least {2 * d} (2 x hidden size {d}): give more text or a larger calibration_tokens"
        )
    v = torch.linalg.lstsq(hidden.double(), torch.ones(hidden.shape[0], 1, dtype=torch.float64)).solution[:, 0]
    spread = float((hidden.double() @ v).std())
    sizes = {"student": int(hidden.shape[0])}
    context_map = None
    if teacher_model is not None:
        prior, n = None, 0
        teacher = []
        with autocast_bf16(teacher_model, bf16):
            for i, h_t, logits, where in _final_states(teacher_model, teacher_tok, texts, tokens, max_len, logits=True,
                                                       ends=context):
                p = torch.softmax(logits, dim=-1).sum(0, dtype=torch.float64)
                prior = p if prior is None else prior + p
                n += logits.shape[0]
                if context:
                    teacher.append((i, h_t, None, where))
        if prior is None:
            raise ValueError("calibration text is empty for the teacher's tokenizer; give a corpus with text in it")
        prior, sizes["teacher"] = prior / n, n
        if context:
            context_map = fit_context_map(*paired_states(student, teacher))
    elif counts is not None:
        prior = counts.double() + 0.5
        prior, sizes["corpus_tokens"] = prior / prior.sum(), int(counts.sum())
    else:
        raise ValueError("a prior needs the teacher model (its next-token distribution) or token counts (an alignment)")
    return Calibration(v.float(), spread, prior, sizes, time.perf_counter() - t0, context_map, bf16)
