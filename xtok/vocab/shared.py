"""The shared-token map between a teacher (target) vocabulary and a student (source) vocabulary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from xtok.vocab.canonical import CanonicalVocab, canonical_vocab
from xtok.vocab.roles import SpecialMatch, match_specials


@dataclass
class TokenMap:
    """For each teacher token id: the student id that spells the same bytes (or plays the same role), else -1."""

    student_of: torch.Tensor  # (V_teacher,) long, -1 where the token is new to the student
    how: list[str]  # per teacher id: "bytes", "same text", "role:eos", ... or "new"
    teacher_kind: str
    student_kind: str
    specials: list[SpecialMatch] = field(default_factory=list)

    @property
    def shared_teacher_ids(self) -> torch.Tensor:
        return torch.nonzero(self.student_of >= 0).flatten()

    @property
    def new_teacher_ids(self) -> torch.Tensor:
        return torch.nonzero(self.student_of < 0).flatten()

    def anchors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher ids, student ids) of byte-shared regular tokens: the OMP dictionary."""
        t = torch.tensor([i for i, h in enumerate(self.how) if h == "bytes"], dtype=torch.long)
        return t, self.student_of[t]

    def counts(self) -> dict[str, int]:
        c = Counter("special" if h not in ("bytes", "new") else h for h in self.how)
        return {"teacher_vocab": len(self.how), "shared_bytes": c["bytes"], "shared_special": c["special"], "new": c["new"]}


def build_token_map(teacher_tok, student_tok, teacher_cv: CanonicalVocab | None = None,
                    student_cv: CanonicalVocab | None = None) -> TokenMap:
    tcv = teacher_cv or canonical_vocab(teacher_tok)
    scv = student_cv or canonical_vocab(student_tok)
    student_index = scv.index()
    student_of = torch.full((tcv.size,), -1, dtype=torch.long)
    how = ["new"] * tcv.size
    for tid, b in enumerate(tcv.bytes_of):
        if b is not None and b in student_index:
            student_of[tid] = student_index[b]
            how[tid] = "bytes"
    specials = match_specials(teacher_tok, student_tok, tcv.special, scv.special)
    for m in specials:
        student_of[m.teacher_id] = m.student_id
        how[m.teacher_id] = m.how
    return TokenMap(student_of=student_of, how=how, teacher_kind=tcv.kind, student_kind=scv.kind, specials=specials)
