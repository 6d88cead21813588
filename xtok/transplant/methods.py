"""Init methods for tokens new to the student, one registry, one interface.

Every method is ``fn(space: Space, new_ids: LongTensor) -> Tensor (len(new_ids), d_student)``:
rows for the given teacher token ids, in the student's embedding space ``space.student``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from xtok.registry import INIT_METHODS, MethodSpec, raise_no_alignment, raise_no_donor
from xtok.transplant.omp import batch_omp
from xtok.transplant.safety import CodeStats, code_stats, reference_stats
from xtok.vocab.canonical import canonical_vocab
from xtok.vocab.shared import build_token_map


@dataclass
class Space:
    """One embedding space (input embeddings or output head) of a transplant."""

    name: str
    student: torch.Tensor  # (V_s, d_s) float32
    donor: torch.Tensor | None  # (V_t, d_t) float32: the teacher's matrix in the same role, None for a bare tokenizer
    anchor_teacher: torch.Tensor  # (n,) teacher ids of byte-shared tokens
    anchor_student: torch.Tensor  # (n,) their student ids
    teacher_bytes: list[bytes | None]  # per teacher id
    student_tokenizer: object
    k: int = 8
    candidates: int | None = None  # OMP: search each token's m most correlated anchors only (None = exact)
    chunk: int = 1024
    dtype: str = "auto"
    top_k: int = 16
    seed: int = 0
    progress: bool = False
    fallbacks: int = 0  # new tokens a method could not build and left at the student mean
    alignment: Any = None  # an xtok.align Alignment, for the methods whose spec says needs_alignment
    calibration: Any = None  # an xtok.transplant.calibrate.Calibration, for the methods that need one
    student_of: torch.Tensor | None = None  # (V_t,) student id of each shared teacher token, -1 for new ones
    details: dict[str, Any] = field(default_factory=dict)  # extra per-method counts for the report
    # (teacher ids, rows) of shared tokens whose copied row a method replaces (subword-prior: a first piece's share)
    replaced: tuple[torch.Tensor, torch.Tensor] | None = None
    codes: list[CodeStats] = field(default_factory=list)  # OMP methods: code statistics for the safety scan
    code_cache: dict = field(default_factory=dict)  # OMP codes by donor and tokens, shared by a transplant's spaces
    safety_z: float = 15.0  # robust z-score past which the safety scan flags a row
    max_coef_norm: float | None = None  # refuse rows whose OMP coefficient norm is above this
    head_context: float = 0.0  # subword-prior: weight of the context term (the teacher's in-family preference here)
    row_norms: str = "keep"  # new rows' norms held to the shared rows' range (xtok.transplant.norms), read by space_rows

    def need_donor(self, method: str) -> torch.Tensor:
        if self.donor is None:
            raise_no_donor(method)
        return self.donor

    def need_alignment(self, method: str) -> Any:
        if self.alignment is None:
            raise_no_alignment(method)
        return self.alignment


@INIT_METHODS.register("zero", help="all-zero rows", spec=MethodSpec(rowwise=True))
def zero_init(space: Space, new_ids: torch.Tensor) -> torch.Tensor:
    return torch.zeros((len(new_ids), space.student.shape[1]))


@INIT_METHODS.register("mean", help="the mean of the student's rows", spec=MethodSpec(rowwise=True))
def mean_init(space: Space, new_ids: torch.Tensor) -> torch.Tensor:
    return space.student.mean(0, keepdim=True).expand(len(new_ids), -1).clone()


@INIT_METHODS.register("randn", help="Gaussian samples with the mean and covariance of the student's rows")
def randn_init(space: Space, new_ids: torch.Tensor) -> torch.Tensor:
    e = space.student.double()
    mu = e.mean(0)
    cov = torch.cov(e.T) + 1e-6 * torch.eye(e.shape[1], dtype=e.dtype)
    gen = torch.Generator().manual_seed(space.seed)
    z = torch.randn((len(new_ids), e.shape[1]), generator=gen, dtype=e.dtype)
    return (mu + z @ torch.linalg.cholesky(cov).T).float()


def _student_pieces(space: Space, b: bytes) -> list[int]:
    """Student ids spelling ``b``: its tokenizer on the text where the bytes are UTF-8, else longest byte matches."""
    try:
        ids = space.student_tokenizer(b.decode("utf-8"), add_special_tokens=False)["input_ids"]
        if ids:
            return ids
    except UnicodeDecodeError:
        pass
    index = _byte_index(space)
    out, i = [], 0
    while i < len(b):
        for j in range(len(b), i, -1):
            if b[i:j] in index:
                out.append(index[b[i:j]])
                i = j
                break
        else:
            i += 1  # a byte the student cannot spell at all is skipped
    return out


def _byte_index(space: Space) -> dict[bytes, int]:
    cached = getattr(space, "_student_index", None)
    if cached is None:
        from xtok.vocab.canonical import canonical_vocab

        cached = canonical_vocab(space.student_tokenizer).index()
        space._student_index = cached
    return cached


@INIT_METHODS.register("subword", help="the mean of the student pieces that spell the new token",
                       spec=MethodSpec(rowwise=True))
def subword_init(space: Space, new_ids: torch.Tensor) -> torch.Tensor:
    out = torch.empty((len(new_ids), space.student.shape[1]))
    mean = space.student.mean(0)
    rows = space.student.shape[0]
    for r, tid in enumerate(new_ids.tolist()):
        b = space.teacher_bytes[tid]
        pieces = [p for p in _student_pieces(space, b) if p < rows] if b else []
        out[r] = space.student[pieces].mean(0) if pieces else mean
        space.fallbacks += not pieces
    return out


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the last dim (Martins & Astudillo 2016): Euclidean projection onto the simplex."""
    zs, _ = z.sort(dim=-1, descending=True)
    cs = zs.cumsum(-1)
    ks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    support = 1 + ks * zs > cs
    kz = support.sum(-1, keepdim=True)
    tau = (cs.gather(-1, kz - 1) - 1) / kz
    return (z - tau).clamp_min(0)


@INIT_METHODS.register("focus", help="FOCUS-style: sparsemax over the most similar anchors in donor space",
                       spec=MethodSpec(needs_donor=True, rowwise=True))
def focus_init(space: Space, new_ids: torch.Tensor) -> torch.Tensor:
    donor = space.need_donor("focus")
    anchors = torch.nn.functional.normalize(donor[space.anchor_teacher].float(), dim=1)
    student_rows = space.student[space.anchor_student]
    out = torch.empty((len(new_ids), space.student.shape[1]))
    for s in range(0, len(new_ids), space.chunk):
        x = torch.nn.functional.normalize(donor[new_ids[s : s + space.chunk]].float(), dim=1)
        sim, idx = (x @ anchors.T).topk(min(space.top_k, anchors.shape[0]), dim=1)  # (B, top_k)
        w = sparsemax(sim)
        out[s : s + space.chunk] = torch.einsum("bk,bkd->bd", w, student_rows[idx])
    return out


@INIT_METHODS.register("omp", help="Orthogonal Matching Pursuit over shared anchors in donor space (default)",
                       spec=MethodSpec(needs_donor=True, uses_k=True, rowwise=True))
def omp_init(space: Space, new_ids: torch.Tensor) -> torch.Tensor:
    donor = space.need_donor("omp")
    # the codes depend on the donor matrix alone: a teacher whose head is its input embeddings gives both spaces one
    key = ("omp", donor.data_ptr(), tuple(donor.shape), int(new_ids[0]), int(new_ids[-1]), len(new_ids))
    return omp_rows(space, donor[new_ids], donor[space.anchor_teacher], space.anchor_student, new_ids, cache_key=key)


def omp_rows(space: Space, x: torch.Tensor, atoms: torch.Tensor, anchor_student: torch.Tensor,
             ids: torch.Tensor, cache_key: tuple | None = None) -> torch.Tensor:
    """Student rows for donor vectors ``x`` (m, d) of teacher tokens ``ids``: OMP codes over ``atoms`` applied to the
    anchors' student rows. The codes' statistics go to ``space.codes`` for the safety scan; codes stored under
    ``cache_key`` in ``space.code_cache`` (shared by the spaces of one transplant) are not searched again."""
    def omp(targets: torch.Tensor, dictionary: torch.Tensor, progress: bool = False):
        return batch_omp(targets, dictionary, space.k, chunk=space.chunk, dtype=space.dtype, candidates=space.candidates,
                         progress=progress)

    if cache_key is not None and cache_key in space.code_cache:
        idx, coef, stats = space.code_cache[cache_key]
    else:
        idx, coef = omp(x, atoms, space.progress)
        reference = space.codes[0].reference if space.codes else reference_stats(atoms, omp)
        stats = CodeStats(ids, *code_stats(x, atoms, idx, coef), reference=reference)
        if cache_key is not None:
            space.code_cache[cache_key] = (idx, coef, stats)
    out = torch.empty((len(x), space.student.shape[1]))
    for s in range(0, len(x), space.chunk):  # the anchors' student rows gathered per chunk: (B, k, d_s), never (n, d_s)
        rows = space.student[anchor_student[idx[s : s + space.chunk]]]
        out[s : s + space.chunk] = torch.einsum("bk,bkd->bd", coef[s : s + space.chunk], rows)
    space.codes.append(stats)
    return out


def first_pieces(space: Space, teacher_ids: torch.Tensor) -> torch.Tensor:
    """The first student piece spelling each teacher token's bytes (a shared token: its own student id); -1: none."""
    out = torch.full((len(teacher_ids),), -1, dtype=torch.long)
    texts, where = [], []
    for r, tid in enumerate(teacher_ids.tolist()):
        if space.student_of is not None and space.student_of[tid] >= 0:
            out[r] = space.student_of[tid]
            continue
        b = space.teacher_bytes[tid]
        if not b:
            continue
        try:
            texts.append(b.decode("utf-8"))
            where.append(r)
        except UnicodeDecodeError:  # a partial UTF-8 sequence: longest byte matches
            pieces = _student_pieces(space, b)
            out[r] = pieces[0] if pieces else -1
    for r, ids in zip(where, space.student_tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []):
        out[r] = ids[0] if ids else -1
    out[out >= space.student.shape[0]] = -1
    return out


def first_piece_table(teacher_tok, student_tok, student_rows: int) -> torch.Tensor:
    """``first_pieces`` of every teacher token (the subword-prior families), from the two tokenizers alone."""
    tmap = build_token_map(teacher_tok, student_tok)
    anchor_t, anchor_s = tmap.anchors()
    cv = canonical_vocab(teacher_tok)
    space = Space("output", torch.empty(student_rows, 0), None, anchor_t, anchor_s, cv.bytes_of, student_tok,
                  student_of=tmap.student_of)
    return first_pieces(space, torch.arange(cv.size))


@INIT_METHODS.register("subword-prior", help="head only: each teacher token whose first student piece is p gets p's row "
                       "plus a logit bias log(its share of p's family), through the student's constant hidden direction; "
                       "the family's probabilities sum to p's", spec=MethodSpec(needs_calibration=True, head_only=True))
def subword_prior_init(space: Space, new_ids: torch.Tensor) -> torch.Tensor:
    """Rows whose logits follow the chain rule: the teacher tokens t whose first student piece is p (p's *family*:
    new tokens spelled p p2 ..., and p itself where it is shared) split p's probability in proportions
    r_t = P̄(t) / Σ P̄(t') over the family (P̄: the teacher's mean next-token probability on calibration text, or,
    with no teacher model, the tokens' smoothed frequencies in an alignment's corpus). Each member gets p's row
    shifted by log r_t along the direction v with h · v ≈ 1 for the student's final hidden states h (the head has no
    bias vector), so Σ_t exp(logit_t) = exp(logit_p) wherever h · v = 1: the family holds exactly what the student
    gives p. A shared p with new family members therefore has its copied row replaced too (``space.replaced``);
    one alone in its family keeps its row."""
    if space.name != "output":
        raise ValueError("init method 'subword-prior' builds output-head rows; use it as the head method "
                         "(--head-method subword-prior) with another input method")
    cal = space.calibration
    if cal is None:
        raise ValueError("init method 'subword-prior' needs a calibration (the student's constant direction and a prior); "
                         "call transplant() with a teacher model or an alignment (it calibrates on bundled text)")
    n_teacher = len(space.teacher_bytes)
    p1 = first_pieces(space, torch.arange(n_teacher))
    prior = cal.teacher_prior[:n_teacher].clamp_min(1e-30)
    ok = p1 >= 0
    rows_s = space.student.shape[0]
    family = torch.zeros(rows_s, dtype=torch.float64).index_add_(0, p1[ok], prior[ok])
    members = torch.zeros(rows_s, dtype=torch.long).index_add_(0, p1[ok], torch.ones(int(ok.sum()), dtype=torch.long))

    context = _family_context(space, p1, prior, family, ok) if space.head_context else None

    def rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_share = (prior[ids] / family[p1[ids]]).log().float()
        out = space.student[p1[ids]] + log_share[:, None] * cal.direction[None, :]
        return (out if context is None else out + context(ids)), log_share

    out = space.student.mean(0).expand(len(new_ids), -1).clone()
    has = p1[new_ids] >= 0
    out[has], log_share = rows(new_ids[has])
    space.fallbacks += int((~has).sum())
    if space.student_of is not None:  # shared first pieces with new family members give up their share
        shared = torch.nonzero((space.student_of[:n_teacher] >= 0) & ok).flatten()
        shared = shared[members[p1[shared]] > 1]
        space.replaced = (shared, rows(shared)[0])
    space.details["subword_prior"] = {"mean_log_share": round(float(log_share.mean()), 3) if len(log_share) else None,
                                      "shared_rows_replaced": 0 if space.replaced is None else len(space.replaced[0]),
                                      "head_context": space.head_context, **cal.report()}
    return out


def _family_context(space: Space, p1: torch.Tensor, prior: torch.Tensor, family: torch.Tensor, ok: torch.Tensor):
    """The context term of subword-prior's rows, as a function of teacher ids: ``alpha · ((A (h - h̄)) · (u_t - ū))``
    with ``u_t`` the teacher's head row of t, ``ū`` the prior-weighted mean row of t's family, ``A`` the calibration's
    context map (teacher state from student state) and ``h̄`` its mean student state. It is the first-order change of
    t's share of its family when the teacher, here, likes t more or less than on average: zero at ``h̄``, and its
    prior-weighted sum over a family is zero at every ``h`` (Σ r_t (u_t - ū) = 0), so the family keeps its mass to
    first order. As a row: ``alpha · Aᵀ(u_t - ū)``, minus its value at ``h̄`` along the constant direction ``v``."""
    cal = space.calibration
    if cal.context is None:
        raise ValueError("subword-prior with head_context > 0 needs a calibration with a context map (calibrate(..., "
                         "context=True)); transplant() fits one when head_context is set")
    teacher = space.need_donor("subword-prior with head_context > 0")  # (V_t, d_t): the teacher's head
    n, cm = len(p1), cal.context
    if teacher.shape[1] != cm.weight.shape[0]:
        raise ValueError(f"the teacher's head has width {teacher.shape[1]} but the context map predicts states of width "
                         f"{cm.weight.shape[0]}: the calibration must come from this teacher")
    mean_row = torch.zeros(space.student.shape[0], teacher.shape[1], dtype=torch.float64)
    for s in range(0, n, 16384):  # the prior-weighted family sums, a slice at a time (no (V_t, d_t) float64 copy)
        sl = torch.arange(s, min(s + 16384, n))
        sl = sl[ok[sl]]
        mean_row.index_add_(0, p1[sl], prior[sl, None] * teacher[sl].double())
    mean_row = (mean_row / family.clamp_min(1e-300)[:, None]).float()

    def term(ids: torch.Tensor) -> torch.Tensor:
        row = (teacher[ids] - mean_row[p1[ids]]) @ cm.weight  # (m, d_s): h · row = (A h) · (u_t - ū)
        return space.head_context * (row - (row @ cm.student_mean)[:, None] * cal.direction[None, :])

    return term
