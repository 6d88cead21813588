"""Offline teacher: run the teacher once over the training blocks and keep its top-k log-probs.

Stored as safetensors shards (``logprobs`` float32 and ``ids`` int32, each (n, T, K), and ``tail``
float32 (n, T), the log of the mass outside the top k) with an ``index.json`` naming the teacher,
the data fingerprint, k and the temperature; reused across epochs, stages and resumed runs, rebuilt
when any of those change. Each shard is written as soon as the teacher has scored its
sequences, and a cache is read lazily (``ShardedTopK``: one row at a time through
``safetensors.safe_open``), so neither building nor training holds more than a shard of it in
memory. Log-probs are log_softmax(logits / temperature) over the full vocabulary and the tail is a
logsumexp over the other tokens, so the loss's K+1 buckets are exact at that
temperature (a cache of another temperature is refused by the loss, see ``xtok.losses.kd``).
"""

from __future__ import annotations

import bisect
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from xtok.distill.data import blocks_fingerprint
from xtok.losses.kd import TeacherTopK, teacher_topk_from_logits
from xtok.utils.hardware import autocast_bf16
from xtok.utils.io import atomic_dir

log = logging.getLogger(__name__)

INDEX = "index.json"
FORMAT = 2  # 2: the tail log-mass is stored and the log-probs are at the key's temperature


@torch.no_grad()
def teacher_topk(teacher, blocks: torch.Tensor, k: int, batch_size: int = 4, temperature: float = 1.0,
                 progress: bool = False, bar=None, bf16: bool = False) -> TeacherTopK:
    """The teacher's top-k next tokens at each position of ``blocks`` (n, T), at ``temperature``: (n, T, K) float32
    log-probs and int32 ids, (n, T) tail log-mass. ``progress`` shows a bar with the time left. ``bf16``: the
    teacher's forward pass runs under bf16 autocast; the softmax and the top-k stay float32."""
    vocab = teacher.config.vocab_size
    if not 1 <= k <= vocab:
        raise ValueError(f"teacher_cache.top_k={k} must lie in [1, {vocab}] (the teacher's vocab_size)")
    n, t = blocks.shape
    logprobs = torch.empty((n, t, k), dtype=torch.float32)
    ids = torch.empty((n, t, k), dtype=torch.int32)
    tail = torch.empty((n, t), dtype=torch.float32)
    with tqdm(total=n, desc="teacher cache", unit="seq", disable=not progress or bar is not None) as own:
        bar = bar if bar is not None else own
        for s in range(0, n, batch_size):
            batch = blocks[s : s + batch_size].long()
            with autocast_bf16(teacher, bf16):
                logits = teacher(input_ids=batch, attention_mask=torch.ones_like(batch)).logits  # (b, T, V)
            top = teacher_topk_from_logits(logits.float(), k, temperature)
            rows = slice(s, s + len(batch))
            logprobs[rows], ids[rows], tail[rows] = top.logprobs, top.ids, top.tail
            bar.update(len(batch))
            log.debug("teacher cache: %d/%d sequences", s + len(batch), n)
    return TeacherTopK(logprobs, ids, tail, float(temperature))


def cache_key(teacher_name: str, blocks: torch.Tensor, k: int, temperature: float = 1.0, bf16: bool = False) -> dict:
    return {"teacher": teacher_name, "data": blocks_fingerprint(blocks), "shape": list(blocks.shape), "top_k": k,
            "temperature": float(temperature), "format": FORMAT, "precision": "bf16" if bf16 else "float32"}


FIELDS = ("logprobs", "ids", "tail")


class _Column:
    """One field of a ``ShardedTopK``: ``column[i]`` reads row ``i`` from its shard; ``shape`` is the whole field's."""

    def __init__(self, owner: ShardedTopK, name: str, row_shape: tuple[int, ...]):
        self.owner, self.name = owner, name
        self.shape = torch.Size((owner.rows, *row_shape))

    def __len__(self) -> int:
        return self.owner.rows

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.owner.read(self.name, int(i))


class ShardedTopK:
    """A teacher cache on disk, read a row at a time (``logprobs[i]``, ``ids[i]``, ``tail[i]``, as a ``TeacherTopK``'s
    fields are indexed): memory holds the rows asked for, the shards stay memory-mapped files. Picklable (each
    process opens the shards itself)."""

    def __init__(self, folder: Path, shards: list[str], temperature: float):
        self.folder, self.shards, self.temperature = Path(folder), list(shards), float(temperature)
        self._handles: dict[int, object] = {}
        self.starts, shapes, total = [], None, 0
        for i, name in enumerate(self.shards):
            handle = self._open(i)
            got = {f: tuple(handle.get_slice(f).get_shape()) for f in FIELDS}
            rows = got["logprobs"][0]
            if any(shape[0] != rows for shape in got.values()) or got["ids"] != got["logprobs"]:
                raise ValueError(f"teacher cache shard {self.folder / name} holds fields of unequal shapes {got}; "
                                 "delete the cache so it is rebuilt")
            rest = {f: shape[1:] for f, shape in got.items()}
            if shapes is not None and rest != shapes:
                raise ValueError(f"teacher cache shard {self.folder / name} has rows of {rest}, the others {shapes}; "
                                 "delete the cache so it is rebuilt")
            shapes = rest
            self.starts.append(total)
            total += rows
        self.rows = total
        for f in FIELDS:
            setattr(self, f, _Column(self, f, shapes[f] if shapes else ()))

    def _open(self, shard: int):
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(str(self.folder / self.shards[shard]), framework="pt")
        return handle

    def read(self, field: str, i: int) -> torch.Tensor:
        if not 0 <= i < self.rows:
            raise IndexError(f"teacher cache row {i} out of range (it holds {self.rows})")
        shard = bisect.bisect_right(self.starts, i) - 1
        j = i - self.starts[shard]
        return self._open(shard).get_slice(field)[j : j + 1][0]

    def load(self) -> TeacherTopK:
        """The whole cache in memory (tests and small runs)."""
        return TeacherTopK(*(torch.stack([getattr(self, f)[i] for i in range(self.rows)]) for f in FIELDS),
                           temperature=self.temperature)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}


def load_cache(folder: Path, key: dict) -> ShardedTopK | None:
    """The cache (read lazily) when ``folder`` holds a complete cache for ``key``, else None."""
    index = folder / INDEX
    if not index.is_file():
        return None
    meta = json.loads(index.read_text())
    if meta.get("key") != key:
        log.info("teacher cache at %s is for %s, not %s: rebuilding", folder, meta.get("key"), key)
        return None
    cache = ShardedTopK(folder, meta["shards"], key["temperature"])
    if cache.rows != key["shape"][0]:
        log.info("teacher cache at %s holds %d sequences, not %d: rebuilding", folder, cache.rows, key["shape"][0])
        return None
    return cache


def build_cache(folder: Path, teacher, teacher_name: str, blocks: torch.Tensor, k: int, batch_size: int = 4,
                shard_sequences: int = 256, temperature: float = 1.0, progress: bool = False,
                bf16: bool = False) -> ShardedTopK:
    """Load the cache for this teacher, data, k, temperature and precision (``bf16``: the teacher's forward passes
    under bf16 autocast) from ``folder``, or compute and write it (atomically, a shard at a time: memory holds one
    shard's top-k)."""
    key = cache_key(teacher_name, blocks, k, temperature, bf16)
    cached = load_cache(folder, key)
    if cached is not None:
        log.info("teacher cache: reusing %s", folder)
        return cached
    if teacher is None:
        raise ValueError(f"no teacher cache for {key} at {folder}, and no teacher to build one")
    log.info("teacher cache: top-%d of %d sequences at temperature %g", k, len(blocks), temperature)
    with atomic_dir(folder, overwrite=True) as tmp, \
            tqdm(total=len(blocks), desc="teacher cache", unit="seq", disable=not progress) as bar:
        shards = []
        for i, s in enumerate(range(0, len(blocks), shard_sequences)):
            top = teacher_topk(teacher, blocks[s : s + shard_sequences], k, batch_size, temperature, bar=bar, bf16=bf16)
            name = f"teacher-topk-{i:05d}.safetensors"
            save_file({f: getattr(top, f).contiguous() for f in FIELDS}, tmp / name)
            shards.append(name)
            del top
        (tmp / INDEX).write_text(json.dumps({"key": key, "shards": shards}, indent=1))
    return ShardedTopK(folder, shards, temperature)
