"""Apply an init method to a student model: new embedding rows for the teacher's vocabulary, checked, saved."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xtok.registry import INIT_METHODS, check_methods
from xtok.transplant.methods import Space
from xtok.transplant.norms import check_row_norms, fit_row_norms, norm_range
from xtok.transplant.safety import check_coef_norm, scan
from xtok.utils.io import atomic_dir, write_json, write_provenance
from xtok.vocab.canonical import canonical_vocab
from xtok.vocab.shared import TokenMap, build_token_map

log = logging.getLogger(__name__)

REPORT_FILE = "transplant_report.json"


def _matrix(module, what: str, model) -> torch.Tensor:
    if module is None or not hasattr(module, "weight"):
        raise ValueError(f"unsupported architecture {type(model).__name__}: it has no {what} embedding matrix")
    w = module.weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError(f"NaN or Inf in the {what} embeddings of {type(model).__name__}; the weights are broken")
    return w


def head_module(model):
    """The model's output head, its input embeddings where it has no head of its own."""
    head = model.get_output_embeddings()
    return head if head is not None else model.get_input_embeddings()


def head_matrix(model) -> torch.Tensor:
    """The model's output head as float32, its input embeddings where it has no head of its own."""
    return _matrix(head_module(model), "output", model)


def is_tied(model) -> bool:
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return out is not None and inp.weight.data_ptr() == out.weight.data_ptr()


def _check_rows(tmap: TokenMap, student_rows: int, teacher_len: int, donor_rows: int | None) -> None:
    used = tmap.student_of[tmap.student_of >= 0]
    if len(used) and int(used.max()) >= student_rows:
        bad = int(used.max())
        raise ValueError(
            f"the student tokenizer has id {bad} but the student's embedding has only {student_rows} rows; "
            "give the matching tokenizer, or resize the student's embeddings to its tokenizer first"
        )
    if donor_rows is not None and teacher_len > donor_rows:
        raise ValueError(
            f"the teacher tokenizer has {teacher_len} tokens but the teacher's embedding has only {donor_rows} rows; "
            "give the teacher model that belongs to this tokenizer"
        )


@dataclass
class Plan:
    """What both transplant paths (in memory, streaming) share: the token map, the methods and the vocab rows."""

    tmap: TokenMap
    method: str
    head_method: str
    uses_k: bool
    rows: int  # the new model's embedding rows: the teacher's
    space: dict[str, Any]  # Space settings common to both spaces
    t0: float = field(default_factory=time.perf_counter)


def plan_transplant(student_tok, teacher_tok, *, method: str, head_method: str | None, donor: bool, student_rows: int,
                    donor_rows: int | None, teacher_vocab_size: int | None, k: int = 8, candidates: int | None = None,
                    chunk: int = 1024, dtype: str = "auto", alignment: Any = None, safety_z: float = 15.0,
                    max_coef_norm: float | None = None, head_context: float = 0.0, row_norms: str = "keep",
                    progress: bool = False) -> tuple[Plan, Any]:
    """Token map, anchors and checks, before any row is computed; returns (plan, what ``check_methods`` says is needed)."""
    head_method = head_method or method
    check_row_norms(row_norms)
    needs = check_methods(method, head_method, teacher_model=donor, alignment=alignment is not None,
                          fallback=None if alignment is None else alignment.fallback)
    t0 = time.perf_counter()
    tcv = canonical_vocab(teacher_tok)
    tmap = build_token_map(teacher_tok, student_tok, teacher_cv=tcv)
    anchor_t, anchor_s = tmap.anchors()
    if len(anchor_t) == 0:
        raise ValueError("the two tokenizers share no token (byte-canonically); a transplant needs shared anchors")
    if needs.alignment:
        alignment.check_tokenizers(teacher_tok, student_tok)
    if needs.uses_k and not 1 <= k <= len(anchor_t):
        raise ValueError(f"k={k} is larger than the {len(anchor_t)} shared anchor tokens; pass a k of at most {len(anchor_t)}")
    _check_rows(tmap, student_rows, len(teacher_tok), donor_rows)
    rows = max(len(teacher_tok), teacher_vocab_size or 0)  # the teacher's embedding rows: distill, vLLM expect them
    space = dict(anchor_teacher=anchor_t, anchor_student=anchor_s, teacher_bytes=tcv.bytes_of, student_tokenizer=student_tok,
                 k=k, candidates=candidates, chunk=chunk, dtype=dtype, progress=progress, alignment=alignment,
                 student_of=tmap.student_of, safety_z=safety_z, max_coef_norm=max_coef_norm, head_context=head_context,
                 row_norms=row_norms, code_cache={})
    return Plan(tmap, method, head_method, needs.uses_k, rows, space, t0), needs


ROW_SLICE = 16384  # new rows a row-wise method makes at a time: bounds the method's output, not only OMP's


def space_rows(plan: Plan, name: str, student: torch.Tensor, donor: torch.Tensor | None, calibration: Any = None,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, Any]]:
    """The (rows, d_s) matrix of one space in ``dtype``: shared rows copied, new rows by the space's method (computed
    in float32, ``ROW_SLICE`` tokens at a time where the method is row-wise; their norms held to the shared rows' range
    as ``row_norms`` says, except a head-only method's, whose rows carry calibrated logits), padding zero."""
    space = Space(name, student, donor, calibration=calibration, **plan.space)
    tmap = plan.tmap
    method = plan.method if name == "input" else plan.head_method
    out = torch.zeros((plan.rows, space.student.shape[1]), dtype=dtype)
    shared = tmap.shared_teacher_ids
    out[shared] = space.student[tmap.student_of[shared]].to(dtype)
    new = tmap.new_teacher_ids
    t0 = time.perf_counter()
    spec = INIT_METHODS.spec(method)
    shared_norms = space.student.norm(dim=1)[tmap.student_of[shared]]  # the range of row_norms, the safety scan's reference
    norms = {"mode": "keep" if spec.head_only else space.row_norms}
    if norms["mode"] != "keep" and len(new):
        norms["low"], norms["high"] = norm_range(shared_norms)
        norms["changed"] = 0

    def put(ids: torch.Tensor, rows: torch.Tensor) -> None:
        if not torch.isfinite(rows).all():
            raise RuntimeError(f"init method {method!r} produced NaN or Inf rows in the {space.name} space")
        out[ids] = rows.to(dtype)

    step = ROW_SLICE if spec.rowwise else max(len(new), 1)
    for s in range(0, len(new), step):
        rows = INIT_METHODS.get(method)(space, new[s:s + step])
        if "changed" in norms:
            rows, changed = fit_row_norms(rows, norms["low"], norms["high"], norms["mode"])
            norms["changed"] += changed
        put(new[s:s + step], rows)
    if space.replaced is not None:
        ids, replaced = space.replaced
        if len(ids) and tmap.student_of[ids].min() < 0:
            raise RuntimeError(f"init method {method!r} replaced rows of tokens that are not shared")
        put(ids, replaced)
    seconds = time.perf_counter() - t0
    safety = {}
    if space.codes:
        if space.max_coef_norm is not None:
            check_coef_norm(space.codes, space.max_coef_norm, space.teacher_bytes, space.name)
        safety["safety"] = scan(space.codes, out, shared_norms, space.teacher_bytes, space.safety_z)
    return out, {"copied": int(len(shared)), "approximated": int(len(new)) - space.fallbacks,
                 "fallback_to_mean": space.fallbacks, "method": method,
                 "padding_rows": plan.rows - len(tmap.how), "seconds": round(seconds, 2),
                 "row_norms": {k: round(v, 4) if isinstance(v, float) else v for k, v in norms.items()},
                 **space.details, **safety}


def transplant_report(plan: Plan, spaces: dict[str, dict], tied: bool, untie: bool, student_tok, teacher_tok) -> dict:
    """The report both paths write, with a warning logged for every space whose safety scan flagged rows."""
    tmap = plan.tmap
    report = {
        "method": plan.method, "head_method": plan.head_method, "k": plan.space["k"] if plan.uses_k else None,
        "candidates": plan.space["candidates"] if plan.uses_k else None, "tied_student": tied, "untied": untie,
        "teacher_tokenizer_kind": tmap.teacher_kind, "student_tokenizer_kind": tmap.student_kind,
        "tokens": tmap.counts(), "anchors": int(len(plan.space["anchor_teacher"])), "spaces": spaces,
        "special_tokens": [
            {"teacher": teacher_tok.convert_ids_to_tokens(m.teacher_id), "student": student_tok.convert_ids_to_tokens(m.student_id),
             "how": m.how} for m in tmap.specials
        ],
        "vocab_rows": plan.rows, "seconds": round(time.perf_counter() - plan.t0, 2),
    }
    log.info("transplant: %s", report["tokens"])
    for name, rep in spaces.items():
        flagged = rep.get("safety", {}).get("flagged_rows", [])
        if flagged:
            by = rep["safety"]["flagged_by"]
            hint = ""
            if by.get("row norm") and rep["row_norms"]["mode"] == "keep":
                hint = (f" ({by['row norm']} of them are longer than the student's own rows: --row-norms cap holds new "
                        "rows to the student's range)")
            log.warning("safety scan: %d new %s rows look like planted codes (robust z > %g against shared tokens), "
                        "e.g. %s%s; see 'safety' in %s", rep["safety"]["flagged"], name, plan.space["safety_z"],
                        ", ".join(repr(f["token"]) for f in flagged[:5]), hint, REPORT_FILE)
    return report


def transplant(
    student_model,
    student_tok,
    teacher_tok,
    *,
    teacher_model=None,
    teacher_vocab_size: int | None = None,
    method: str = "omp",
    head_method: str | None = "subword-prior",
    k: int = 8,
    candidates: int | None = None,
    chunk: int = 1024,
    dtype: str = "auto",
    alignment: Any = None,
    calibration_data: str = "bundled:train",
    calibration_tokens: int = 2048,
    head_context: float = 0.0,
    calibration_precision: str = "float32",
    row_norms: str = "keep",
    safety_z: float = 15.0,
    max_coef_norm: float | None = None,
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Return a copy of ``student_model`` speaking ``teacher_tok``, and a report of what was done.

    Shared tokens (byte-canonical, specials by role) are copied; the rest are made by ``method`` for
    the input embeddings (donor: the teacher's input embeddings) and by ``head_method`` for the
    output head (donor: the teacher's output head; None = ``method``). A tied student whose two
    methods differ is untied. The default head method is ``subword-prior``: signed OMP mixtures in a head
    give the ~100k new rows logits that take most of the probability mass (measured: 70% of it at
    positions whose target is a shared token); FOCUS's convex mixtures cannot outscore their anchors, and
    subword-prior gives each new token its first student piece's logit scaled down to the teacher's share
    (bits per byte below FOCUS's in every domain on SmolLM2 <- Qwen2.5 and <- Gemma-3).
    The new model has the teacher's embedding rows: ``teacher_model``'s, else ``teacher_vocab_size`` (a teacher
    given as a tokenizer only: its config's), else ``len(teacher_tok)``; rows past the tokenizer are zero.
    ``student_model`` is not modified. ``alignment`` (from ``xtok.align``) feeds the methods that need
    one (``tokalign``, ``tokalign+omp``). Methods that need a calibration (``subword-prior``) get one from
    ``calibration_tokens`` positions of ``calibration_data`` run through both models; ``head_context`` > 0 adds
    subword-prior's context term (the calibration then also fits the context map); ``calibration_precision`` (float32,
    bf16, auto: bf16 where it is fast) sets its forward passes' products. ``row_norms`` (keep, cap, clamp;
    ``xtok.transplant.norms``) holds the new rows' norms to the student's own range (the config's default is cap; here
    the rows are kept as made unless asked). Rows made from OMP codes are
    scanned for planted codes (``xtok.transplant.safety``): outliers past ``safety_z`` are listed in the report and
    logged, and ``max_coef_norm`` refuses the transplant where a code's coefficient norm exceeds it.
    """
    if teacher_vocab_size is None and teacher_model is not None:
        teacher_vocab_size = teacher_model.config.get_text_config().vocab_size
    s_in = _matrix(student_model.get_input_embeddings(), "input", student_model)
    d_in = _matrix(teacher_model.get_input_embeddings(), "input", teacher_model) if teacher_model is not None else None
    plan, needs = plan_transplant(student_tok, teacher_tok, method=method, head_method=head_method,
                                  donor=teacher_model is not None, student_rows=s_in.shape[0],
                                  donor_rows=None if d_in is None else d_in.shape[0], teacher_vocab_size=teacher_vocab_size,
                                  k=k, candidates=candidates, chunk=chunk, dtype=dtype, alignment=alignment,
                                  safety_z=safety_z, max_coef_norm=max_coef_norm, head_context=head_context,
                                  row_norms=row_norms, progress=progress)
    rows = plan.rows
    calibration = None
    if needs.calibration:
        calibration = calibrate_models(student_model, student_tok, teacher_tok, teacher_model=teacher_model,
                                       alignment=alignment, calibration_data=calibration_data,
                                       calibration_tokens=calibration_tokens, head_context=head_context,
                                       precision=calibration_precision)
    tied = is_tied(student_model)
    untie = tied and plan.head_method != plan.method
    new_in, rep_in = space_rows(plan, "input", s_in, d_in, calibration)
    spaces = {"input": rep_in}
    new_out = None
    if not tied or untie:
        s_out = _matrix(student_model.get_output_embeddings(), "output", student_model)
        d_out = head_matrix(teacher_model) if teacher_model is not None else None
        new_out, spaces["output"] = space_rows(plan, "output", s_out, d_out, calibration)

    model = copy.deepcopy(student_model)
    model.resize_token_embeddings(rows, mean_resizing=False)
    if untie:
        model.config.tie_word_embeddings = False
        model.set_output_embeddings(torch.nn.Linear(new_out.shape[1], rows, bias=False))
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(new_in)
        if new_out is not None:
            model.get_output_embeddings().weight.copy_(new_out)
    _set_special_ids(model, teacher_tok, teacher_model)
    check_port(model, rows, tied and not untie)
    return model, transplant_report(plan, spaces, tied, untie, student_tok, teacher_tok)


def calibrate_models(student_model, student_tok, teacher_tok, *, teacher_model=None, alignment: Any = None,
                     calibration_data: str = "bundled:train", calibration_tokens: int = 2048, head_context: float = 0.0,
                     precision: str = "float32"):
    """The calibration a head method that needs one (``subword-prior``) reads: ``calibration_tokens`` positions of
    ``calibration_data`` run through the student and the teacher model (the prior; with ``head_context`` > 0 also the
    context map), or, with a tokenizer-only teacher, the alignment's corpus counts as the prior. Both transplant paths
    call it: the in-memory one on its models, the streaming one before it lets the models go. ``precision`` (float32,
    bf16, auto) sets the forward passes' products (``xtok.utils.hardware.use_bf16``)."""
    from xtok.transplant.calibrate import calibrate, calibration_texts
    from xtok.utils.hardware import use_bf16

    return calibrate(student_model, student_tok, calibration_texts(calibration_data, calibration_tokens),
                     calibration_tokens, teacher_model=teacher_model, teacher_tok=teacher_tok,
                     counts=None if alignment is None else alignment.target.counts, context=head_context > 0,
                     bf16=use_bf16(precision))


def special_ids(teacher_tok) -> dict[str, int | None]:
    """The bos/eos/pad ids a transplant's config (and generation config) takes from the teacher's tokenizer."""
    return {f"{r}_token_id": getattr(teacher_tok, f"{r}_token_id") for r in ("bos", "eos", "pad")}


def _set_special_ids(model, teacher_tok, teacher_model) -> None:
    ids = special_ids(teacher_tok)
    for key, value in ids.items():
        setattr(model.config, key, value)
    if teacher_model is not None and getattr(teacher_model, "generation_config", None) is not None:
        model.generation_config = copy.deepcopy(teacher_model.generation_config)
    elif getattr(model, "generation_config", None) is not None:
        for key, value in ids.items():
            setattr(model.generation_config, key, value)


class PortError(RuntimeError):
    """The transplanted model does not match its architecture (a bug in a method or an unsupported architecture)."""


def check_port(model, rows: int, tied: bool) -> None:
    """Weight-port checks: every key and shape matches a fresh model of the new config; tying kept.

    Raises ``PortError`` (a RuntimeError, one line) naming the first keys that differ.
    """
    from transformers import AutoModelForCausalLM

    arch = type(model).__name__
    if model.config.vocab_size != rows:
        raise PortError(f"{arch}: config.vocab_size {model.config.vocab_size} != {rows} embedding rows after the transplant")
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(model.config)
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != got:
        diffs = [f"{k} has shape {got[k]}, the architecture wants {want[k]}" for k in sorted(want.keys() & got.keys())
                 if want[k] != got[k]]
        diffs += [f"{k} is missing" for k in sorted(want.keys() - got.keys())]
        diffs += [f"{k} is not in the architecture" for k in sorted(got.keys() - want.keys())]
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise PortError(f"the transplanted {arch} does not match a fresh one of its config: {'; '.join(diffs[:3])}{more}")
    if is_tied(model) != tied:
        raise PortError(f"the transplant {'untied' if tied else 'tied'} the input embeddings and output head of {arch}; "
                        f"expected them {'tied' if tied else 'untied'}")


def save_transplant(model, teacher_tok, out: str | Path, report: dict, config: Any = None, overwrite: bool = False,
                    dtype: str = "float32") -> Path:
    """Write a plain HF folder (teacher tokenizer, chat template, generation config) + report, atomically, the weights
    in ``dtype`` (the model itself is not converted: its float32 rows stay for the caller)."""
    from xtok.models.load import torch_dtype

    with atomic_dir(out, overwrite=overwrite) as tmp:
        if torch_dtype(dtype) == model.dtype:
            model.save_pretrained(tmp)
        else:
            copy.deepcopy(model).to(torch_dtype(dtype)).save_pretrained(tmp)
        write_sidecars(tmp, teacher_tok, report, config)
    return Path(out)


def write_sidecars(folder: Path, teacher_tok, report: dict, config: Any = None) -> None:
    """The tokenizer, report and provenance next to a transplant's weights."""
    teacher_tok.save_pretrained(folder)
    write_json(folder / REPORT_FILE, report)
    write_provenance(folder, config, step="transplant")
