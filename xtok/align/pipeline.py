"""TokAlign in one call: tokenize, count, embed both sides, map the target vocabulary onto the source one."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import torch

from xtok.align.cooc import cooccurrence, frequent_ids, tokenize
from xtok.align.embed import EmbedOptions, embed
from xtok.align.mapping import ALIGNED, NO_VECTOR, SHARED, Side, check_pivots, holdout_quality, map_rows, pivot_rows, shared_pairs
from xtok.align.result import Alignment
from xtok.vocab.canonical import canonical_vocab
from xtok.vocab.identity import vocab_fingerprint
from xtok.vocab.shared import build_token_map

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignSettings:
    embedding: str = "ppmi-svd"
    window: int = 15
    min_count: int = 5
    pivots: int | None = None  # most frequent shared tokens used as pivots (at least dims); None = all
    holdout: float = 0.1  # share of shared tokens hidden from the pivots for the quality report
    top_k: int = 5
    chunk: int = 1024  # target tokens per mapping step: bounds the (chunk, V_s) similarity block
    fallback: str = "subword"
    embed: EmbedOptions = field(default_factory=EmbedOptions)


def side_vectors(tokenizer, texts: list[str], settings: AlignSettings, timings: dict, name: str,
                 specials: set[int] | frozenset[int] = frozenset()) -> Side:
    """Tokenize, count and embed one side (``specials`` get no vector); timings[name] gets tokens, seconds and rates."""
    t0 = time.perf_counter()
    stream = tokenize(tokenizer, texts)
    t1 = time.perf_counter()
    counts = stream.counts()
    keep = frequent_ids(counts, settings.min_count)
    keep = keep[torch.tensor([int(i) not in specials for i in keep], dtype=torch.bool)] if specials else keep
    cooc = cooccurrence(stream, keep, settings.window)
    t2 = time.perf_counter()
    vectors = embed(cooc, settings.embedding, settings.embed)
    t3 = time.perf_counter()
    n = len(stream.ids)
    timings[name] = {"tokens": n, "tokens_with_vector_vocab": len(keep), "cooc_nonzeros": len(cooc.vals),
                     "tokenize_s": round(t1 - t0, 2), "cooc_s": round(t2 - t1, 2), "embed_s": round(t3 - t2, 2),
                     "tokenize_tokens_per_s": round(n / max(t1 - t0, 1e-9)), "cooc_tokens_per_s": round(n / max(t2 - t1, 1e-9)),
                     "embed_tokens_per_s": round(n / max(t3 - t2, 1e-9))}
    log.info("%s: %d tokens, %d with vectors, %d co-occurring pairs", name, n, len(keep), len(cooc.vals))
    return Side(keep, vectors, counts, stream.vocab_size)


def align(target_tok, source_tok, texts: list[str], settings: AlignSettings = AlignSettings()) -> tuple[Alignment, dict]:
    """Map every target token id to a source token id; return the alignment and its report.

    Byte-shared tokens and specials paired by role keep their exact partner; every other target
    token with a co-occurrence vector maps to its nearest source token by relative representation;
    the rest are marked ``no_vector`` for ``settings.fallback`` to initialize.
    """
    if not texts or not any(t.strip() for t in texts):
        raise ValueError("the corpus is empty; give --corpus a jsonl/txt file or folder with text")
    dims = settings.embed.dims
    if settings.pivots is not None and settings.pivots < dims:
        raise ValueError(f"pivots={settings.pivots} is fewer than dims={dims}; pass --pivots of at least {dims} or lower --dims")
    t_start = time.perf_counter()
    tcv, scv = canonical_vocab(target_tok), canonical_vocab(source_tok)
    tmap = build_token_map(target_tok, source_tok, teacher_cv=tcv, student_cv=scv)
    anchor_t, anchor_s = tmap.anchors()
    if len(anchor_t) == 0:
        raise ValueError("the two tokenizers share no token (byte-canonically); TokAlign needs shared pivot tokens")
    timings: dict = {}
    target = side_vectors(target_tok, texts, settings, timings, "target", set(tcv.special))
    source = side_vectors(source_tok, texts, settings, timings, "source", set(scv.special))
    pairs = shared_pairs(anchor_t, anchor_s, target, source)
    check_pivots(len(pairs[0]), dims)
    n_piv = min(settings.pivots or len(pairs[0]), len(pairs[0]))
    t0 = time.perf_counter()
    quality = holdout_quality(pairs, target, source, fraction=settings.holdout, pivots=n_piv, top_k=settings.top_k,
                              chunk=settings.chunk, seed=settings.embed.seed)
    t1 = time.perf_counter()
    scores, idx = map_rows(target, source, pivot_rows(*pairs, target, source, n_piv), torch.arange(len(target.ids)),
                           top_k=1, chunk=settings.chunk)
    timings["map_s"], timings["holdout_s"] = round(time.perf_counter() - t1, 2), round(t1 - t0, 2)
    best = source.ids[idx[:, 0]]  # (n_t,) source token id per target vector row
    t_row = target.row_of()
    agree = best[t_row[pairs[0]]] == pairs[1]
    quality["shared_agreement"] = round(agree.float().mean().item(), 4)
    quality["shared_evaluated"] = len(pairs[0])

    source_of = tmap.student_of.clone()
    score = torch.full((len(source_of),), float("nan"))
    how = [SHARED if s >= 0 else NO_VECTOR for s in source_of.tolist()]
    free = source_of[target.ids] < 0
    for tid, sid, sc in zip(target.ids[free].tolist(), best[free].tolist(), scores[free, 0].tolist()):
        source_of[tid], how[tid], score[tid] = sid, ALIGNED, sc
    al = Alignment(source_of, how, score, target, source, vocab_fingerprint(target_tok), vocab_fingerprint(source_tok),
                   settings.fallback)
    counts = al.counts()
    if counts[NO_VECTOR]:
        log.warning("%d target tokens are too rare in the corpus for a vector (min count %d); they get %s init",
                    counts[NO_VECTOR], settings.min_count, settings.fallback)
    report = {"settings": asdict(settings), "tokens": counts | {"shared_bytes": int(len(anchor_t)),
                                                               "shared_special": len(tmap.specials)},
              "no_vector_fallback": settings.fallback, "pivots": n_piv, "quality": quality, "timings": timings,
              "seconds": round(time.perf_counter() - t_start, 2)}
    return al, report
