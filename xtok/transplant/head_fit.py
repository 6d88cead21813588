"""Fit a transplant's output head on its own final hidden states: a convex problem, no step through the model.

A static head row cannot know what the context says about a new token's later pieces: SmolLM2 ← Qwen2.5 pays
about 16 bits for ``_string`` where the student pays 1 for ``_`` + ``string`` (the subword-prior share of ``_``'s
family is a constant). The transplanted model's body already carries that context in its final hidden states h;
only the head rows are wrong. So: run the transplanted body once over calibration text (forward only, the head's
logits not computed), cache h and the next token y at each position, and fit the head rows W_R of the tokens that
occur as targets there by full-batch L-BFGS on

    mean_i [ logsumexp_j (h_i · w_j) − h_i · w_{y_i} ] + l2 · ||W_R − W_R⁰||²

with the other rows fixed (their logsumexp per position is computed once). It is multinomial logistic regression
on fixed features: convex in W_R, so the optimum does not depend on the start; ``l2`` pulls rows seen rarely back
to their transplanted rows (W⁰), and rows never seen stay as they are. A forward pass without a backward is about
17× cheaper here than a training step, which is why this pays where a heal does not at CPU budgets.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class HeadFitReport:
    positions: int
    rows_fitted: int
    l2: float
    iterations: int
    ce_before: float  # mean next-token cross-entropy (nats) on the calibration positions
    ce_after: float
    seconds: float

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def check_fittable(model) -> None:
    """A head this fit can model: untied, no bias, no logit soft-capping."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("the model has no output head to fit")
    if head.weight is model.get_input_embeddings().weight:
        raise ValueError("the model's head is tied to its input embeddings, so fitting it would move the inputs too; "
                         "transplant with a head method other than the input method (the default subword-prior unties)")
    if getattr(head, "bias", None) is not None:
        raise ValueError("the model's head has a bias vector, which the head fit does not model; leave head_fit off")
    if getattr(model.config.get_text_config(), "final_logit_softcapping", None):
        raise ValueError("the model soft-caps its logits (final_logit_softcapping), which the head fit does not model; "
                         "leave head_fit off")


def final_states(model, tok, texts: list[str], tokens: int, max_len: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden states (N, d) float32, next token ids (N,)) over ``texts`` until ``tokens`` positions."""
    hs, ys, seen = [], [], 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt").input_ids[:, :max_len]
            if ids.shape[1] < 2:
                continue
            out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
            hs.append(out.hidden_states[-1][0, :-1].float())
            ys.append(ids[0, 1:])
            seen += ids.shape[1] - 1
            if seen >= tokens:
                break
    if not hs:
        raise ValueError("the head-fit text gave no position (every document is shorter than two tokens); give more text")
    return torch.cat(hs)[:tokens], torch.cat(ys)[:tokens]


def _row_lse(h: torch.Tensor, w: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([torch.logsumexp(h[i:i + chunk] @ w.T, dim=1) for i in range(0, len(h), chunk)])


def fit_rows(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, *, l2: float, iterations: int,
             chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(fitted rows, their ids, ce before, ce after): the rows of ``weight`` (V, d) that ``targets`` name, fitted as the
    module says; ``weight`` is not modified."""
    if l2 <= 0:
        raise ValueError(f"head_fit l2={l2} must be > 0: it keeps the fit convex with a unique optimum and holds rows "
                         "seen a few times near their transplanted rows; 0.1 was chosen on validation")
    if iterations < 1:
        raise ValueError(f"head_fit iterations={iterations} must be at least 1")
    w0 = weight.detach().float()
    rows = torch.unique(targets)
    fixed = torch.ones(w0.shape[0], dtype=torch.bool)
    fixed[rows] = False
    lse_fixed = _row_lse(hidden, w0[fixed], chunk) if bool(fixed.any()) else torch.full((len(hidden),), -float("inf"))
    col = torch.full((w0.shape[0],), -1, dtype=torch.long)
    col[rows] = torch.arange(len(rows))
    y = col[targets]
    base = w0[rows]
    delta = torch.zeros_like(base, requires_grad=True)

    def objective(grad: bool) -> float:
        total = 0.0
        for i in range(0, len(hidden), chunk):
            with torch.set_grad_enabled(grad):
                z = hidden[i:i + chunk] @ (base + delta).T
                lse = torch.logaddexp(torch.logsumexp(z, dim=1), lse_fixed[i:i + chunk])
                part = (lse - z.gather(1, y[i:i + chunk, None])[:, 0]).sum() / len(hidden)
            if grad:
                part.backward()
            total += float(part.detach())
        return total

    before = objective(False)
    opt = torch.optim.LBFGS([delta], lr=1, max_iter=iterations, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        ce = objective(True)
        with torch.enable_grad():
            reg = l2 * (delta ** 2).sum()
            reg.backward()
        return torch.tensor(ce + float(reg.detach()))

    opt.step(closure)
    return base + delta.detach(), rows, before, objective(False)


def fit_head(model, tok, texts: list[str], *, tokens: int, l2: float = 0.1, iterations: int = 30,
             max_len: int = 1024) -> dict:
    """Fit ``model``'s head rows in place on ``tokens`` positions of ``texts`` (see the module); returns a report."""
    check_fittable(model)
    t0 = time.perf_counter()
    hidden, targets = final_states(model, tok, texts, tokens, max_len)
    head = model.get_output_embeddings()
    fitted, rows, before, after = fit_rows(hidden, targets, head.weight, l2=l2, iterations=iterations)
    with torch.no_grad():
        head.weight[rows] = fitted.to(head.weight.dtype)
    report = HeadFitReport(len(targets), len(rows), l2, iterations, before, after, time.perf_counter() - t0)
    log.info("head fit: %s", report)
    return report.to_dict()
