"""The align job: load tokenizers and corpus, align, write the map and its report (and, with apply, a model)."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from xtok.align.embed import EmbedOptions
from xtok.align.pipeline import AlignSettings, align
from xtok.align.result import REPORT_FILE, Alignment, save_alignment
from xtok.config import AlignConfig
from xtok.corpus import load_corpus
from xtok.models.load import load_model, load_tokenizer
from xtok.registry import check_methods
from xtok.utils.io import atomic_dir, check_output_path, write_json, write_provenance

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"


def settings_from(cfg: AlignConfig, progress: bool = False) -> AlignSettings:
    opts = EmbedOptions(dims=cfg.dims, seed=cfg.seed, iters=cfg.glove_iters, x_max=cfg.glove_x_max, lr=cfg.glove_lr,
                        svd_power=cfg.svd_power, progress=progress)
    return AlignSettings(embedding=cfg.embedding, window=cfg.window, min_count=cfg.min_count, pivots=cfg.pivots,
                         holdout=cfg.holdout, chunk=cfg.chunk, fallback=cfg.fallback, embed=opts)


def apply_alignment(cfg: AlignConfig, al: Alignment, student, student_tok, target_tok, cache_dir=None,
                    progress: bool = False):
    """The source model speaking the target tokenizer, new rows by ``cfg.method`` / ``cfg.head_method``.

    This job is the one place that composes the two layers: align (below) and transplant (above it)."""
    from xtok.transplant.apply import transplant
    from xtok.transplant.run import teacher_vocab_size

    teacher = None
    if check_methods(cfg.method, cfg.head_method, alignment=True, fallback=al.fallback).teacher_model:
        teacher, _ = load_model(cfg.target, cache_dir)
    model, report = transplant(student, student_tok, target_tok, teacher_model=teacher, method=cfg.method,
                               teacher_vocab_size=None if teacher is not None else teacher_vocab_size(cfg.target, cache_dir),
                               head_method=cfg.head_method or cfg.method, k=cfg.k, candidates=cfg.candidates,
                               chunk=cfg.chunk, alignment=al, progress=progress)
    del teacher
    gc.collect()
    return model, report


def run_align(cfg: AlignConfig, cache_dir: str | Path | None = None, progress: bool = True) -> tuple[Path, dict]:
    if cfg.out is None:
        raise ValueError("no output folder: pass --out DIR (or set out: in the config)")
    out = check_output_path(cfg.out, cfg.overwrite)  # fail before any work
    d = cfg.data
    ds = load_corpus(d.spec, domains=d.domains, max_docs_per_domain=d.max_docs_per_domain, max_chars_per_doc=d.max_chars_per_doc)
    texts = list(ds["text"])
    target_tok = load_tokenizer(cfg.target, cache_dir)
    student = None
    if cfg.apply:  # the model now: its own tokenizer is the source side, loaded once
        student, source_tok = load_model(cfg.source, cache_dir)
    else:
        source_tok = load_tokenizer(cfg.source, cache_dir)
    log.info("aligning %s -> %s on %d documents (%d chars)", cfg.target, cfg.source, len(texts), sum(map(len, texts)))
    al, report = align(target_tok, source_tok, texts, settings_from(cfg, progress))
    report.update(source=cfg.source, target=cfg.target, corpus={"spec": d.spec, "documents": len(texts),
                                                                 "chars": sum(map(len, texts))})
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        save_alignment(al, tmp)
        if cfg.apply:
            from xtok.transplant.apply import save_transplant

            model, t_report = apply_alignment(cfg, al, student, source_tok, target_tok, cache_dir, progress)
            t_report.update(student=cfg.source, teacher=cfg.target)
            save_transplant(model, target_tok, tmp / MODEL_SUBDIR, t_report, cfg)
            report["apply"] = {"folder": MODEL_SUBDIR, "method": t_report["method"], "head_method": t_report["head_method"],
                               "spaces": t_report["spaces"]}
        write_json(tmp / REPORT_FILE, report)
        write_provenance(tmp, cfg, step="align")
    return out, report
