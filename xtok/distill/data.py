"""Training sequences for distillation: documents tokenized, joined and packed into fixed-length blocks.

Each document is preceded by the tokenizer's start token (BOS, else EOS: the same convention as
``xtok eval``) and followed by EOS, then the stream is cut into ``seq_len`` blocks; the last,
partial block is dropped. Every position is a target (no padding), so a block is ``labels =
input_ids``. A teacher's top-k log-probs for these blocks can be cached once
(``xtok.distill.teacher_cache``) and joined to them by block index.

The blocks of a run are written as they are made to one flat int32 file in the run folder (the
layout of Megatron's and nanoGPT's token ``.bin`` files) and memory-mapped from there: a corpus is
read a batch of documents at a time and its blocks are pages of that file, read on demand, so
memory does not grow with the corpus. They are still an ordinary (N, seq_len) tensor to every
reader (teacher cache, chunks, the Trainer's dataset).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from xtok.config import DataConfig
from xtok.corpus import load_corpus
from xtok.losses.kd import TeacherTopK
from xtok.utils.io import write_json
from xtok.vocab.chunks import PairedTokens
from xtok.vocab.identity import start_token_id

log = logging.getLogger(__name__)


BLOCKS_FILE, BLOCKS_INFO = "blocks.int32", "blocks.json"
DOCUMENT_BATCH = 64  # documents tokenized at a time: what packing holds in memory (measured: 256 long ones held 38 MB)


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def pack_documents(tokenizer, texts: Iterable[str], seq_len: int, max_sequences: int | None = None,
                   path: str | Path | None = None) -> torch.Tensor:
    """(N, seq_len) int32: the documents' token stream, each as ``start, tokens..., eos``, cut into blocks.

    With ``path`` the blocks go to that file as they are made (through a temporary sibling renamed into place) and
    the tensor returned maps it; ``texts`` is read ``DOCUMENT_BATCH`` documents at a time either way."""
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be at least 2")
    start, eos = start_token_id(tokenizer), tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; set tokenizer.eos_token so documents can be separated")
    if len(tokenizer) > np.iinfo(np.int32).max:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than int32 blocks hold")
    path = None if path is None else Path(path)
    tmp = None if path is None else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sink = [] if path is None else open(tmp, "wb")  # noqa: SIM115 - closed below, removed on any failure
    n, tokens, carry = 0, 0, np.empty(0, dtype=np.int32)
    try:
        for batch in _batches(texts, DOCUMENT_BATCH):
            docs = [np.asarray([start, *ids, eos], dtype=np.int32)
                    for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]]
            tokens += sum(len(d) for d in docs)
            stream = np.concatenate([carry, *docs])
            whole = len(stream) // seq_len if max_sequences is None else min(len(stream) // seq_len, max_sequences - n)
            if path is None:
                sink.append(stream[: whole * seq_len])
            else:
                sink.write(stream[: whole * seq_len].tobytes())
            n, carry = n + whole, stream[whole * seq_len:]
            if max_sequences is not None and n >= max_sequences:
                break
        if n == 0:
            raise ValueError(f"the training data gives {tokens} tokens, less than one sequence of seq_len={seq_len}; "
                             "give more documents or lower seq_len")
        if path is None:
            return torch.from_numpy(np.concatenate(sink)).view(n, seq_len)
        sink.close()
        os.replace(tmp, path)
    except BaseException:
        if path is not None:
            sink.close()
            tmp.unlink(missing_ok=True)
        raise
    return _map_blocks(path, n, seq_len)


def _map_blocks(path: Path, n: int, seq_len: int) -> torch.Tensor:
    """The (n, seq_len) int32 blocks of ``path``, memory-mapped (copy-on-write: the file is never written)."""
    return torch.from_file(str(path), shared=False, size=n * seq_len, dtype=torch.int32).view(n, seq_len)


def saved_blocks(path: Path, info: Path, key: dict, seq_len: int) -> torch.Tensor | None:
    """The int32 blocks file ``path`` memory-mapped, when its record ``info`` says it was made under ``key``; else
    None, with any stale record removed (the record is written last, by ``record_blocks``: a file without one is never
    reused)."""
    if info.is_file() and path.is_file():
        saved = json.loads(info.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return _map_blocks(path, saved["sequences"], seq_len)
    path.parent.mkdir(parents=True, exist_ok=True)
    info.unlink(missing_ok=True)
    return None


def record_blocks(info: Path, key: dict, sequences: int) -> None:
    """Record that the blocks file beside ``info`` holds ``sequences`` blocks made under ``key`` (atomically)."""
    write_json(info, {"key": key, "sequences": sequences})


def _corpus_texts(ds) -> Iterator[str]:
    for batch in ds.iter(batch_size=DOCUMENT_BATCH):
        yield from batch["text"]


def training_blocks(tokenizer, data: DataConfig, seq_len: int, max_sequences: int | None = None,
                    folder: str | Path | None = None) -> torch.Tensor:
    """The run's blocks: packed from ``data`` (into ``folder``'s block file, memory-mapped, when given; a file that an
    earlier start of the same run packed from the same data and tokenizer is reused)."""
    from xtok.vocab.identity import vocab_fingerprint

    ds = load_corpus(data.spec, domains=data.domains, max_docs_per_domain=data.max_docs_per_domain,
                     max_chars_per_doc=data.max_chars_per_doc)
    key = {"data": data.model_dump(mode="json"), "corpus": ds._fingerprint, "seq_len": seq_len,
           "max_sequences": max_sequences, "tokenizer": vocab_fingerprint(tokenizer)}  # corpus: datasets' own digest
    if folder is not None:
        folder = Path(folder)
        saved = saved_blocks(folder / BLOCKS_FILE, folder / BLOCKS_INFO, key, seq_len)
        if saved is not None:
            log.info("training data: %d sequences of %d tokens, packed earlier in %s", len(saved), seq_len, folder)
            return saved
    blocks = pack_documents(tokenizer, _corpus_texts(ds), seq_len, max_sequences,
                            None if folder is None else folder / BLOCKS_FILE)
    if folder is not None:
        record_blocks(folder / BLOCKS_INFO, key, len(blocks))
    log.info("training data: %d documents -> %d sequences of %d tokens", len(ds), len(blocks), seq_len)
    return blocks


def blocks_fingerprint(blocks: torch.Tensor, rows: int = 4096) -> str:
    """A digest of the blocks' token ids (as int64, whatever their stored dtype), read ``rows`` blocks at a time."""
    h = hashlib.sha256()
    for s in range(0, len(blocks), rows):
        h.update(blocks[s: s + rows].to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def teacher_tokenization(student_tok, teacher_tok, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same text in the teacher's own tokens (for ``uld``): (N, L) ids and attention mask, right-padded.

    Each block is decoded by the student's tokenizer (special tokens dropped) and tokenized again by the
    teacher's after its start token; L = the longest result.
    """
    start = start_token_id(teacher_tok)
    pad = teacher_tok.pad_token_id if teacher_tok.pad_token_id is not None else teacher_tok.eos_token_id
    texts = student_tok.batch_decode(blocks.tolist(), skip_special_tokens=True)
    rows = [[start, *ids] for ids in teacher_tok(texts, add_special_tokens=False)["input_ids"]]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask


class BlockDataset(torch.utils.data.Dataset):
    """Packed blocks as Trainer examples, with the cached teacher top-k (a ``TeacherTopK`` over the blocks), or the
    teacher's own tokenization of the same text (``uld``; with both sides' chunk ids for ``alm``), joined in when
    given."""

    def __init__(self, blocks: torch.Tensor, teacher_topk: TeacherTopK | None = None,
                 teacher_tokens: tuple[torch.Tensor, torch.Tensor] | None = None, chunks: PairedTokens | None = None):
        if teacher_topk is not None and teacher_topk.logprobs.shape[:2] != blocks.shape:
            raise ValueError(f"teacher cache covers {tuple(teacher_topk.logprobs.shape[:2])} positions, the data "
                             f"{tuple(blocks.shape)}; delete the cache so it is rebuilt")
        if chunks is not None:
            if teacher_tokens is not None:
                raise ValueError("give the teacher's tokens once: as teacher_tokens (uld) or inside chunks (alm)")
            teacher_tokens = (chunks.ids, chunks.mask)
        self.blocks, self.topk, self.teacher_tokens, self.chunks = blocks, teacher_topk, teacher_tokens, chunks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.blocks[i].long()
        item = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        if self.topk is not None:
            item["teacher_topk_logprobs"] = self.topk.logprobs[i].float()
            item["teacher_topk_ids"] = self.topk.ids[i].long()
            item["teacher_topk_tail"] = self.topk.tail[i].float()
            item["teacher_topk_temperature"] = torch.tensor(self.topk.temperature, dtype=torch.float32)
        if self.teacher_tokens is not None:
            item["teacher_input_ids"], item["teacher_attention_mask"] = self.teacher_tokens[0][i], self.teacher_tokens[1][i]
        if self.chunks is not None:
            item["student_chunk"], item["teacher_chunk"] = self.chunks.a_chunk[i], self.chunks.b_chunk[i]
        return item
