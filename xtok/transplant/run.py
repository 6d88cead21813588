"""The transplant job: resolve models, transplant, save a loadable folder with its report."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from xtok.align.result import load_alignment
from xtok.config import TransplantConfig
from xtok.corpus import load_corpus
from xtok.models.catalogue import CATALOGUE
from xtok.models.load import (
    folder_parameters,
    is_prepared,
    load_causal_lm,
    load_model,
    load_tokenizer,
    resolve_model,
    resolve_tokenizer,
    stored_dtype,
)
from xtok.registry import check_methods
from xtok.transplant.apply import head_module, is_tied, save_transplant, transplant, write_sidecars
from xtok.transplant.methods import first_piece_table
from xtok.utils.io import atomic_dir, check_output_path

log = logging.getLogger(__name__)


def teacher_vocab_size(spec: str | Path, cache_dir: str | Path | None = None) -> int | None:
    """The teacher's embedding rows (``config.vocab_size``, often more than its tokenizer's tokens), read without weights.

    A catalogue model not converted yet gives its catalogue entry's; a bare tokenizer (no config) gives None.
    """
    from transformers import AutoConfig

    spec_s = str(spec)
    if spec_s in CATALOGUE and not is_prepared(spec_s, cache_dir):
        return CATALOGUE[spec_s].vocab_size
    where = resolve_tokenizer(spec_s, cache_dir)  # a folder (a model's, a prepared catalogue one, has config.json) or a hub id
    if Path(where).is_dir() and not (Path(where) / "config.json").is_file():
        return None
    try:
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as exc:  # a hub id not in the local cache, a config transformers cannot read
        log.warning("could not read the config of teacher %s (%s); its embedding rows = its tokenizer's tokens", spec_s, exc)
        return None
    return getattr(config.get_text_config(), "vocab_size", None)


def run_transplant(cfg: TransplantConfig, cache_dir: str | Path | None = None, progress: bool = True) -> tuple[Path, dict]:
    if cfg.out is None:
        raise ValueError("no output folder: pass --out DIR (or set out: in the config)")
    out = check_output_path(cfg.out, cfg.overwrite)  # fail before loading anything
    alignment = load_alignment(cfg.alignment) if cfg.alignment else None
    needs = check_methods(cfg.method, cfg.head_method, teacher_model=not cfg.teacher_tokenizer_only,
                          alignment=alignment is not None, fallback=None if alignment is None else alignment.fallback)
    runs_models = needs.calibration or cfg.head_fit_tokens
    if runs_models:
        load_corpus(cfg.calibration_data, max_docs_per_domain=1)  # a missing corpus fails here, not after loading models
    # the student's folder, and the teacher's where its embeddings are read (catalogue models converted once, here)
    teacher_runs = cfg.head_fit_teacher_weight > 0 or cfg.head_fit_share_map != "off"  # the head fit runs the teacher
    folders = [resolve_model(cfg.student, cache_dir)] + \
        ([resolve_model(cfg.teacher, cache_dir)] if needs.teacher_model or teacher_runs else [])
    if not cfg.head_fit_tokens and all(any(Path(f).glob("*.safetensors")) for f in folders):
        # the models run only for a calibration (subword-prior), made first and let go: then the weights are streamed
        tokenizers = load_tokenizer(folders[0]), load_tokenizer(folders[1] if len(folders) > 1 else cfg.teacher, cache_dir)
        calibration = _calibration(cfg, folders, tokenizers, alignment) if needs.calibration else None
        return out, _run_streaming(cfg, out, alignment, folders, tokenizers, cache_dir, progress, calibration)
    check_memory(folders)  # the head fit trains the transplanted model's head: the in-memory path
    student, student_tok = load_model(folders[0], cache_dir)
    if cfg.head_fit_tokens and is_tied(student) and (cfg.head_method or cfg.method) == cfg.method:
        raise ValueError(f"head_fit_tokens={cfg.head_fit_tokens} needs an untied head, but {cfg.student} ties its head to "
                         f"its input embeddings and both use {cfg.method}; give a head method of its own (subword-prior)")
    teacher_model = None
    if len(folders) > 1:
        teacher_model, teacher_tok = load_model(folders[1], cache_dir)
    else:
        teacher_tok = load_tokenizer(cfg.teacher, cache_dir)
    model, report = transplant_in_memory(cfg, student, student_tok, teacher_tok, teacher_model, alignment, cache_dir,
                                         progress)
    report.update(student=cfg.student, teacher=cfg.teacher)
    family_of = first_piece_table(teacher_tok, student_tok, head_module(student).weight.shape[0]) \
        if cfg.head_fit_share_map != "off" else None
    del student
    if not teacher_runs:
        teacher_model = None
    gc.collect()
    if cfg.head_fit_tokens:
        from xtok.transplant.calibrate import calibration_texts
        from xtok.transplant.head_fit import fit_head

        texts = calibration_texts(cfg.calibration_data, cfg.head_fit_tokens)
        report["head_fit"] = fit_head(model, teacher_tok, texts, tokens=cfg.head_fit_tokens, l2=cfg.head_fit_l2,
                                      iterations=cfg.head_fit_iterations, teacher=teacher_model,
                                      teacher_weight=cfg.head_fit_teacher_weight, top_k=cfg.head_fit_top_k,
                                      family_of=family_of, share_scope=cfg.head_fit_share_map)
        del teacher_model
        report["seconds"] = round(report["seconds"] + report["head_fit"]["seconds"], 2)
    report["dtype"] = stored_dtype(folders[0]) if cfg.out_dtype == "source" else cfg.out_dtype
    save_transplant(model, teacher_tok, out, report, cfg, overwrite=cfg.overwrite, dtype=report["dtype"])
    return out, report


def transplant_in_memory(cfg: TransplantConfig, student, student_tok, teacher_tok, teacher_model=None, alignment=None,
                         cache_dir: str | Path | None = None, progress: bool = False):
    """``apply.transplant`` of the loaded ``student`` with ``cfg``'s settings: (the transplanted copy, its report). The
    in-memory path (the head fit's), which ``check_stream_equal.py`` compares with the streaming one."""
    return transplant(student, student_tok, teacher_tok, teacher_model=teacher_model, method=cfg.method,
                      teacher_vocab_size=None if teacher_model is not None else teacher_vocab_size(cfg.teacher, cache_dir),
                      head_method=cfg.head_method, alignment=alignment, calibration_data=cfg.calibration_data,
                      calibration_tokens=cfg.calibration_tokens, head_context=cfg.head_context,
                      calibration_precision=cfg.calibration_precision, row_norms=cfg.row_norms,
                      safety_z=cfg.safety_z, max_coef_norm=cfg.max_coef_norm,
                      k=cfg.k, candidates=None if cfg.exact else cfg.candidates, chunk=cfg.chunk, dtype=cfg.dtype,
                      progress=progress)


def _calibration(cfg: TransplantConfig, folders: list[str], tokenizers: tuple, alignment):
    """The head method's calibration, on the student and (where the head method reads it) the teacher model loaded
    for it alone and let go before the streaming transplant starts; ``tokenizers`` (student's, teacher's)."""
    from xtok.transplant.apply import calibrate_models

    check_memory(folders, student_copies=1)
    student_tok, teacher_tok = tokenizers
    student = load_causal_lm(folders[0])
    teacher_model = load_causal_lm(folders[1]) if len(folders) > 1 else None
    calibration = calibrate_models(student, student_tok, teacher_tok, teacher_model=teacher_model, alignment=alignment,
                                   calibration_data=cfg.calibration_data, calibration_tokens=cfg.calibration_tokens,
                                   head_context=cfg.head_context, precision=cfg.calibration_precision)
    del student, teacher_model
    gc.collect()
    return calibration


def _run_streaming(cfg: TransplantConfig, out: Path, alignment, folders: list[str], tokenizers: tuple, cache_dir,
                   progress: bool, calibration=None) -> dict:
    from xtok.transplant.stream import stream_transplant

    student_dir, teacher_dir = folders[0], folders[1] if len(folders) > 1 else None
    student_tok, teacher_tok = tokenizers
    out_dtype = stored_dtype(student_dir) if cfg.out_dtype == "source" else cfg.out_dtype
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        report = stream_transplant(
            student_dir, student_tok, teacher_tok, tmp, teacher_dir=teacher_dir, out_dtype=out_dtype, method=cfg.method,
            head_method=cfg.head_method, alignment=alignment, progress=progress,
            teacher_vocab_size=None if teacher_dir else teacher_vocab_size(cfg.teacher, cache_dir), k=cfg.k,
            candidates=None if cfg.exact else cfg.candidates, chunk=cfg.chunk, dtype=cfg.dtype, safety_z=cfg.safety_z,
            max_coef_norm=cfg.max_coef_norm, head_context=cfg.head_context, row_norms=cfg.row_norms,
            calibration=calibration)
        report.update(student=cfg.student, teacher=cfg.teacher, dtype=out_dtype)
        if calibration is not None:  # made before the plan's clock started: counted as the in-memory path counts it
            report["seconds"] = round(report["seconds"] + calibration.seconds, 2)
        write_sidecars(tmp, teacher_tok, report, cfg)
    return report


def available_memory() -> int | None:
    """Bytes the kernel says a new process can use (MemAvailable), None where /proc/meminfo is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(folders: list[str], student_copies: int = 2) -> None:
    """A transplant that runs the models holds the student (``folders[0]``; twice in the head fit's in-memory path,
    which copies it; once for a calibration) and the teacher (``folders[1]``, where loaded) in float32: refuse up
    front where that exceeds what the machine has, naming the route that runs no model."""
    sizes = [4 * folder_parameters(f) for f in folders]
    need = student_copies * sizes[0] + sum(sizes[1:])
    have = available_memory()
    if have is not None and need > have:
        what = "the head fit" if student_copies > 1 else "the calibration"
        raise ValueError(f"{what} needs about {need / 2**30:.1f} GiB (the student{' twice' if student_copies > 1 else ''}"
                         f"{' and the teacher' if len(sizes) > 1 else ''}, in float32), and this machine has "
                         f"{have / 2**30:.1f} GiB available; use a head method that runs no model (e.g. --head-method "
                         f"omp) and no head fit, which streams the models with only their embedding matrices in memory")
