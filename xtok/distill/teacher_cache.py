"""Offline teacher: run the teacher once over the training blocks and keep its top-k log-probs.

Stored as safetensors shards (``logprobs`` float32 and ``ids`` int32, each (n, T, K)) with an
``index.json`` naming the teacher, the data fingerprint and k; reused across epochs, stages and
resumed runs, rebuilt when any of those change. Log-probs are at temperature 1 over the full
vocabulary, so the tail bucket (1 - sum of the top k) is exact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xtok.distill.data import blocks_fingerprint
from xtok.utils.io import atomic_dir

log = logging.getLogger(__name__)

INDEX = "index.json"


@torch.no_grad()
def teacher_topk(teacher, blocks: torch.Tensor, k: int, batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, T, K) float32 log-probs and (n, T, K) int32 ids of the teacher's top-k next tokens at each position."""
    vocab = teacher.config.vocab_size
    if not 1 <= k <= vocab:
        raise ValueError(f"teacher_cache.top_k={k} must lie in [1, {vocab}] (the teacher's vocab_size)")
    n, t = blocks.shape
    logprobs = torch.empty((n, t, k), dtype=torch.float32)
    ids = torch.empty((n, t, k), dtype=torch.int32)
    for s in range(0, n, batch_size):
        batch = blocks[s : s + batch_size]
        logits = teacher(input_ids=batch, attention_mask=torch.ones_like(batch)).logits  # (b, T, V)
        lp = torch.log_softmax(logits.float(), dim=-1)
        top = lp.topk(k, dim=-1)
        logprobs[s : s + len(batch)], ids[s : s + len(batch)] = top.values, top.indices.int()
        log.info("teacher cache: %d/%d sequences", min(s + batch_size, n), n)
    return logprobs, ids


def cache_key(teacher_name: str, blocks: torch.Tensor, k: int) -> dict:
    return {"teacher": teacher_name, "data": blocks_fingerprint(blocks), "shape": list(blocks.shape), "top_k": k}


def load_cache(folder: Path, key: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (logprobs, ids) when ``folder`` holds a complete cache for ``key``, else None."""
    index = folder / INDEX
    if not index.is_file():
        return None
    meta = json.loads(index.read_text())
    if meta.get("key") != key:
        log.info("teacher cache at %s is for %s, not %s: rebuilding", folder, meta.get("key"), key)
        return None
    parts = [load_file(folder / name) for name in meta["shards"]]
    return torch.cat([p["logprobs"] for p in parts]), torch.cat([p["ids"] for p in parts])


def build_cache(folder: Path, teacher, teacher_name: str, blocks: torch.Tensor, k: int, batch_size: int = 4,
                shard_sequences: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the cache for this teacher, data and k from ``folder``, or compute and write it (atomically)."""
    key = cache_key(teacher_name, blocks, k)
    cached = load_cache(folder, key)
    if cached is not None:
        log.info("teacher cache: reusing %s", folder)
        return cached
    logprobs, ids = teacher_topk(teacher, blocks, k, batch_size)
    with atomic_dir(folder, overwrite=True) as tmp:
        shards = []
        for i, s in enumerate(range(0, len(blocks), shard_sequences)):
            name = f"teacher-topk-{i:05d}.safetensors"
            save_file({"logprobs": logprobs[s : s + shard_sequences].contiguous(),
                       "ids": ids[s : s + shard_sequences].contiguous()}, tmp / name)
            shards.append(name)
        (tmp / INDEX).write_text(json.dumps({"key": key, "shards": shards}, indent=1))
    return logprobs, ids
