"""The ensemble job: bits per byte of each member and of their mixture, per domain; optionally a generation."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from xtok.config import EnsembleConfig
from xtok.corpus import load_corpus
from xtok.ensemble.mix import Ensemble, check_members, normalized_weights
from xtok.eval.run import eval_model
from xtok.models.load import load_model
from xtok.utils.io import provenance, write_json

log = logging.getLogger(__name__)


def run_ensemble(cfg: EnsembleConfig, cache_dir: str | Path | None = None, out: str | Path | None = None,
                 progress: bool = True) -> dict:
    loaded = [load_model(spec, cache_dir, dtype=cfg.eval.dtype) for spec in cfg.models]
    models, toks = [m for m, _ in loaded], [t for _, t in loaded]
    check_members(models, toks, cfg.models)
    weights = normalized_weights(cfg.weights, len(models))
    ds = load_corpus(cfg.data.spec, domains=cfg.data.domains, max_docs_per_domain=cfg.data.max_docs_per_domain,
                     max_chars_per_doc=cfg.data.max_chars_per_doc)
    members = [eval_model(m, toks[0], spec, ds, cfg, progress) for m, spec in zip(models, cfg.models)]
    ens = Ensemble(models, weights, cfg.mode).eval()
    label = f"ensemble ({cfg.mode}; " + ", ".join(f"{w:.2f}" for w in weights.tolist()) + ")"
    mixed = eval_model(ens, toks[0], label, ds, cfg, progress)
    result = {"mode": cfg.mode, "weights": weights.tolist(), "members": members, "ensemble": mixed}
    if cfg.prompt:
        ids = toks[0](cfg.prompt, return_tensors="pt")["input_ids"]
        gen = ens.generate(ids, cfg.max_new_tokens, eos_token_id=toks[0].eos_token_id)
        result["generation"] = {"prompt": cfg.prompt, "text": toks[0].decode(gen[0, ids.shape[1]:], skip_special_tokens=True)}
    del ens, models
    gc.collect()
    if out is not None:
        write_json(out, {"result": result, "provenance": provenance(cfg)})
    return result


def best_member_gap(result: dict) -> dict[str, float]:
    """Per domain: ensemble bits per byte minus the best member's (negative = the ensemble is better)."""
    gaps = {}
    for dom, stats in result["ensemble"]["domains"].items():
        best = min(m["domains"][dom]["bits_per_byte"] for m in result["members"])
        gaps[dom] = stats["bits_per_byte"] - best
    return gaps
