"""The distill job: packed data, an optional offline teacher cache, then each progressive stage on a Trainer.

The run is built in a hidden sibling of the output, ``.NAME.partial``, and renamed into place when
every stage has finished, so ``out`` is always complete: the final Hugging Face model at its top
level, each stage's boundary model under ``stages/``, the loss curves in ``distill_log.json``. A
rerun with the same config resumes: finished stages are skipped, an interrupted stage continues
from its last Trainer checkpoint (optimizer, scheduler, RNG and data position included). Under
``accelerate launch``/``torchrun`` (DDP) every process runs this function; the main process writes.
An FSDP launch is refused (``check_launch``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoConfig, PrinterCallback, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from xtok.config import DistillConfig
from xtok.distill.data import BlockDataset, teacher_tokenization, training_blocks
from xtok.distill.generations import teacher_generations
from xtok.distill.stages import changed_rows, merge_lora, prepare_stage
from xtok.distill.teacher_cache import build_cache
from xtok.distill.trainer import DistillTrainer, check_same_vocab
from xtok.models.load import load_model, load_tokenizer, resolve_model
from xtok.registry import LOSSES
from xtok.utils.hardware import use_bf16
from xtok.utils.io import atomic_dir, check_output_path, provenance, write_json
from xtok.vocab.chunks import paired_tokenization
from xtok.vocab.identity import vocab_fingerprint

log = logging.getLogger(__name__)

RUN_FILE = "distill_run.json"


class TimeBudget(TrainerCallback):
    """Stop training at a wall-clock deadline (``time.monotonic()`` seconds, rank 0's clock); the stage then ends as if
    finished. The budget is per invocation: a resumed run gets it again."""

    def __init__(self, deadline: float):
        self.deadline, self.hit = deadline, False

    def on_step_end(self, args, state, control, **kwargs):
        late = time.monotonic() >= self.deadline
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every rank stops on one step
            flag = torch.tensor([int(late)], device=args.device)
            torch.distributed.broadcast(flag, 0)
            late = bool(flag.item())
        if late:
            self.hit = control.should_training_stop = True
        return control


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def stage_name(i: int, stage) -> str:
    return f"stage-{i + 1}-{stage.train}"


def _run_key(cfg: DistillConfig) -> dict:
    """What must not change between an interrupted run and its resumption."""
    return cfg.model_dump(exclude={"out", "overwrite", "report_to", "logging_steps", "max_minutes"})


def _open_run(cfg: DistillConfig, out: Path, state: PartialState) -> Path:
    """The partial run folder: new, or an interrupted run of the same config to resume."""
    run = partial_dir(out)
    if state.is_main_process:
        if cfg.overwrite and run.exists():
            shutil.rmtree(run)
        if run.exists():
            saved = json.loads((run / RUN_FILE).read_text()) if (run / RUN_FILE).is_file() else None
            if saved != _run_key(cfg):
                raise ValueError(f"{run} holds an interrupted run of another config; pass --overwrite to start over, "
                                 "or rerun with the config it was started with to resume it")
            log.info("resuming the interrupted run in %s", run)
        else:
            run.mkdir(parents=True)
            write_json(run / RUN_FILE, _run_key(cfg))
    state.wait_for_everyone()
    return run


def check_tokenizers(student_tok, teacher_tok, student_spec: str, teacher_spec: str) -> None:
    if vocab_fingerprint(student_tok) != vocab_fingerprint(teacher_tok):
        raise ValueError(f"student {student_spec} and teacher {teacher_spec} have different tokenizers "
                         f"({len(student_tok)} vs {len(teacher_tok)} tokens): token-level distillation needs one "
                         f"vocabulary; transplant first: xtok transplant --student {student_spec} --teacher {teacher_spec}")


def _training_args(cfg: DistillConfig, stage, folder: Path, progress: bool) -> TrainingArguments:
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(folder / "checkpoints"), use_cpu=not cuda, bf16=use_bf16(cfg.precision), max_steps=stage.steps,
        learning_rate=stage.learning_rate, lr_scheduler_type=stage.scheduler, warmup_steps=stage.warmup_ratio,
        weight_decay=stage.weight_decay, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1, report_to=list(cfg.report_to),
        seed=cfg.seed, data_seed=cfg.seed, remove_unused_columns=False, ddp_find_unused_parameters=False,
        dataloader_num_workers=0, dataloader_pin_memory=cuda, disable_tqdm=not progress,
        gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def _save_model(model, tokenizer, folder: Path) -> None:
    with atomic_dir(folder, overwrite=True) as tmp:
        merge_lora(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _run_stage(cfg: DistillConfig, i: int, stage, model_spec: str, tokenizer, teacher, dataset, run: Path,
               state: PartialState, callbacks, progress: bool, rows=None, budget: TimeBudget | None = None,
               donor=None) -> dict:
    folder = run / "stages" / stage_name(i, stage)
    model, _ = load_model(model_spec)
    model.config.use_cache = False
    setup = prepare_stage(model, stage, rows, donor)
    model = setup.model
    log.info("%s: training %d tensors (%.1fM parameters) for %d steps", stage_name(i, stage), len(setup.names),
             setup.parameters / 1e6, stage.steps)
    args = _training_args(cfg, stage, folder, progress)
    trainer = DistillTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, teacher=teacher,
                             loss=cfg.loss, beta=cfg.beta, temperature=cfg.temperature, ce_weight=cfg.ce_weight,
                             loss_chunk=cfg.loss_chunk, on_policy=cfg.on_policy.lmbda, prompt_tokens=cfg.on_policy.prompt_tokens,
                             sample_temperature=cfg.on_policy.temperature, fused_head=cfg.fused_head,
                             trained_rows=setup.trained_rows, row_gate=setup.gate, maps=setup.maps,
                             map_lr=stage.map_lr,
                             callbacks=list(callbacks) + ([budget] if budget is not None else []))
    if not progress:  # quiet as a library: the losses are in the returned log_history
        trainer.remove_callback(PrinterCallback)
    ckpt = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if ckpt:
        log.info("%s: resuming from %s", stage_name(i, stage), ckpt)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=ckpt)
    seconds = time.perf_counter() - t0
    steps_done = trainer.state.global_step - (int(Path(ckpt).name.split("-")[-1]) if ckpt else 0)
    tokens = steps_done * cfg.batch_size * cfg.grad_accum * cfg.seq_len * state.num_processes
    optimizer_name = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__  # accelerate wraps it
    summary = {
        "stage": stage_name(i, stage), "train": stage.train, "steps": trainer.state.global_step,
        "steps_planned": stage.steps, "stopped_by_budget": bool(budget is not None and budget.hit),
        "trainable_tensors": len(setup.names),
        "trainable_parameters": setup.parameters, "optimizer": optimizer_name,
        "train_loss": result.training_loss, "seconds": round(seconds, 2),
        "tokens_per_second": tokens / seconds if seconds else None, "resumed_from": ckpt and Path(ckpt).name,
        "log_history": trainer.state.log_history,
    }
    if state.is_main_process:
        _save_model(trainer.model, tokenizer, folder / "model")
        write_json(folder / "summary.json", summary)
        shutil.rmtree(args.output_dir, ignore_errors=True)  # resume points are not needed once the stage is done
    state.wait_for_everyone()
    return summary


def run_distill(cfg: DistillConfig, cache_dir: str | Path | None = None, callbacks: tuple[TrainerCallback, ...] = (),
                progress: bool = False) -> tuple[Path, dict]:
    """Run (or resume) every stage of ``cfg``; returns the output folder and the run's report.

    ``progress`` shows progress bars with the time left (the teacher cache, each stage's steps, and the losses
    as they are logged) on the main process; off, the run prints nothing (transformers' own bars included)."""
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        return _run_distill(cfg, cache_dir, callbacks, progress)
    finally:
        if bars_were_on and not progress:
            hf_logging.enable_progress_bar()


def check_launch() -> None:
    """Refuse an FSDP launch (accelerate's distributed_type FSDP), which this job does not support: under FSDP only
    the main process would save the sharded model, and ``fused_head`` calls the unwrapped head."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, parse_flag_from_env

    # `accelerate launch` with distributed_type FSDP sets ACCELERATE_USE_FSDP in every process; an Accelerator made
    # earlier in this process records it in its state.
    if parse_flag_from_env("ACCELERATE_USE_FSDP") or (
            AcceleratorState._shared_state.get("distributed_type") == DistributedType.FSDP):
        raise ValueError("xtok distill does not support FSDP (sharded students are not saved by every process, and "
                         "fused_head needs the whole output head); launch it with DDP instead: accelerate launch "
                         "--config_file xtok/configs/accelerate/gpu_ddp.yaml -m xtok distill --config ..., or torchrun "
                         "--nproc_per_node N -m xtok distill --config ...")


def _changed_rows(student_spec: str, original_spec: str, tmap) -> dict:
    """The rows a transplant made (``changed_rows``): the student against its original, ``tmap`` their token map."""
    original, _ = load_model(original_spec)
    student, _ = load_model(student_spec)
    rows = changed_rows(student, original, tmap)
    log.info("new_rows stages train %s rows", {k: int(v.sum()) for k, v in rows.items()})
    return rows


def donor_rows(cfg: DistillConfig, student_spec: str, tokenizer, tmap, cache_dir) -> tuple[torch.Tensor, dict]:
    """What ``map_lr`` needs: the ids of the tokens ``cfg.original`` lacks (``tmap``: the student's token map against
    the original's), and the donor's rows of them by role (``cfg.donor``, else the donor or teacher in the student's
    ``xtok_provenance.json``), the donor's tokenizer checked to be the student's."""
    from xtok.transplant.stream import donor_matrices

    spec = cfg.donor
    if spec is None:
        record = Path(student_spec) / "xtok_provenance.json"
        made = (json.loads(record.read_text()).get("config") or {}) if record.is_file() else {}
        spec = made.get("donor") or made.get("teacher")  # a heal's or distill run's record, or a transplant's
        if spec is None:
            raise ValueError(f"map_lr needs a donor and {cfg.student} does not name the teacher of its transplant (no "
                             "xtok_provenance.json with one): set donor, the model whose tokenizer it was given, or "
                             "map_lr: null")
    folder = resolve_model(spec, cache_dir)
    if vocab_fingerprint(load_tokenizer(folder)) != vocab_fingerprint(tokenizer):
        raise ValueError(f"donor {spec} has another tokenizer than {cfg.student}: give as donor the model whose "
                         "tokenizer the transplant gave")
    ids = tmap.new_teacher_ids
    rows = {}
    for role, matrix in donor_matrices(folder).items():  # only the new tokens' rows are kept
        if len(ids) and int(ids.max()) >= matrix.shape[0]:
            raise ValueError(f"donor {spec}'s {role} matrix has {matrix.shape[0]} rows but the new tokens reach id "
                             f"{int(ids.max())}: give as donor the model whose tokenizer the transplant gave")
        rows[role] = matrix.index_select(0, ids)
    log.info("map_lr: the donor's rows of %d new tokens from %s", len(ids), spec)
    return ids, rows


def _run_distill(cfg: DistillConfig, cache_dir, callbacks, progress: bool) -> tuple[Path, dict]:
    check_launch()  # before any model is loaded
    # Without a GPU, say so: only then do accelerate and the Trainer treat a torchrun/accelerate launch as CPU DDP (gloo).
    state = PartialState(cpu=not torch.cuda.is_available())
    out = check_output_path(cfg.out, cfg.overwrite) if state.is_main_process else Path(cfg.out).expanduser().resolve()
    student_spec = resolve_model(cfg.student, cache_dir)
    tokenizer = load_tokenizer(student_spec)
    teacher = teacher_spec = teacher_tok = None
    meta = LOSSES.meta(cfg.loss)
    if meta.get("needs_teacher", True):
        teacher_spec = resolve_model(cfg.teacher, cache_dir)
        teacher_tok = load_tokenizer(teacher_spec)
        if meta.get("same_vocab", True):
            check_tokenizers(tokenizer, teacher_tok, cfg.student, cfg.teacher)
    tmap = original_spec = None
    if any(s.train == "new_rows" for s in cfg.stages):  # the rows a transplant made, and the donor map's tokens
        from xtok.vocab.shared import build_token_map

        original_spec = resolve_model(cfg.original, cache_dir)
        tmap = build_token_map(tokenizer, load_tokenizer(original_spec))
    # before the run folder exists: a bad donor leaves nothing behind
    donor = donor_rows(cfg, student_spec, tokenizer, tmap, cache_dir) if any(s.map_lr for s in cfg.stages) else None
    run = _open_run(cfg, out, state)
    t0 = time.perf_counter()
    with state.main_process_first():  # the main process packs the blocks file, the others map it
        blocks = training_blocks(tokenizer, cfg.data, cfg.seq_len, cfg.max_sequences, run / "data")
    topk = teacher_tokens = chunks = None
    if teacher_spec is not None:
        teacher, _ = load_model(teacher_spec)
        teacher_bf16 = use_bf16(cfg.precision)  # its generations and cache under the run's precision, as its online passes
        if meta.get("chunks"):  # alm: the teacher reads the same text in its own tokens, chunk by chunk, online
            chunks = paired_tokenization(tokenizer, teacher_tok, blocks)
            log.info("chunks: %d of %d tokens outside every chunk", chunks.uncovered, blocks.numel())
            if chunks.uncovered > 0.2 * blocks.numel():
                log.warning("%d of %d tokens are in no chunk: %s does not spell the text back the way the student's "
                            "tokenizer does (a normalizer, a prefix space); loss %s learns little here, consider ce",
                            chunks.uncovered, blocks.numel(), cfg.teacher, cfg.loss)
        elif not meta.get("same_vocab", True):  # uld: the teacher reads the same text in its own tokens, online
            teacher_tokens = teacher_tokenization(tokenizer, teacher_tok, blocks)
        else:
            check_same_vocab(AutoConfig.from_pretrained(student_spec), teacher)
        if cfg.generations is not None:  # the teacher writes the blocks' text after their first prompt_tokens
            eos = teacher.generation_config.eos_token_id
            with state.main_process_first():
                blocks = teacher_generations(teacher, str(cfg.teacher), blocks, cfg.generations.prompt_tokens,
                                             cfg.generations.batch_size, teacher_tok.eos_token_id if eos is None else eos,
                                             run / "data", progress=progress and state.is_main_process,
                                             bf16=teacher_bf16)
        if meta.get("same_vocab", True) and cfg.teacher_cache.top_k is not None:
            with state.main_process_first():
                topk = build_cache(run / "teacher-cache", teacher, str(cfg.teacher), blocks, cfg.teacher_cache.top_k,
                                   cfg.teacher_cache.batch_size, temperature=cfg.temperature,
                                   progress=progress and state.is_main_process, bf16=teacher_bf16)
            teacher = None  # the cache replaces the online teacher; free its memory
    dataset = BlockDataset(blocks, topk, teacher_tokens, chunks)
    rows = _changed_rows(student_spec, original_spec, tmap) if tmap is not None else None
    budget = TimeBudget(time.monotonic() + 60 * cfg.max_minutes) if cfg.max_minutes else None
    summaries = []
    model_spec = student_spec
    for i, stage in enumerate(cfg.stages):
        folder = run / "stages" / stage_name(i, stage)
        if (folder / "summary.json").is_file() and (folder / "model" / "config.json").is_file():
            log.info("%s: done in an earlier run, skipped", stage_name(i, stage))
            summaries.append(json.loads((folder / "summary.json").read_text()))
            for cb in callbacks:  # e.g. the heal curve, which counts steps across stages
                if hasattr(cb, "stage_skipped"):
                    cb.stage_skipped(summaries[-1]["steps"])
        elif budget is not None and budget.hit:
            log.info("%s: skipped, the run's %s-minute budget is spent", stage_name(i, stage), cfg.max_minutes)
            summaries.append({"stage": stage_name(i, stage), "train": stage.train, "steps": 0, "skipped": "budget"})
            continue
        else:
            summaries.append(_run_stage(cfg, i, stage, model_spec, tokenizer, teacher, dataset, run, state, callbacks,
                                        progress, rows, budget, donor))
        model_spec = str(folder / "model")
    report = {"student": cfg.student, "teacher": cfg.teacher, "loss": cfg.loss, "sequences": len(blocks),
              "generations": cfg.generations and cfg.generations.model_dump(),
              "seq_len": cfg.seq_len, "teacher_cache_top_k": cfg.teacher_cache.top_k if topk is not None else None,
              "processes": state.num_processes, "seconds": round(time.perf_counter() - t0, 2), "stages": summaries}
    if state.is_main_process:
        final = Path(model_spec)
        for f in final.iterdir():
            shutil.copy2(f, run / f.name)
        write_json(run / "distill_log.json", report)
        write_json(run / "xtok_provenance.json", provenance(cfg))
        with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
            tmp.rmdir()
            run.rename(tmp)
    state.wait_for_everyone()
    return out, report
