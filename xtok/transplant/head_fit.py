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

Hard targets say nothing about the tokens not chosen. With a teacher that shares the transplant's tokenizer (the
tokenizer's donor), ``teacher_weight`` = α mixes in the teacher's next-token distribution at the same positions: the
target becomes ``(1 − α)·onehot(y_i) + α·q_i``, q_i the teacher's softmax renormalized on its ``top_k`` tokens, and
every row in those top-k is fitted too. The loss is then the cross-entropy against that mixed target, still convex in
W_R (a linear term in the logits changes nothing in the curvature).
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
    teacher_weight: float = 0.0  # the teacher's share of the targets
    top_k: int = 0  # the teacher's tokens per position in the targets (0: none)

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


def token_windows(tok, texts: list[str], tokens: int, max_len: int = 1024) -> list[torch.Tensor]:
    """Each text's first ``max_len`` token ids as a (1, L) tensor, L >= 2, until ``tokens`` positions are covered."""
    windows, seen = [], 0
    for text in texts:
        ids = tok(text, return_tensors="pt").input_ids[:, :max_len]
        if ids.shape[1] < 2:
            continue
        windows.append(ids)
        seen += ids.shape[1] - 1
        if seen >= tokens:
            break
    if not windows:
        raise ValueError("the head-fit text gave no position (every document is shorter than two tokens); give more text")
    return windows


def final_states(model, windows: list[torch.Tensor], tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden states (N, d) float32, next token ids (N,)) over ``windows`` (``token_windows``) until ``tokens``
    positions."""
    hs, ys = [], []
    with torch.no_grad():
        for ids in windows:
            out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
            hs.append(out.hidden_states[-1][0, :-1].float())
            ys.append(ids[0, 1:])
    return torch.cat(hs)[:tokens], torch.cat(ys)[:tokens]


def teacher_logits(teacher, windows: list[torch.Tensor], tokens: int, vocab_rows: int):
    """Yield (first position, the teacher's logits (n, V) float32, next token ids (n,)) per window of ``windows``, at the
    positions ``final_states`` gives for them, until ``tokens`` positions; one forward pass per window."""
    seen = 0
    with torch.no_grad():
        for ids in windows:
            if seen >= tokens:
                return
            logits = teacher(input_ids=ids).logits[0, :-1].float()
            if logits.shape[1] < vocab_rows:
                raise ValueError(f"the teacher scores {logits.shape[1]} tokens but the transplant's head has {vocab_rows} "
                                 "rows: the teacher must be the model whose tokenizer was transplanted")
            n = min(len(logits), tokens - seen)
            yield seen, logits[:n], ids[0, 1 : n + 1]
            seen += n


def teacher_fit_targets(teacher, windows: list[torch.Tensor], tokens: int, vocab_rows: int, *, top_k: int | None = None,
                        fam=None) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, list | None]:
    """What the head fit reads from the teacher, in one pass over ``windows``: its top-``top_k`` targets (where
    ``top_k`` is given; ``teacher_targets``) and the share map's within-family distributions (where ``fam``, a
    ``share_map.Families``, is given; ``share_map.FamilyGroups``)."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"head_fit top_k={top_k} must be at least 1")
    if top_k is None and fam is None:
        return None, None
    from xtok.transplant.share_map import FamilyGroups

    tops, groups = [], None if fam is None else FamilyGroups(fam)
    for start, logits, targets in teacher_logits(teacher, windows, tokens, vocab_rows):
        if top_k is not None:
            top = logits[:, :vocab_rows].topk(top_k, dim=1)
            tops.append((top.indices, top.values.softmax(dim=1)))
        if groups is not None:
            groups.add(start, logits, targets)
    soft = (torch.cat([i for i, _ in tops]), torch.cat([p for _, p in tops])) if top_k is not None else None
    return soft, None if groups is None else groups.groups()


def teacher_targets(teacher, windows: list[torch.Tensor], tokens: int, top_k: int,
                    vocab_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, top_k), probabilities (N, top_k) summing to 1 per row): the teacher's next-token distribution at the
    positions ``final_states`` gives for the same ``windows``, renormalized on its ``top_k`` most likely tokens that are
    below ``vocab_rows`` (the transplant's head rows; a teacher's padding rows beyond them are never targets)."""
    return teacher_fit_targets(teacher, windows, tokens, vocab_rows, top_k=top_k)[0]


def _row_lse(h: torch.Tensor, w: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([torch.logsumexp(h[i:i + chunk] @ w.T, dim=1) for i in range(0, len(h), chunk)])


def fit_rows(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, *, l2: float, iterations: int,
             soft: tuple[torch.Tensor, torch.Tensor] | None = None, soft_weight: float = 0.0,
             chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(fitted rows, their ids, ce before, ce after): the rows of ``weight`` (V, d) that ``targets`` (and the ``soft``
    targets' ids, where ``soft_weight`` > 0) name, fitted as the module says; ``weight`` is not modified. The two ce
    values are the hard next-token cross-entropy whatever the target mix."""
    if l2 <= 0:
        raise ValueError(f"head_fit l2={l2} must be > 0: it keeps the fit convex with a unique optimum and holds rows "
                         "seen a few times near their transplanted rows; 0.1 was chosen on validation")
    if iterations < 1:
        raise ValueError(f"head_fit iterations={iterations} must be at least 1")
    if not 0 <= soft_weight <= 1:
        raise ValueError(f"head_fit teacher_weight={soft_weight} must be between 0 (hard targets) and 1 (the teacher's)")
    if soft_weight > 0 and soft is None:
        raise ValueError(f"head_fit teacher_weight={soft_weight} needs the teacher's targets; give the teacher model")
    alpha = soft_weight if soft is not None else 0.0
    w0 = weight.detach().float()
    rows = torch.unique(torch.cat([targets, soft[0].reshape(-1)]) if alpha > 0 else targets)
    fixed = torch.ones(w0.shape[0], dtype=torch.bool)
    fixed[rows] = False
    lse_fixed = _row_lse(hidden, w0[fixed], chunk) if bool(fixed.any()) else torch.full((len(hidden),), -float("inf"))
    col = torch.full((w0.shape[0],), -1, dtype=torch.long)
    col[rows] = torch.arange(len(rows))
    y = col[targets]
    soft_cols, soft_p = (col[soft[0]], soft[1].float()) if alpha > 0 else (None, None)
    base = w0[rows]
    delta = torch.zeros_like(base, requires_grad=True)

    def objective(grad: bool) -> tuple[float, float]:
        total, hard_total = 0.0, 0.0
        for i in range(0, len(hidden), chunk):
            with torch.set_grad_enabled(grad):
                z = hidden[i:i + chunk] @ (base + delta).T
                lse = torch.logaddexp(torch.logsumexp(z, dim=1), lse_fixed[i:i + chunk])
                hard = lse - z.gather(1, y[i:i + chunk, None])[:, 0]
                loss = hard if alpha == 0 else \
                    (1 - alpha) * hard + alpha * (lse - (z.gather(1, soft_cols[i:i + chunk]) * soft_p[i:i + chunk]).sum(1))
                part = loss.sum() / len(hidden)
            if grad:
                part.backward()
            total += float(part.detach())
            hard_total += float(hard.detach().sum()) / len(hidden)
        return total, hard_total

    before = objective(False)[1]
    opt = torch.optim.LBFGS([delta], lr=1, max_iter=iterations, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(True)[0]
        with torch.enable_grad():
            reg = l2 * (delta ** 2).sum()
            reg.backward()
        return torch.tensor(loss + float(reg.detach()))

    opt.step(closure)
    return base + delta.detach(), rows, before, objective(False)[1]


def fit_head(model, tok, texts: list[str], *, tokens: int, l2: float = 0.1, iterations: int = 30,
             max_len: int = 1024, teacher=None, teacher_weight: float = 0.0, top_k: int = 8,
             family_of: torch.Tensor | None = None, share_scope: str = "seen") -> dict:
    """Fit ``model``'s head rows in place on ``tokens`` positions of ``texts`` (see the module), with the ``teacher``'s
    top-k distribution mixed into the targets at ``teacher_weight``; returns a report. With ``family_of`` (each
    teacher token's first student piece, ``xtok.transplant.methods.first_piece_table``) the teacher's in-family shares
    are fitted first, as one map for every member of the families ``share_scope`` names (``xtok.transplant.share_map``),
    and the rows after it."""
    check_fittable(model)
    if family_of is not None and teacher is None:
        raise ValueError("the head fit's share map fits the teacher's in-family distributions; give the teacher model")
    t0 = time.perf_counter()
    windows = token_windows(tok, texts, tokens, max_len)
    hidden, targets = final_states(model, windows, tokens)
    head = model.get_output_embeddings()
    share = None
    soft_k = top_k if teacher_weight > 0 and teacher is not None else None  # fit_rows refuses a weight without targets
    fam = None
    if family_of is not None:
        from xtok.transplant.share_map import Families

        fam = Families.of(family_of, head.weight.shape[0])
    soft, groups = teacher_fit_targets(teacher, windows, tokens, head.weight.shape[0], top_k=soft_k, fam=fam)
    if fam is not None:
        from xtok.transplant.share_map import apply_share_map

        teacher_rows = teacher.get_output_embeddings().weight.detach().float()[: head.weight.shape[0]]
        mapped, share = apply_share_map(head.weight, hidden, groups, teacher_rows, fam, scope=share_scope)
        with torch.no_grad():
            head.weight.copy_(mapped.to(head.weight.dtype))
    fitted, rows, before, after = fit_rows(hidden, targets, head.weight, l2=l2, iterations=iterations, soft=soft,
                                           soft_weight=teacher_weight)
    with torch.no_grad():
        head.weight[rows] = fitted.to(head.weight.dtype)
    report = HeadFitReport(len(targets), len(rows), l2, iterations, before, after, time.perf_counter() - t0,
                           teacher_weight, top_k if teacher_weight > 0 else 0)
    log.info("head fit: %s", report)
    return report.to_dict() if share is None else {**report.to_dict(), "share_map": share}
