"""A context-dependent in-family share for a transplant's head, fitted on the transplant's own final hidden states.

A new teacher token t whose bytes the student spells p1 p2 ... belongs to p1's *family*; the subword-prior head gives
the family p1's probability and splits it by a static prior (plus the context term's linear guess). On code that
split is where a new token's bits go (``bench/results/head_split.json``: 10 of its 15.5 bits). A row fit
(``head_fit``) can train only the rows of tokens its text holds. This fits one map instead, shared by every family
member, so it reaches the tokens the text never shows:

    logit_t(h) = h · w_t + (h M) · u_t − h · γ_f(t)

``w_t`` the transplant's row, ``u_t`` the teacher's head row of t, ``M`` (d_s × d_t) fitted on cached states h by the
cross-entropy of the teacher's distribution *within the family of the next token* (at each calibration position the
teacher's probabilities renormalized over that family's members) with an L2 pull of ``ridge``: a convex problem
(softmax cross-entropy of logits linear in M), solved by L-BFGS with an analytic gradient. A within-family softmax
does not see what the new term does to the family's total mass, and a linear head cannot renormalize it (on
SmolLM2 ← Qwen2.5 the term added 0.32 nats to a family's log-mass on average, on Gemma-3 ← Qwen2.5 it took 0.43).
So ``γ_f`` (one d_s row per family) is the least-squares fit, over a sample of the states, of the log-mass the term
adds to family f (``logsumexp`` over the members with the term minus without): linear in h, so it is a row change
too, and the result is a plain head, one matrix, that any backend serves. It moves rows the fit text never shows,
so it extrapolates. ``scope="all"`` moves every multi-member family; ``scope="seen"`` (the default) only the families
the fit text holds a next token of, every member of those, seen or not. On Gemma-3 ← Qwen2.5 the two tie on validation
and on the eval split's code, and both cost its multilingual documents, whose scripts the fit text lacks, a third more
bits (new-token chunks 25.9 → 34.0 bits with "seen", 34.9 with "all"): the damage comes from the families the text
does reach, read at states unlike the fit's, not from the unseen ones. On SmolLM2 ← Qwen2.5 "seen" is the better
of the two on validation and eval in every domain (eval code x1.475 against x1.479, multilingual x1.600 against
x1.620; README, Numbers).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

RIDGE = 1e-3  # L2 on M, chosen on validation between 1e-2 and 1e-3 (bench/results/head_fit_share.json)
MASS_RIDGE = 1e-2  # γ's ridge, relative to the mean eigenvalue of the sampled states' Gram matrix
MASS_SAMPLE = 4096  # states the family-mass correction is fitted on
SCOPES = ("seen", "all")  # the families the map moves: those the fit text reaches, or every multi-member family


@dataclass
class ShareMapReport:
    positions: int  # calibration positions whose next token is in a family of two or more
    families_seen: int  # families those positions fall in
    rows_changed: int  # head rows of the families moved (every member, seen or not)
    families_changed: int
    scope: str
    ridge: float
    iterations: int
    share_ce_before: float  # mean within-family cross-entropy (nats) against the teacher's distribution
    share_ce_after: float
    mean_added_log_mass: float  # what the term adds to a family's log-mass on average before γ takes it back
    seconds: float

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class Families:
    """The teacher tokens in families of two or more, ordered by family: ``tokens[i]`` is in family ``index[i]``."""

    family_of: torch.Tensor  # (V,) each head row's first student piece, -1 for none
    tokens: torch.Tensor  # (T,) teacher ids
    index: torch.Tensor  # (T,) 0..F-1
    count: int  # F

    @classmethod
    def of(cls, family_of: torch.Tensor, rows: int | None = None) -> Families:
        """From each teacher token's first student piece (-1: none; ``xtok.transplant.methods.first_piece_table``),
        cut or padded with -1 to a head of ``rows`` rows where given (a teacher's padding rows)."""
        if rows is not None:
            family_of = torch.cat([family_of[:rows], torch.full((max(0, rows - len(family_of)),), -1, dtype=torch.long)])
        ok = family_of >= 0
        sizes = torch.zeros(int(family_of.max()) + 1 if bool(ok.any()) else 1, dtype=torch.long)
        sizes.index_add_(0, family_of[ok], torch.ones(int(ok.sum()), dtype=torch.long))
        keep = torch.nonzero(ok & (sizes[family_of.clamp_min(0)] > 1)).flatten()
        keep = keep[torch.argsort(family_of[keep], stable=True)]
        _, index = torch.unique(family_of[keep], return_inverse=True)
        return cls(family_of, keep, index, int(index.max()) + 1 if len(keep) else 0)

    def restrict(self, keys: torch.Tensor) -> Families:
        """The families whose first piece is in ``keys``, every member kept."""
        return Families.of(torch.where(torch.isin(self.family_of, keys), self.family_of, -1))

    def members(self) -> dict[int, torch.Tensor]:
        """Each family's member ids, by its first piece."""
        values, counts = torch.unique_consecutive(self.family_of[self.tokens], return_counts=True)  # in family order
        return dict(zip(values.tolist(), self.tokens.split(counts.tolist())))

    def log_mass(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, F) logsumexp of each family's members' ``logits`` (N, T), ``logits`` in ``tokens`` order."""
        n = len(logits)
        at = self.index[None].expand(n, -1)
        top = torch.full((n, self.count), -torch.inf).scatter_reduce(1, at, logits, "amax")
        return top + torch.zeros(n, self.count).index_add_(1, self.index, (logits - top.gather(1, at)).exp()).log()


@dataclass
class Group:
    """The calibration positions whose next token is in one family: their rows in the states, the family's members
    and the teacher's distribution over them at each."""

    positions: torch.Tensor  # (n,)
    members: torch.Tensor  # (m,) teacher ids
    teacher: torch.Tensor  # (n, m) probabilities, rows summing to 1


class FamilyGroups:
    """The teacher's within-family distributions at each position whose next token is in one of ``fam``'s families,
    gathered window by window: ``add`` takes what ``head_fit.teacher_logits`` yields (first position, teacher logits
    (n, V), next token ids (n,)), ``groups`` gives one ``Group`` per family reached."""

    def __init__(self, fam: Families):
        self.family_of, self.members = fam.family_of, fam.members()
        self.in_multi = torch.zeros(len(self.family_of), dtype=torch.bool)
        self.in_multi[fam.tokens] = True
        self.rows: dict[int, list[tuple[int, torch.Tensor]]] = {}

    def add(self, start: int, logits: torch.Tensor, targets: torch.Tensor) -> None:
        for i, y in enumerate(targets.tolist()):
            if y < len(self.family_of) and self.in_multi[y]:
                f = int(self.family_of[y])
                self.rows.setdefault(f, []).append((start + i, logits[i, self.members[f]].softmax(0)))

    def groups(self) -> list[Group]:
        return [Group(torch.tensor([p for p, _ in r]), self.members[f], torch.stack([q for _, q in r]))
                for f, r in self.rows.items()]


def share_loss(m: torch.Tensor, hidden: torch.Tensor, groups: list[Group], weight: torch.Tensor,
               teacher_rows: torch.Tensor, ridge: float) -> tuple[float, torch.Tensor, float]:
    """(objective, its gradient in ``m`` (d_s, d_t), the within-family cross-entropy alone): the mean over the groups'
    positions of −Σ q log softmax(h · w + (h m) · u) over the family's members, plus ``ridge`` ‖m‖²."""
    n = sum(len(g.positions) for g in groups)
    g_all = hidden @ m  # (N, d_t)
    d_g = torch.zeros_like(g_all)
    total = 0.0
    for g in groups:
        h, u = hidden[g.positions], teacher_rows[g.members]  # (n, d_s), (m, d_t)
        logq = (h @ weight[g.members].T + g_all[g.positions] @ u.T).log_softmax(1)  # (n, m)
        total -= float((g.teacher * logq).sum())
        d_g.index_add_(0, g.positions, (logq.exp() - g.teacher) @ u)
    ce = total / n
    return ce + ridge * float((m * m).sum()), hidden.T @ d_g / n + 2 * ridge * m, ce


def fit_share_map(hidden: torch.Tensor, groups: list[Group], weight: torch.Tensor, teacher_rows: torch.Tensor, *,
                  ridge: float = RIDGE, iterations: int = 40) -> tuple[torch.Tensor, float, float]:
    """(M (d_s, d_t), within-family ce before, after): the map of the module, by L-BFGS from M = 0."""
    if ridge <= 0:
        raise ValueError(f"share map ridge={ridge} must be > 0: it keeps the fit convex with a unique optimum")
    if not groups:
        raise ValueError("no calibration position has a next token in a family of two or more; give more text")
    m = torch.zeros(hidden.shape[1], teacher_rows.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([m], lr=1, max_iter=iterations, history_size=10, line_search_fn="strong_wolfe")
    before = share_loss(m.detach(), hidden, groups, weight, teacher_rows, ridge)[2]

    def closure() -> torch.Tensor:
        value, grad, _ = share_loss(m.detach(), hidden, groups, weight, teacher_rows, ridge)
        m.grad = grad
        return torch.tensor(value)

    opt.step(closure)
    return m.detach(), before, share_loss(m.detach(), hidden, groups, weight, teacher_rows, ridge)[2]


def mass_correction(hidden: torch.Tensor, fam: Families, weight: torch.Tensor, added: torch.Tensor,
                    chunk: int = 256) -> tuple[torch.Tensor, float]:
    """(γ (F, d_s), mean added log-mass): ridge least squares of what ``added`` (T, d_s), the new term's rows in
    ``fam.tokens`` order, adds to each family's log-mass at the states ``hidden`` (N, d_s), linear in h."""
    base = weight[fam.tokens]
    extra = torch.cat([fam.log_mass(h @ (base + added).T) - fam.log_mass(h @ base.T)
                       for h in hidden.split(chunk)]).double()  # (N, F)
    h = hidden.double()
    gram = h.T @ h
    lam = MASS_RIDGE * float(gram.diagonal().mean())
    gamma = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), h.T @ extra).T
    return gamma.float(), float(extra.mean())


def apply_share_map(weight: torch.Tensor, hidden: torch.Tensor, groups: list[Group], teacher_rows: torch.Tensor,
                    fam: Families, *, scope: str = "seen", ridge: float = RIDGE,
                    iterations: int = 40) -> tuple[torch.Tensor, dict]:
    """(new head (V, d_s), report): ``weight``'s rows of the families ``scope`` names (``SCOPES``) moved by
    ``M u_t − γ_f``; ``weight`` is not modified."""
    if scope not in SCOPES:
        raise ValueError(f"share map scope {scope!r} is not one of {', '.join(SCOPES)}")
    t0 = time.perf_counter()
    w = weight.detach().float()
    m, before, after = fit_share_map(hidden, groups, w, teacher_rows, ridge=ridge, iterations=iterations)
    if scope == "seen":
        fam = fam.restrict(torch.stack([fam.family_of[g.members[0]] for g in groups]))
    added = teacher_rows[fam.tokens] @ m.T  # (T, d_s): h · (M u_t) = (h M) · u_t
    sample = hidden[torch.randperm(len(hidden), generator=torch.Generator().manual_seed(0))[:MASS_SAMPLE]]
    gamma, mass = mass_correction(sample, fam, w, added)
    out = w.clone()
    out[fam.tokens] += added - gamma[fam.index]
    report = ShareMapReport(sum(len(g.positions) for g in groups), len(groups), len(fam.tokens), fam.count, scope, ridge,
                            iterations, before, after, mass, time.perf_counter() - t0)
    return out, report.to_dict()
