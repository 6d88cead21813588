"""Training sequences for distillation: documents tokenized, joined and packed into fixed-length blocks.

Each document is preceded by the tokenizer's start token (BOS, else EOS: the same convention as
``xtok eval``) and followed by EOS, then the stream is cut into ``seq_len`` blocks; the last,
partial block is dropped. Every position is a target (no padding), so a block is ``labels =
input_ids``. A teacher's top-k log-probs for these blocks can be cached once
(``xtok.distill.teacher_cache``) and joined to them by block index.
"""

from __future__ import annotations

import hashlib
import logging

import torch

from xtok.config import DataConfig
from xtok.corpus import load_corpus
from xtok.losses.kd import TeacherTopK
from xtok.vocab.chunks import PairedTokens
from xtok.vocab.identity import start_token_id

log = logging.getLogger(__name__)


def pack_documents(tokenizer, texts: list[str], seq_len: int, max_sequences: int | None = None) -> torch.Tensor:
    """(N, seq_len) long: the documents' token stream, each as ``start, tokens..., eos``, cut into blocks."""
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be at least 2")
    start, eos = start_token_id(tokenizer), tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; set tokenizer.eos_token so documents can be separated")
    stream: list[int] = []
    need = None if max_sequences is None else max_sequences * seq_len
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend([start, *ids, eos])
        if need is not None and len(stream) >= need:
            break
    n = len(stream) // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    if n == 0:
        raise ValueError(f"the training data gives {len(stream)} tokens, less than one sequence of seq_len={seq_len}; "
                         "give more documents or lower seq_len")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def training_blocks(tokenizer, data: DataConfig, seq_len: int, max_sequences: int | None = None) -> torch.Tensor:
    ds = load_corpus(data.spec, domains=data.domains, max_docs_per_domain=data.max_docs_per_domain,
                     max_chars_per_doc=data.max_chars_per_doc)
    blocks = pack_documents(tokenizer, list(ds["text"]), seq_len, max_sequences)
    log.info("training data: %d documents -> %d sequences of %d tokens", len(ds), len(blocks), seq_len)
    return blocks


def blocks_fingerprint(blocks: torch.Tensor) -> str:
    return hashlib.sha256(blocks.numpy().tobytes()).hexdigest()[:16]


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
        ids = self.blocks[i]
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
