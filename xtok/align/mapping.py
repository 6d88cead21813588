"""Relate two co-occurrence spaces through pivot tokens and map each target token to a source token.

A token's relative representation is its cosine similarity to each pivot (a byte-shared token
with a vector on both sides), computed in its own space; the two spaces never need a rotation.
Each target token maps to the source token whose relative representation is the most similar,
in chunks of target tokens with a top-k, never a dense (V_t, V_s) matrix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SHARED, ALIGNED, NO_VECTOR = "shared", "aligned", "no_vector"


@dataclass(frozen=True)
class Side:
    """One tokenizer's co-occurrence vectors: ``vectors[r]`` belongs to token id ``ids[r]``."""

    ids: torch.Tensor  # (n,) long, sorted
    vectors: torch.Tensor  # (n, d) float32
    counts: torch.Tensor  # (V,) long: corpus frequency of every token id
    vocab_size: int

    def row_of(self) -> torch.Tensor:
        """(V,) long: the vector row of each token id, -1 where it has none."""
        out = torch.full((self.vocab_size,), -1, dtype=torch.long)
        out[self.ids] = torch.arange(len(self.ids))
        return out


def relative(vectors: torch.Tensor, pivot_rows: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Unit-norm relative representations (n, P): cosine of each centred vector to each centred pivot."""
    piv = F.normalize(vectors[pivot_rows] - center, dim=1)  # (P, d)
    return F.normalize(F.normalize(vectors - center, dim=1) @ piv.T, dim=1)  # (n, P)


def nearest(queries: torch.Tensor, keys: torch.Tensor, top_k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k keys by inner product for each query row: (scores (q, k), key indices (q, k)); ``chunk`` rows at once."""
    k = min(top_k, keys.shape[0])
    scores = torch.empty((queries.shape[0], k))
    idx = torch.empty((queries.shape[0], k), dtype=torch.long)
    for s in range(0, queries.shape[0], chunk):
        sc, ix = (queries[s : s + chunk] @ keys.T).topk(k, dim=1)  # (chunk, V_s) -> (chunk, k)
        scores[s : s + chunk], idx[s : s + chunk] = sc, ix
    return scores, idx


def map_rows(target: Side, source: Side, pivots: tuple[torch.Tensor, torch.Tensor], query_rows: torch.Tensor,
             top_k: int = 5, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For target vector rows ``query_rows``: (scores, source vector rows) of the top-k source tokens.

    ``pivots`` = (target vector rows, source vector rows) of the pivot pairs. Scores are the cosine
    of relative representations (``relative``), computed without forming them: with unit centred
    vectors u, pivots P and Q, rel_t . rel_s = u_t P^T Q u_s^T, so each chunk costs one
    (chunk, d) @ (d, V_s) product whatever the number of pivots.
    """
    ut = F.normalize(target.vectors - target.vectors.mean(0), dim=1)  # (n_t, d)
    us = F.normalize(source.vectors - source.vectors.mean(0), dim=1)  # (n_s, d)
    pt, ps = ut[pivots[0]].double(), us[pivots[1]].double()  # (P, d)
    cross = (pt.T @ ps).float()  # (d, d)
    gram_t, gram_s = (pt.T @ pt).float(), (ps.T @ ps).float()  # |rel|^2 = u G u^T
    keys = us / ((us @ gram_s) * us).sum(1).clamp_min(1e-12).sqrt()[:, None]  # (n_s, d)
    k = min(top_k, len(source.ids))
    out_s = torch.empty((len(query_rows), k))
    out_i = torch.empty((len(query_rows), k), dtype=torch.long)
    for s in range(0, len(query_rows), chunk):
        u = ut[query_rows[s : s + chunk]]  # (chunk, d)
        q = (u @ cross) / ((u @ gram_t) * u).sum(1).clamp_min(1e-12).sqrt()[:, None]
        out_s[s : s + chunk], out_i[s : s + chunk] = nearest(q, keys, top_k, chunk)
    return out_s, out_i


def shared_pairs(anchor_t: torch.Tensor, anchor_s: torch.Tensor, target: Side, source: Side) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte-shared (target id, source id) pairs with a vector on both sides, most frequent first."""
    t_row, s_row = target.row_of(), source.row_of()
    ok = (t_row[anchor_t] >= 0) & (s_row[anchor_s] >= 0)
    t, s = anchor_t[ok], anchor_s[ok]
    freq = torch.minimum(target.counts[t], source.counts[s])
    order = torch.sort(freq, descending=True, stable=True).indices
    return t[order], s[order]


def pivot_rows(t_ids: torch.Tensor, s_ids: torch.Tensor, target: Side, source: Side, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector rows of the first ``n`` pairs (pairs come most frequent first)."""
    return target.row_of()[t_ids[:n]], source.row_of()[s_ids[:n]]


def check_pivots(available: int, dims: int, what: str = "shared tokens with a vector on both sides") -> None:
    if available < dims:
        raise ValueError(
            f"only {available} {what}, fewer than the dims={dims} needed as pivots; give a larger corpus, "
            "lower --min-count, or lower --dims"
        )


def holdout_quality(pairs: tuple[torch.Tensor, torch.Tensor], target: Side, source: Side, *, fraction: float,
                    pivots: int, top_k: int = 5, chunk: int = 1024, seed: int = 0) -> dict:
    """Hide ``fraction`` of the shared pairs from the pivots and recover their partners: top-1/top-k accuracy."""
    t_ids, s_ids = pairs
    n_hide = int(round(fraction * len(t_ids)))
    if n_hide == 0:
        return {"hidden": 0}
    perm = torch.randperm(len(t_ids), generator=torch.Generator().manual_seed(seed))
    hide, keep = perm[:n_hide], perm[n_hide:].sort().values  # keep: still most frequent first
    dims = target.vectors.shape[1]
    check_pivots(len(keep), dims, f"shared tokens left as pivots after hiding {n_hide}")
    piv = pivot_rows(t_ids[keep], s_ids[keep], target, source, pivots)
    _, idx = map_rows(target, source, piv, target.row_of()[t_ids[hide]], top_k, chunk)
    truth = source.row_of()[s_ids[hide]]
    hits = idx == truth[:, None]
    return {"hidden": n_hide, "pivots": len(piv[0]), "top1": round(hits[:, 0].float().mean().item(), 4),
            f"top{idx.shape[1]}": round(hits.any(1).float().mean().item(), 4)}
