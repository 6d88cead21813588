"""The eval job: load data once, score each model, write one JSON."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from xtok.config import EvalConfig
from xtok.corpus import load_corpus, prompts_in_turn
from xtok.eval.agreement import greedy_agreement
from xtok.eval.bpb import evaluate
from xtok.eval.numbers import digit_split_stats
from xtok.models.load import load_model
from xtok.utils.io import provenance, write_json

log = logging.getLogger(__name__)


def eval_model(model, tokenizer, name: str, ds, cfg: EvalConfig, progress: bool = True) -> dict:
    settings = cfg.eval
    texts, domains = list(ds["text"]), list(ds["domain"])
    res = evaluate(
        model, tokenizer, texts, domains, window=settings.window, overlap=settings.overlap,
        batch_tokens=settings.tokens_per_batch, progress=progress,
    ).to_dict()
    out = {"model": name, **res}
    if settings.numbers:
        numbers = [t for t, d in zip(texts, domains) if d == "numbers"] or texts[:20]
        out["numbers"] = digit_split_stats(tokenizer, numbers)
    return out


def run_eval(cfg: EvalConfig, cache_dir: str | Path | None = None, out: str | Path | None = None, progress: bool = True) -> list[dict]:
    ds = load_corpus(cfg.data.spec, domains=cfg.data.domains, max_docs_per_domain=cfg.data.max_docs_per_domain,
                     max_chars_per_doc=cfg.data.max_chars_per_doc)
    results = []
    against = None
    if cfg.against is not None:
        a = cfg.agreement
        against = load_model(cfg.against, cache_dir, dtype=cfg.eval.dtype)
        prompts = prompts_in_turn(list(ds["text"]), list(ds["domain"]), a.prompts, a.prompt_chars)
    for spec in cfg.models:
        log.info("evaluating %s on %d documents", spec, len(ds))
        model, tokenizer = load_model(spec, cache_dir, dtype=cfg.eval.dtype)
        results.append(eval_model(model, tokenizer, spec, ds, cfg, progress))
        if against is not None:
            results[-1]["agreement"] = {"against": cfg.against, **greedy_agreement(
                model, tokenizer, *against, prompts, cfg.agreement.max_new_tokens)}
        del model
        gc.collect()
    if out is not None:
        write_json(out, {"results": results, "provenance": provenance(cfg)})
    return results
