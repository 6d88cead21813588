"""The draft-check job: held-out prompts, the chosen backend, one JSON."""

from __future__ import annotations

import logging
from pathlib import Path

from xtok.config import DraftCheckConfig
from xtok.corpus import load_corpus, prompts_in_turn
from xtok.models.load import load_model, load_tokenizer, resolve_model
from xtok.registry import DRAFT_BACKENDS
from xtok.speculative.draft_vocab import frequent_tokens
from xtok.utils.io import provenance, write_json

log = logging.getLogger(__name__)


def corpus_prompts(spec: str, n: int, chars: int, domains: list[str] | None = None) -> list[str]:
    """The first ``chars`` characters of ``n`` documents (of ``domains``, where given), taken round-robin across domains."""
    ds = load_corpus(spec, domains=domains)
    prompts = prompts_in_turn(list(ds["text"]), list(ds["domain"]), n, chars)
    if len(prompts) < n:
        raise ValueError(f"num_prompts={n} but {spec!r}{f' (domains {domains})' if domains else ''} holds only "
                         f"{len(prompts)} documents; lower num_prompts or give more documents")
    return prompts


def run_draft_check(cfg: DraftCheckConfig, cache_dir: str | Path | None = None, out: str | Path | None = None,
                    progress: bool = False) -> dict:
    """Each backend gets what its registry entry ``takes``: loaded models, or model folders it loads itself."""
    backend = DRAFT_BACKENDS.get(cfg.backend)
    prompts = corpus_prompts(cfg.prompts, cfg.num_prompts, cfg.prompt_chars, cfg.prompt_domains)
    if DRAFT_BACKENDS.meta(cfg.backend).get("takes") == "folders":
        target, drafter = resolve_model(cfg.target, cache_dir), resolve_model(cfg.drafter, cache_dir)
        tok, d_tok = load_tokenizer(target), load_tokenizer(drafter)
        options = {"dtype": cfg.dtype}
    else:
        target, tok = load_model(cfg.target, cache_dir, dtype=cfg.dtype)
        drafter, d_tok = load_model(cfg.drafter, cache_dir, dtype=cfg.dtype)
        options = {}
    if cfg.draft_vocab:
        texts = list(load_corpus(cfg.draft_vocab_corpus)["text"])
        options["draft_vocab"] = frequent_tokens(tok, texts, cfg.draft_vocab)
    res = backend(target, drafter, tok, prompts, k=cfg.k, max_new_tokens=cfg.max_new_tokens, drafter_tokenizer=d_tok,
                  cross_tokenizer=cfg.cross_tokenizer, progress=progress, **options)
    res.update(target=cfg.target, drafter=cfg.drafter, backend=cfg.backend)
    if out is not None:
        write_json(out, {"result": res, "provenance": provenance(cfg)})
    return res
