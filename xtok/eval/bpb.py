"""Bits per byte: the one measure that compares models with different tokenizers.

Every document is scored in full: its tokens follow one start token (the tokenizer's BOS, else
its EOS), and each token is predicted once. Long documents are cut into windows of ``window``
positions that overlap by ``overlap``, so every scored token after the first window sees at least
``overlap`` tokens of context. bits/byte = sum of -log2 p(token) / UTF-8 bytes of the text.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xtok.vocab.identity import start_token_id

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
MAX_LOGIT_ELEMENTS = 1 << 28  # 1 GiB of float32 logits per forward


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    return nll_nats / (LN2 * n_bytes)


def plan_windows(n: int, window: int, overlap: int) -> list[tuple[int, int, int]]:
    """Windows ``(start, end, score_from)`` over a sequence of ``n`` positions (position 0 = start token).

    Targets ``score_from..end-1`` are scored in window ``[start, end)``; every target 1..n-1 is
    scored exactly once, and a target outside the first window sees at least ``overlap`` positions.
    """
    if not 0 <= overlap < window:
        raise ValueError(f"overlap ({overlap}) must be at least 0 and smaller than the window ({window})")
    out: list[tuple[int, int, int]] = []
    start, score_from = 0, 1
    while score_from < n:
        end = min(start + window, n)
        out.append((start, end, score_from))
        score_from = end
        start = end - max(overlap, 1)  # the next window's first target needs one position of context at least
    return out


@dataclass
class DomainStats:
    docs: int = 0
    bytes: int = 0
    tokens: int = 0
    nll_nats: float = 0.0

    def add(self, other: DomainStats) -> None:
        self.docs += other.docs
        self.bytes += other.bytes
        self.tokens += other.tokens
        self.nll_nats += other.nll_nats

    def summary(self) -> dict:
        return {
            "bits_per_byte": bits_per_byte(self.nll_nats, self.bytes) if self.bytes else float("nan"),
            "bytes_per_token": self.bytes / self.tokens if self.tokens else float("nan"),
            "bits_per_token": self.nll_nats / LN2 / self.tokens if self.tokens else float("nan"),
            "tokens": self.tokens,
            "bytes": self.bytes,
            "docs": self.docs,
        }


@dataclass
class EvalResult:
    domains: dict[str, DomainStats] = field(default_factory=dict)
    docs: list[DomainStats] = field(default_factory=list)  # one per document, in input order (for intervals)
    seconds: float = 0.0
    forward_tokens: int = 0

    def overall(self) -> DomainStats:
        total = DomainStats()
        for stats in self.domains.values():
            total.add(stats)
        return total

    def to_dict(self) -> dict:
        return {
            "overall": self.overall().summary(),
            "domains": {d: s.summary() for d, s in sorted(self.domains.items())},
            "seconds": round(self.seconds, 3),
            "tokens_per_second": self.forward_tokens / self.seconds if self.seconds else None,
        }


def max_context(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


@torch.no_grad()
def _score_batch(model, batch: list[tuple[int, list[int], int]], pad_id: int) -> list[tuple[int, float]]:
    """Score windows ``(doc, ids, first_scored_position)``; return (doc, summed nll in nats) per window."""
    device = next(model.parameters()).device
    width = max(len(ids) for _, ids, _ in batch)
    x = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    scored = torch.zeros((len(batch), width - 1), dtype=torch.bool)  # target positions 1.. in shifted coords
    for i, (_, ids, first) in enumerate(batch):
        x[i, : len(ids)] = torch.tensor(ids)
        attn[i, : len(ids)] = 1
        scored[i, first - 1 : len(ids) - 1] = True
    logits = model(input_ids=x.to(device), attention_mask=attn.to(device)).logits  # (B, T, V)
    vocab = logits.shape[-1]
    nll = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, vocab), x[:, 1:].reshape(-1).to(device), reduction="none"
    ).view(len(batch), width - 1)  # (B, T-1)
    sums = (nll * scored.to(device)).sum(dim=1).tolist()
    return [(doc, s) for (doc, _, _), s in zip(batch, sums)]


def evaluate(
    model,
    tokenizer,
    texts: list[str],
    domains: list[str],
    *,
    window: int = 1024,
    overlap: int = 256,
    batch_tokens: int = 8192,
    progress: bool = True,
) -> EvalResult:
    """Bits per byte and compression of ``model`` on ``texts``, per domain and overall."""
    if len(texts) != len(domains):
        raise ValueError(f"{len(texts)} texts but {len(domains)} domain labels")
    if not texts:
        raise ValueError("no documents to evaluate")
    ctx = max_context(model)
    if ctx is not None and window > ctx:
        raise ValueError(f"eval window {window} is longer than the model's context ({ctx}); pass --window {ctx} or less")
    if batch_tokens < window:
        raise ValueError(f"batch_tokens ({batch_tokens}) must be at least the window ({window})")
    start = start_token_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    result = EvalResult()
    windows: list[tuple[int, list[int], int]] = []
    for doc, (text, ids) in enumerate(zip(texts, encoded)):
        seq = [start] + list(ids)
        stats = result.domains.setdefault(domains[doc], DomainStats())
        result.docs.append(DomainStats(docs=1, bytes=len(text.encode("utf-8")), tokens=len(ids)))
        stats.add(result.docs[-1])
        for s, e, first in plan_windows(len(seq), window, overlap):
            windows.append((doc, seq[s:e], first - s))
    windows.sort(key=lambda w: -len(w[1]))
    vocab = model.get_output_embeddings().weight.shape[0]
    budget = max(window, min(batch_tokens, MAX_LOGIT_ELEMENTS // max(vocab, 1)))
    batches, cur = [], []
    for w in windows:
        if cur and (len(cur) + 1) * len(cur[0][1]) > budget:
            batches.append(cur)
            cur = []
        cur.append(w)
    if cur:
        batches.append(cur)
    doc_nll = [0.0] * len(texts)
    t0 = time.perf_counter()
    for batch in tqdm(batches, desc="eval", unit="batch", disable=not progress):
        for doc, nll in _score_batch(model, batch, pad_id):
            doc_nll[doc] += nll
        result.forward_tokens += sum(len(ids) for _, ids, _ in batch)
    result.seconds = time.perf_counter() - t0
    for doc, nll in enumerate(doc_nll):
        result.domains[domains[doc]].nll_nats += nll
        result.docs[doc].nll_nats = nll
    return result


def bootstrap_bpb(docs: list[DomainStats], reference: list[DomainStats] | None = None, *, samples: int = 2000,
                  seed: int = 0, level: float = 0.95) -> dict:
    """A percentile-bootstrap interval over documents of the bits per byte of ``docs`` (one domain's), and, with
    ``reference`` (the same documents scored by another model), of the ratio bpb / reference bpb, resampling the
    documents once for both (a paired bootstrap)."""
    if not docs or (reference is not None and len(reference) != len(docs)):
        raise ValueError(f"{len(docs)} documents against {None if reference is None else len(reference)} references; "
                         "give the same documents, in the same order, scored by both models")
    nll = torch.tensor([d.nll_nats for d in docs], dtype=torch.float64)
    size = torch.tensor([d.bytes for d in docs], dtype=torch.float64)
    idx = torch.randint(0, len(docs), (samples, len(docs)), generator=torch.Generator().manual_seed(seed))
    bpb = nll[idx].sum(1) / size[idx].sum(1) / LN2
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    out = {"bits_per_byte": float(nll.sum() / size.sum() / LN2), "interval": [round(float(x), 4) for x in bpb.quantile(q)],
           "docs": len(docs), "level": level}
    if reference is not None:
        ref = torch.tensor([d.nll_nats for d in reference], dtype=torch.float64)
        ratio = nll[idx].sum(1) / ref[idx].sum(1)  # same bytes on both sides: the ratio of bits per byte
        out["ratio"] = float(nll.sum() / ref.sum())
        out["ratio_interval"] = [round(float(x), 4) for x in ratio.quantile(q)]
    return out
