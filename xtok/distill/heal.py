"""The heal job: the original student teaches its transplanted copy, across the two tokenizations of one text.

A transplant gives the student another tokenizer without training; the rows it made are approximations,
and the model around them never saw the new tokens. Healing trains the copy to give the text the
likelihood the original gives it: with ``alm`` (Approximate Likelihood Matching, ``xtok.losses.alm``) the
original, reading the same text in its own tokens, is the teacher chunk by chunk; with ``ce`` the copy
learns the text itself. It is a distill run (``xtok.distill.run``: resumable, atomic, progress bars), by
default one ``new_rows`` stage: only the rows the transplant made are trained, input embedding and head,
and a step moves only the head rows of the tokens its batch holds or predicts (``head_rows: batch``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import AutoConfig, TrainerCallback

from xtok.config import HealConfig
from xtok.corpus import load_corpus
from xtok.distill.run import partial_dir, run_distill
from xtok.models.load import load_tokenizer, resolve_model
from xtok.utils.io import write_json
from xtok.vocab.identity import vocab_fingerprint

log = logging.getLogger(__name__)

CURVE_FILE = "heal_curve.json"
SAME_SHAPE = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads")


def check_pair(model_spec: str, original_spec: str, model_name: str, original_name: str) -> None:
    """Refuse a pair that is not a transplant and its original: one tokenizer (nothing to heal), or another model."""
    if vocab_fingerprint(load_tokenizer(model_spec)) == vocab_fingerprint(load_tokenizer(original_spec)):
        raise ValueError(f"{model_name} has the tokenizer of {original_name}: there is nothing to heal; give the "
                         f"transplanted model (xtok transplant --student {original_name} --teacher ...) as --model")
    a = AutoConfig.from_pretrained(model_spec).get_text_config()
    b = AutoConfig.from_pretrained(original_spec).get_text_config()
    for key in SAME_SHAPE:
        if getattr(a, key, None) != getattr(b, key, None):
            raise ValueError(f"{model_name} is not a transplant of {original_name}: its {key} is {getattr(a, key, None)}, "
                             f"the original's {getattr(b, key, None)}; give the model it was transplanted from as --original")


def processes() -> int:
    """Training processes of this launch (torchrun / accelerate launch: each reads its own batches)."""
    from accelerate import PartialState

    return PartialState().num_processes


class CurveCallback(TrainerCallback):
    """Bits per byte per domain of the model on held-out text at step 0 and every ``every`` steps, appended to
    ``path`` (a JSON list) as the run goes, so an interrupted run keeps its points."""

    def __init__(self, texts: list[str], domains: list[str], tokenizer, path: Path, every: int, tokens_per_step: int):
        self.texts, self.domains, self.tokenizer, self.path = texts, domains, tokenizer, path
        self.every, self.tokens_per_step = every, tokens_per_step
        self.points = json.loads(path.read_text()) if path.is_file() else []
        self.stage_offset = 0

    def _score(self, model, step: int) -> None:
        from xtok.eval.bpb import evaluate, max_context

        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        window = min(1024, max_context(model) or 1024)
        res = evaluate(model, self.tokenizer, self.texts, self.domains, window=window, overlap=min(256, window // 4),
                       progress=False)
        model.train(was_training)
        point = {"step": step, "tokens": step * self.tokens_per_step,
                 "bits_per_byte": {d: round(s.summary()["bits_per_byte"], 4) for d, s in sorted(res.domains.items())},
                 "overall": round(res.overall().summary()["bits_per_byte"], 4), "seconds": round(time.perf_counter() - t0, 1)}
        self.points = [p for p in self.points if p["step"] != step] + [point]
        write_json(self.path, sorted(self.points, key=lambda p: p["step"]))
        log.info("heal curve: step %d, %s bits per byte", step, point["bits_per_byte"])

    def stage_skipped(self, steps: int) -> None:
        """A stage finished in an earlier run: later stages' points come after its steps."""
        self.stage_offset += steps

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and not any(p["step"] == self.stage_offset + state.global_step for p in self.points):
            self._score(model, self.stage_offset + state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            self._score(model, self.stage_offset + state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every:
            self._score(model, self.stage_offset + state.global_step)
        self.stage_offset += state.global_step


def run_heal(cfg: HealConfig, cache_dir: str | Path | None = None, progress: bool = False) -> tuple[Path, dict]:
    """Heal ``cfg.model`` from ``cfg.original``; returns the output folder and the run's report (``distill_log.json``,
    with the curve in ``heal_curve.json`` when ``curve_data`` is set)."""
    model_spec, original_spec = resolve_model(cfg.model, cache_dir), resolve_model(cfg.original, cache_dir)
    check_pair(model_spec, original_spec, cfg.model, cfg.original)
    dcfg = cfg.distill_config()
    callbacks = []
    if cfg.curve_data is not None:
        d = cfg.curve_data
        ds = load_corpus(d.spec, domains=d.domains, max_docs_per_domain=d.max_docs_per_domain,
                         max_chars_per_doc=d.max_chars_per_doc)
        run = partial_dir(Path(cfg.out).expanduser().resolve())
        curve_path = run / CURVE_FILE
        if cfg.overwrite and curve_path.exists():
            curve_path.unlink()
        callbacks.append(CurveCallback(list(ds["text"]), list(ds["domain"]), load_tokenizer(model_spec), curve_path,
                                       cfg.curve_steps, cfg.batch_size * cfg.grad_accum * cfg.seq_len * processes()))
    return run_distill(dcfg, cache_dir, callbacks=tuple(callbacks), progress=progress)
