"""Offline teacher: run the teacher once over the training blocks and keep its top-k log-probs.

Stored as safetensors shards (``logprobs`` float32 and ``ids`` int32, each (n, T, K), and ``tail``
float32 (n, T), the log of the mass outside the top k) with an ``index.json`` naming the teacher,
the data fingerprint, k and the temperature; reused across epochs, stages and resumed runs, rebuilt
when any of those change. Log-probs are log_softmax(logits / temperature) over the full vocabulary
and the tail is a logsumexp over the other tokens, so the loss's K+1 buckets are exact at that
temperature (a cache of another temperature is refused by the loss, see ``xtok.losses.kd``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from xtok.distill.data import blocks_fingerprint
from xtok.losses.kd import TeacherTopK, teacher_topk_from_logits
from xtok.utils.io import atomic_dir

log = logging.getLogger(__name__)

INDEX = "index.json"
FORMAT = 2  # 2: the tail log-mass is stored and the log-probs are at the key's temperature


@torch.no_grad()
def teacher_topk(teacher, blocks: torch.Tensor, k: int, batch_size: int = 4, temperature: float = 1.0,
                 progress: bool = False) -> TeacherTopK:
    """The teacher's top-k next tokens at each position of ``blocks`` (n, T), at ``temperature``: (n, T, K) float32
    log-probs and int32 ids, (n, T) tail log-mass. ``progress`` shows a bar with the time left."""
    vocab = teacher.config.vocab_size
    if not 1 <= k <= vocab:
        raise ValueError(f"teacher_cache.top_k={k} must lie in [1, {vocab}] (the teacher's vocab_size)")
    n, t = blocks.shape
    logprobs = torch.empty((n, t, k), dtype=torch.float32)
    ids = torch.empty((n, t, k), dtype=torch.int32)
    tail = torch.empty((n, t), dtype=torch.float32)
    with tqdm(total=n, desc="teacher cache", unit="seq", disable=not progress) as bar:
        for s in range(0, n, batch_size):
            batch = blocks[s : s + batch_size]
            logits = teacher(input_ids=batch, attention_mask=torch.ones_like(batch)).logits  # (b, T, V)
            top = teacher_topk_from_logits(logits, k, temperature)
            rows = slice(s, s + len(batch))
            logprobs[rows], ids[rows], tail[rows] = top.logprobs, top.ids, top.tail
            bar.update(len(batch))
            log.debug("teacher cache: %d/%d sequences", s + len(batch), n)
    return TeacherTopK(logprobs, ids, tail, float(temperature))


def cache_key(teacher_name: str, blocks: torch.Tensor, k: int, temperature: float = 1.0) -> dict:
    return {"teacher": teacher_name, "data": blocks_fingerprint(blocks), "shape": list(blocks.shape), "top_k": k,
            "temperature": float(temperature), "format": FORMAT}


def load_cache(folder: Path, key: dict) -> TeacherTopK | None:
    """The cached top-k when ``folder`` holds a complete cache for ``key``, else None."""
    index = folder / INDEX
    if not index.is_file():
        return None
    meta = json.loads(index.read_text())
    if meta.get("key") != key:
        log.info("teacher cache at %s is for %s, not %s: rebuilding", folder, meta.get("key"), key)
        return None
    parts = [load_file(folder / name) for name in meta["shards"]]
    return TeacherTopK(*(torch.cat([p[name] for p in parts]) for name in ("logprobs", "ids", "tail")),
                       temperature=key["temperature"])


def build_cache(folder: Path, teacher, teacher_name: str, blocks: torch.Tensor, k: int, batch_size: int = 4,
                shard_sequences: int = 256, temperature: float = 1.0, progress: bool = False) -> TeacherTopK:
    """Load the cache for this teacher, data, k and temperature from ``folder``, or compute and write it (atomically)."""
    key = cache_key(teacher_name, blocks, k, temperature)
    cached = load_cache(folder, key)
    if cached is not None:
        log.info("teacher cache: reusing %s", folder)
        return cached
    log.info("teacher cache: top-%d of %d sequences at temperature %g", k, len(blocks), temperature)
    top = teacher_topk(teacher, blocks, k, batch_size, temperature, progress)
    with atomic_dir(folder, overwrite=True) as tmp:
        shards = []
        for i, s in enumerate(range(0, len(blocks), shard_sequences)):
            name = f"teacher-topk-{i:05d}.safetensors"
            rows = slice(s, s + shard_sequences)
            save_file({"logprobs": top.logprobs[rows].contiguous(), "ids": top.ids[rows].contiguous(),
                       "tail": top.tail[rows].contiguous()}, tmp / name)
            shards.append(name)
        (tmp / INDEX).write_text(json.dumps({"key": key, "shards": shards}, indent=1))
    return top
