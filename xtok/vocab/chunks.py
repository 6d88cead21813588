"""One text under two tokenizations, cut into aligned chunks: spans that end where both have a token boundary.

Approximate Likelihood Matching (Minixhofer et al. 2025) compares two models' likelihoods of the same
bytes: a chunk's log-probability is the sum of its tokens' log-probabilities on each side, and the
chunks end at the byte offsets where both tokenizations end a token, so both sides predict exactly the
same bytes in a chunk. Special tokens (document start and end) carry no bytes; each is a chunk of its own,
paired in order with the other side's token of the same role.

``paired_tokenization`` takes packed blocks of side A (the model being trained) and builds side B's
tokenization of the same text and both sides' chunk ids: -1 marks a token outside every chunk (a block's
first bytes that start inside a character, or a span whose bytes the two sides do not spell alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xtok.vocab.canonical import CanonicalVocab, canonical_vocab
from xtok.vocab.identity import start_token_id


def chunk_ids(a_lens: list[int], b_lens: list[int]) -> tuple[list[int], list[int]]:
    """Chunk index per token of two tokenizations of one byte string, given each token's byte length (≥ 1).

    Chunk c holds the tokens ending after the c-th common boundary and by the (c+1)-th; both lists must cover
    the same number of bytes."""
    if sum(a_lens) != sum(b_lens):
        raise ValueError(f"the tokenizations cover {sum(a_lens)} and {sum(b_lens)} bytes; they must spell one text")
    if min(a_lens + b_lens, default=1) < 1:
        raise ValueError("every token of a chunked span must carry at least one byte")
    ends_a, ends_b, pos = [], [], 0
    for n in a_lens:
        pos += n
        ends_a.append(pos)
    pos = 0
    for n in b_lens:
        pos += n
        ends_b.append(pos)
    common = sorted(set(ends_a) & set(ends_b))
    out = []
    for ends in (ends_a, ends_b):
        ids, c = [], 0
        for e in ends:
            while common[c] < e:
                c += 1
            ids.append(c)
        out.append(ids)
    return out[0], out[1]


def _utf8_span(b: bytes) -> tuple[int, int]:
    """The largest [lo, hi) of ``b`` that starts and ends on a UTF-8 character boundary."""
    lo = 0
    while lo < len(b) and (b[lo] & 0xC0) == 0x80:  # continuation bytes of a character begun before the block
        lo += 1
    hi = len(b)
    for back in range(1, 4):  # a lead byte whose character the block cuts off
        i = hi - back
        if i < lo:
            break
        if b[i] & 0xC0 == 0xC0:
            need = 2 if b[i] < 0xE0 else 3 if b[i] < 0xF0 else 4
            if back < need:
                hi = i
            break
        if b[i] < 0x80:
            break
    return lo, hi


@dataclass(frozen=True)
class PairedTokens:
    """Side B's tokenization of side A's blocks: (N, L) ids and attention mask, right-padded, and the chunk id of
    every token on both sides, (N, T) and (N, L), -1 outside every chunk (padding too). Chunk ids count from 0 per
    block and are equal for the tokens of one chunk on the two sides."""

    ids: torch.Tensor
    mask: torch.Tensor
    a_chunk: torch.Tensor
    b_chunk: torch.Tensor
    uncovered: int  # side-A tokens outside every chunk, over all blocks

    def __len__(self) -> int:
        return len(self.ids)


def _segments(row: list[int], a_cv: CanonicalVocab):
    """Split a block into ('special', id) and ('text', [ids]) runs."""
    out: list[tuple[str, object]] = []
    for j, tid in enumerate(row):
        b = a_cv.bytes_of[tid] if tid < a_cv.size else None
        if b is None:
            out.append(("special", j))
        elif out and out[-1][0] == "text":
            out[-1][1].append(j)
        else:
            out.append(("text", [j]))
    return out


def _pair_block(row: list[int], a_cv, b_tok, b_cv, b_start: int, b_end: int):
    """(side-B ids, side-A chunk ids, side-B chunk ids) of one block."""
    a_chunk = [-1] * len(row)
    b_ids: list[int] = []
    b_chunk: list[int] = []
    c = 0
    segs = _segments(row, a_cv)
    for s, (kind, what) in enumerate(segs):
        if kind == "special":
            follows_text = s + 1 < len(segs) and segs[s + 1][0] == "text"
            b_ids.append(b_start if follows_text else b_end)  # a special before text starts a document
            a_chunk[what] = c
            b_chunk.append(c)
            c += 1
            continue
        pieces = [a_cv.bytes_of[row[j]] for j in what]
        text = b"".join(pieces)
        lo, hi = _utf8_span(text)
        # side-A tokens wholly inside [lo, hi)
        starts, pos = [], 0
        for p in pieces:
            starts.append(pos)
            pos += len(p)
        inside = [k for k, p in enumerate(pieces) if starts[k] >= lo and starts[k] + len(p) <= hi]
        if not inside:
            continue
        while inside:  # a token may cross a character boundary: drop edge tokens until the span decodes
            lo, hi = starts[inside[0]], starts[inside[-1]] + len(pieces[inside[-1]])
            try:
                decoded = text[lo:hi].decode("utf-8")
                break
            except UnicodeDecodeError as exc:
                inside = inside[1:] if exc.start == 0 else inside[:-1]
        if not inside:
            continue
        ids = b_tok(decoded, add_special_tokens=False)["input_ids"]
        b_bytes = [b_cv.bytes_of[t] if t < b_cv.size else None for t in ids]
        b_ids.extend(ids)
        if any(b is None for b in b_bytes) or b"".join(b_bytes) != text[lo:hi]:
            b_chunk.extend([-1] * len(ids))  # side B does not spell these bytes back (a normalizer): no chunks
            continue
        ca, cb = chunk_ids([len(pieces[k]) for k in inside], [len(b) for b in b_bytes])
        for k, cid in zip(inside, ca):
            a_chunk[what[k]] = c + cid
        b_chunk.extend(c + cid for cid in cb)
        c += max(ca) + 1
    return b_ids, a_chunk, b_chunk


def paired_tokenization(a_tok, b_tok, blocks: torch.Tensor) -> PairedTokens:
    """Side B's tokenization of the text of side A's (N, T) blocks, and the chunks of both (see the module)."""
    a_cv, b_cv = canonical_vocab(a_tok), canonical_vocab(b_tok)
    if b_tok.eos_token_id is None:
        raise ValueError("the second tokenizer has no eos token; set tokenizer.eos_token so documents can be separated")
    b_start, b_end = start_token_id(b_tok), int(b_tok.eos_token_id)
    pad = b_tok.pad_token_id if b_tok.pad_token_id is not None else b_end
    rows = [_pair_block(r, a_cv, b_tok, b_cv, b_start, b_end) for r in blocks.tolist()]
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    b_chunk = torch.full((len(rows), width), -1, dtype=torch.long)
    a_chunk = torch.tensor([r[1] for r in rows], dtype=torch.long)
    for i, (b_ids, _, bc) in enumerate(rows):
        ids[i, : len(b_ids)], mask[i, : len(b_ids)], b_chunk[i, : len(bc)] = torch.tensor(b_ids), 1, torch.tensor(bc)
    return PairedTokens(ids, mask, a_chunk, b_chunk, int((a_chunk < 0).sum()))
