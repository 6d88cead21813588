"""Byte-canonical tokens: what bytes a token stands for, whatever the tokenizer's spelling.

Byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM2) spells bytes with a printable map (``Ġ`` = space,
``Ċ`` = newline); SentencePiece (Gemma, Llama-2) spells a space as ``▁`` and unknown bytes as
``<0x0A>``. Matching vocabularies by raw strings loses most shared tokens; matching by bytes
(a leading space is the word-start flag) finds them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

BYTE_LEVEL = "byte_level"
SENTENCEPIECE = "sentencepiece"
RAW = "raw"
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def gpt2_byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable stand-in character -> byte value."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = dict(zip(keep, keep))
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


def tokenizer_kind(tokenizer) -> str:
    """Detect how the tokenizer spells bytes, from its decoder (fast tokenizers only)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; xtok needs tokenizer.json (use_fast=True)")
    spec = json.loads(backend.to_str())
    text = json.dumps([spec.get("decoder"), spec.get("pre_tokenizer")])
    if '"ByteLevel"' in text:
        return BYTE_LEVEL
    if "\u2581" in text or '"Metaspace"' in text or '"ByteFallback"' in text or "\\u2581" in text:
        return SENTENCEPIECE
    return RAW


def piece_bytes(piece: str, kind: str) -> bytes | None:
    """The bytes a vocabulary piece stands for; None where the spelling is not valid for ``kind``."""
    if kind == BYTE_LEVEL:
        table = gpt2_byte_decoder()
        try:
            return bytes(table[c] for c in piece)
        except KeyError:
            return None
    if kind == SENTENCEPIECE:
        m = _BYTE_FALLBACK.match(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece.replace("\u2581", " ").encode("utf-8")
    return piece.encode("utf-8")


@dataclass(frozen=True)
class CanonicalVocab:
    """Per token id: its bytes (None for special tokens), whether special, whether a byte-fallback piece."""

    kind: str
    size: int
    bytes_of: list[bytes | None]
    special: dict[int, str]  # id -> content, for special tokens
    byte_fallback: frozenset[int]

    def index(self) -> dict[bytes, int]:
        """bytes -> id; where two ids spell the same bytes, the regular piece wins over a byte-fallback one."""
        out: dict[bytes, int] = {}
        for i, b in enumerate(self.bytes_of):
            if b is None:
                continue
            if b not in out or (out[b] in self.byte_fallback and i not in self.byte_fallback):
                out[b] = i
        return out


def canonical_vocab(tokenizer) -> CanonicalVocab:
    kind = tokenizer_kind(tokenizer)
    size = len(tokenizer)
    pieces: list[str | None] = [None] * size
    for piece, i in tokenizer.get_vocab().items():
        if i < size:
            pieces[i] = piece
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    special = {i: t.content for i, t in added.items() if t.special}
    bytes_of: list[bytes | None] = []
    fallback = set()
    for i, piece in enumerate(pieces):
        if piece is None or i in special:
            bytes_of.append(None)
        elif i in added:  # a non-special added token is matched as the literal text it inserts
            bytes_of.append(added[i].content.encode("utf-8"))
        else:
            b = piece_bytes(piece, kind)
            if kind == SENTENCEPIECE and _BYTE_FALLBACK.match(piece):
                fallback.add(i)
            bytes_of.append(b)
    return CanonicalVocab(kind=kind, size=size, bytes_of=bytes_of, special=special, byte_fallback=frozenset(fallback))
