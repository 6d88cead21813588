"""Tokenize a corpus and count windowed token co-occurrences into a sparse symmetric matrix.

Counting follows GloVe's ``cooccur``: a pair at distance d (1 <= d <= window) inside one document
adds 1/d, in both directions; tokens below ``min_count`` are dropped from the stream first (so
the window spans the tokens that stay). The matrix is built by sorting int64 pair keys, a chunk
of the token stream at a time, so memory follows the chunk size and the number of distinct pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenStream:
    """The corpus as one id stream: ``ids`` (N,) long and the document index of each position."""

    ids: torch.Tensor  # (N,) long
    doc: torch.Tensor  # (N,) long, non-decreasing
    vocab_size: int

    def counts(self) -> torch.Tensor:
        return torch.bincount(self.ids, minlength=self.vocab_size)


@dataclass(frozen=True)
class Cooc:
    """A sparse symmetric co-occurrence matrix over a compact vocabulary (COO, coalesced, row-major)."""

    rows: torch.Tensor  # (nnz,) long
    cols: torch.Tensor  # (nnz,) long
    vals: torch.Tensor  # (nnz,) float64
    n: int  # compact vocabulary size

    def dense(self) -> torch.Tensor:
        out = torch.zeros((self.n, self.n), dtype=torch.float64)
        out[self.rows, self.cols] = self.vals
        return out


def tokenize(tokenizer, texts: list[str], batch_size: int = 512) -> TokenStream:
    """Encode documents with the fast tokenizer's Rust batch encoder (no special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; xtok align needs tokenizer.json (use_fast=True)")
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    ids, lengths = [], []
    for s in range(0, len(texts), batch_size):
        for enc in encode(texts[s : s + batch_size], add_special_tokens=False):
            ids.append(np.asarray(enc.ids, dtype=np.int64))
            lengths.append(len(enc.ids))
    flat = torch.from_numpy(np.concatenate(ids)) if ids else torch.zeros(0, dtype=torch.long)
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths, dtype=torch.long))
    size = max(len(tokenizer), int(flat.max()) + 1 if len(flat) else 0)
    return TokenStream(flat, doc, size)


def _reduce(keys: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum ``vals`` over equal ``keys``; keys come back sorted and unique."""
    uniq, inv = torch.unique(keys, sorted=True, return_inverse=True)
    return uniq, torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, vals)


def cooccurrence(stream: TokenStream, keep: torch.Tensor, window: int, chunk_tokens: int = 1 << 19) -> Cooc:
    """Co-occurrences among the token ids in ``keep`` (sorted, unique); row/col i is ``keep[i]``.

    Pairs never cross a document boundary; weight 1/d at distance d; symmetric (X + X^T).
    """
    if window < 1:
        raise ValueError(f"window={window} must be at least 1")
    n = len(keep)
    remap = torch.full((stream.vocab_size,), -1, dtype=torch.long)
    remap[keep] = torch.arange(n)
    compact = remap[stream.ids]
    mask = compact >= 0
    ids, doc = compact[mask], stream.doc[mask]
    total = len(ids)
    parts_k: list[torch.Tensor] = []
    parts_v: list[torch.Tensor] = []
    pending = 0
    for s in range(0, total, chunk_tokens):
        e = min(s + chunk_tokens, total)
        keys, vals = [], []
        for d in range(1, window + 1):
            a, b = ids[s:e], ids[s + d : e + d]
            same = doc[s : s + len(b)] == doc[s + d : s + d + len(b)]
            a, b = a[: len(b)][same], b[same]
            keys.append(torch.cat([a * n + b, b * n + a]))
            vals.append(torch.full((2 * len(a),), 1.0 / d, dtype=torch.float64))
        k, v = _reduce(torch.cat(keys), torch.cat(vals))
        parts_k.append(k)
        parts_v.append(v)
        pending += len(k)
        if len(parts_k) > 1 and pending > 4 * window * chunk_tokens:  # bound the pile of per-chunk results
            k, v = _reduce(torch.cat(parts_k), torch.cat(parts_v))
            parts_k, parts_v, pending = [k], [v], len(k)
    if not parts_k:
        empty = torch.zeros(0, dtype=torch.long)
        return Cooc(empty, empty, torch.zeros(0, dtype=torch.float64), n)
    k, v = _reduce(torch.cat(parts_k), torch.cat(parts_v)) if len(parts_k) > 1 else (parts_k[0], parts_v[0])
    return Cooc(k // n, k % n, v, n)


def frequent_ids(counts: torch.Tensor, min_count: int) -> torch.Tensor:
    """Sorted token ids seen at least ``min_count`` times."""
    return torch.nonzero(counts >= min_count).flatten()
