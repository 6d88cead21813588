"""Special tokens matched by role (bos, eos, pad, unk, chat-turn markers), never collapsed onto one key."""

from __future__ import annotations

from dataclasses import dataclass

# Chat-turn markers of the families xtok meets; the same role in another tokenizer is the counterpart.
TURN_MARKERS: dict[str, tuple[str, ...]] = {
    "turn_start": ("<|im_start|>", "<start_of_turn>", "<|start_header_id|>", "<|user|>"),
    "turn_end": ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"),
}
ROLE_ORDER = ("turn_start", "turn_end", "eos", "bos", "unk", "pad")  # chat markers first: they carry chat behaviour


def special_roles(tokenizer) -> dict[str, int]:
    """role -> token id for the tokenizer's bos/eos/pad/unk and chat-turn markers present in its vocabulary."""
    roles: dict[str, int] = {}
    for role in ("bos", "eos", "pad", "unk"):
        tid = getattr(tokenizer, f"{role}_token_id", None)
        if tid is not None:
            roles[role] = int(tid)
    vocab = tokenizer.get_vocab()
    for role, names in TURN_MARKERS.items():
        for name in names:
            if name in vocab:
                roles[role] = vocab[name]
                break
    return roles


@dataclass(frozen=True)
class SpecialMatch:
    teacher_id: int
    student_id: int
    how: str  # "same text" or "role:<name>"


def match_specials(teacher_tok, student_tok, teacher_special: dict[int, str], student_special: dict[int, str]) -> list[SpecialMatch]:
    """Pair teacher special tokens with student ones: identical text first, then by role.

    Each student token serves at most one teacher token, so SmolLM2's pad = eos cannot pull
    two teacher tokens onto one row; a teacher special left unpaired is initialized like any new token.
    """
    student_by_text = {content: i for i, content in student_special.items()}
    student_vocab = student_tok.get_vocab()
    used_student: set[int] = set()
    done: dict[int, SpecialMatch] = {}
    for tid, content in sorted(teacher_special.items()):
        sid = student_by_text.get(content, student_vocab.get(content))
        if sid is not None and sid not in used_student:
            done[tid] = SpecialMatch(tid, sid, "same text")
            used_student.add(sid)
    t_roles, s_roles = special_roles(teacher_tok), special_roles(student_tok)
    for role in ROLE_ORDER:
        tid, sid = t_roles.get(role), s_roles.get(role)
        if tid is None or sid is None or tid in done or sid in used_student:
            continue
        done[tid] = SpecialMatch(tid, sid, f"role:{role}")
        used_student.add(sid)
    return sorted(done.values(), key=lambda m: m.teacher_id)
