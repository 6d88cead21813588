"""Output statistics of the student and the teacher on a little text, for the head methods that need them.

Two facts, measured once per transplant:

- the student's **constant direction** ``v``: its final hidden states h (after the last norm) have
  ``h · v ≈ 1`` at every position (least squares over the calibration positions; on SmolLM2-135M the
  residual spread is about 0.02). Adding ``b · v`` to a head row then adds a logit bias of about
  ``b``, in a head that has no bias vector.
- the teacher's **prior**: its next-token distribution averaged over the calibration positions, or,
  for a teacher that is only a tokenizer, its tokens' frequencies in an alignment's corpus.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Calibration:
    direction: torch.Tensor  # (d_s,) v with h · v ≈ 1 for the student's final hidden states h
    direction_spread: float  # std of h · v over the calibration positions (0: an exact constant)
    teacher_prior: torch.Tensor  # (V,) float64: the teacher's mean next-token distribution, or token frequencies
    tokens: dict[str, int]  # calibration positions per side
    seconds: float

    def report(self) -> dict:
        return {"direction_spread": round(self.direction_spread, 4), "tokens": self.tokens, "seconds": round(self.seconds, 1)}


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


def _final_states(model, tok, texts: list[str], tokens: int, max_len: int, logits: bool):
    """Yield (final hidden states (T, d), logits (T, V) or None) per text until ``tokens`` positions are seen."""
    seen = 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt").input_ids[:, : min(max_len, tokens - seen)]
            if ids.shape[1] < 2:
                continue
            out = model(input_ids=ids, output_hidden_states=True, **({} if logits else {"logits_to_keep": 1}))
            yield out.hidden_states[-1][0].float(), out.logits[0].float() if logits else None
            seen += ids.shape[1]
            if seen >= tokens:
                return


def calibrate(student_model, student_tok, texts: list[str], tokens: int = 2048, max_len: int = 512, *,
              teacher_model=None, teacher_tok=None, counts: torch.Tensor | None = None) -> Calibration:
    """The student's constant direction, and the prior: the teacher's mean next-token distribution over ``texts``
    when a teacher model is given, else token frequencies ``counts`` (e.g. an alignment's corpus counts of the
    teacher's tokens), add-half smoothed."""
    t0 = time.perf_counter()
    hidden = torch.cat([h for h, _ in _final_states(student_model, student_tok, texts, tokens, max_len, logits=False)])
    d = hidden.shape[1]
    if hidden.shape[0] < 2 * d:
        raise ValueError(
            f"calibration text gave the student only {hidden.shape[0]} positions; fitting its constant direction needs "
            f"at least {2 * d} (2 x hidden size {d}): give more text or a larger calibration_tokens"
        )
    v = torch.linalg.lstsq(hidden.double(), torch.ones(hidden.shape[0], 1, dtype=torch.float64)).solution[:, 0]
    spread = float((hidden.double() @ v).std())
    sizes = {"student": int(hidden.shape[0])}
    if teacher_model is not None:
        prior, n = None, 0
        for _, logits in _final_states(teacher_model, teacher_tok, texts, tokens, max_len, logits=True):
            p = torch.softmax(logits, dim=-1).double().sum(0)
            prior = p if prior is None else prior + p
            n += logits.shape[0]
        if prior is None:
            raise ValueError("calibration text is empty for the teacher's tokenizer; give a corpus with text in it")
        prior, sizes["teacher"] = prior / n, n
    elif counts is not None:
        prior = counts.double() + 0.5
        prior, sizes["corpus_tokens"] = prior / prior.sum(), int(counts.sum())
    else:
        raise ValueError("a prior needs the teacher model (its next-token distribution) or token counts (an alignment)")
    return Calibration(v.float(), spread, prior, sizes, time.perf_counter() - t0)
