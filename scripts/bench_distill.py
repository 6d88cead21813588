"""Benchmark `xtok distill`: training speed and memory against TRL's GKD trainer, and quality after a CPU budget.

    .venv/bin/python scripts/bench_distill.py --sections speed --student out/smol-qwen --teacher qwen2.5-coder-0.5b
    .venv/bin/python scripts/bench_distill.py --sections quality --student out/smol-qwen --teacher qwen2.5-coder-0.5b

speed: the same student, teacher, packed code sequences, batch, sequence length and full-weight
training, each trainer in a fresh child process (so peak RSS is its own): xtok with the offline
top-k teacher cache (built in the same process, teacher freed before training: what `xtok distill`
does), xtok with the online teacher, and TRL's GKDTrainer (``trl.experimental.gkd``, lmbda=0 =
off-policy, beta=0 = forward KL, the same loss as ours); xtok-cache-unfused is xtok-cache computing
the loss from the model's full logits instead of the fused per-chunk head (the default), xtok-cache-lean is xtok-cache
with gradient checkpointing (TRL's SFTConfig turns it on by default: the peer runs with it). tokens/s counts trained
tokens per second over the optimizer steps after the first (warm-up); peak RSS is the child's ru_maxrss. --repeats N
runs the variants in turn N times (this machine's speed drifts between runs): each row is its median round, with
every round and the per-round ratio to TRL. --precision bf16 runs every trainer under bf16 autocast (the Trainer's
bf16; xtok's precision: bf16), for a GPU or a CPU with AMX.
quality: held-out bits per byte per eval domain of (a) the transplanted student, (b) + stage 1
(embeddings and head) with KL, (c) + stages 1-2 with KL, (d) + stages 1-2 with plain cross-entropy
on the same text, (e) the untouched student (own tokenizer) trained by ULD against the teacher on the
same text and stages (the cross-tokenizer baseline without transplant), next to the untouched student
and the teacher.
Writes bench/results/distill.json (sections merge into an existing file).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from xtok.config import DataConfig, DistillConfig
from xtok.configfile import config_from_dict
from xtok.utils.hardware import machine_info
from xtok.utils.io import command_line, package_versions, write_json

# xtok-cache: the distill config's defaults (fused_head, loss_chunk)
# xtok-cache-unfused: the same as xtok-cache with fused_head off (the model's own full logits)
# xtok-cache-lean: xtok-cache with gradient checkpointing (the config's gradient_checkpointing: true)
VARIANTS = ("xtok-cache", "xtok-cache-unfused", "xtok-cache-lean", "xtok-online", "trl-gkd")
LOSS_CHUNK = DistillConfig.model_fields["loss_chunk"].default


class StepTimer:
    """A TrainerCallback recording the wall time of each optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.steps.append(time.perf_counter() - timer.t0)

        self.steps: list[float] = []
        self.callback = _CB()


def child(args) -> dict:
    """One trainer, one measurement; prints a JSON line."""
    from transformers import TrainingArguments, default_data_collator

    from xtok.distill.data import BlockDataset, training_blocks
    from xtok.distill.teacher_cache import teacher_topk
    from xtok.distill.trainer import DistillTrainer
    from xtok.models.load import load_model

    student, tok = load_model(args.student)
    blocks = training_blocks(tok, DataConfig(spec="bundled:train", domains=["code"]), args.seq_len,
                             args.steps * args.batch_size)
    teacher, _ = load_model(args.teacher)
    timer = StepTimer()
    common = dict(output_dir=str(Path(args.tmp) / args.child), max_steps=args.steps, learning_rate=1e-5,
                  per_device_train_batch_size=args.batch_size, report_to=[], use_cpu=True, save_strategy="no",
                  logging_strategy="no", disable_tqdm=True, remove_unused_columns=False, dataloader_pin_memory=False, seed=0,
                  bf16=args.precision == "bf16")  # every trainer the same: bf16 autocast, or float32
    if args.child.startswith("xtok"):  # TRL's SFTConfig keeps its own default, gradient checkpointing on
        common.update(gradient_checkpointing=args.child == "xtok-cache-lean",
                      gradient_checkpointing_kwargs={"use_reentrant": False})
    cache_seconds = None
    if args.child.startswith("xtok-cache"):
        t0 = time.perf_counter()
        topk = teacher_topk(teacher, blocks, args.top_k, batch_size=args.batch_size)
        cache_seconds = time.perf_counter() - t0
        del teacher
        trainer = DistillTrainer(model=student, args=TrainingArguments(**common), train_dataset=BlockDataset(blocks, topk),
                                 loss="forward_kl", fused_head=args.child != "xtok-cache-unfused", loss_chunk=args.loss_chunk,
                                 callbacks=[timer.callback])
    elif args.child == "xtok-online":
        trainer = DistillTrainer(model=student, args=TrainingArguments(**common), train_dataset=BlockDataset(blocks),
                                 teacher=teacher, loss="forward_kl", fused_head=True, loss_chunk=args.loss_chunk,
                                 callbacks=[timer.callback])
    else:
        from datasets import Dataset
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        rows = blocks.tolist()  # SFTTrainer takes only a datasets.Dataset
        ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": rows})
        # SFTConfig turns bf16 on by default; here it follows --precision (bf16 on a CPU without AMX is ~300x slower)
        cfg = GKDConfig(**common, lmbda=0.0, beta=0.0, temperature=1.0, max_length=args.seq_len)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=ds,
                             data_collator=default_data_collator, processing_class=tok, callbacks=[timer.callback])
    trainer.train()
    timed = timer.steps[1:]
    optimizer = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__
    tokens = args.batch_size * args.seq_len
    return {"variant": args.child, "steps": len(timer.steps), "step_seconds": [round(s, 3) for s in timer.steps],
            "tokens_per_second": tokens * len(timed) / sum(timed),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "teacher_cache_seconds": cache_seconds, "optimizer": optimizer,
            "gradient_checkpointing": trainer.args.gradient_checkpointing}


def add_ratios(rows: dict) -> None:
    """Each row against TRL's: tokens/s and peak RSS, and tokens/s with the teacher cache's build time counted
    as if a single pass over the data had to pay for it (the cache is reused by every later epoch and stage).
    Rows measured in several rounds (``--repeats``) also get the ratio within each round, where both ran minutes
    apart (this machine's speed drifts by up to 2x between runs), with its min and median."""
    peer = rows.get("trl-gkd")
    for row in rows.values() if peer else ():
        steps = row["step_seconds"]
        tokens_per_step = row["tokens_per_second"] * sum(steps[1:]) / len(steps[1:])
        once = sum(steps[1:]) + (row["teacher_cache_seconds"] or 0) * len(steps[1:]) / len(steps)
        row["tokens_per_second_paying_cache_once"] = tokens_per_step * len(steps[1:]) / once
        row["tokens_per_second_vs_trl"] = row["tokens_per_second"] / peer["tokens_per_second"]
        row["tokens_per_second_paying_cache_once_vs_trl"] = row["tokens_per_second_paying_cache_once"] / peer["tokens_per_second"]
        row["peak_rss_vs_trl"] = row["peak_rss_gb"] / peer["peak_rss_gb"]
        rounds = min(len(row.get("rounds", [])), len(peer.get("rounds", [])))
        if rounds > 1:
            speed = sorted(a["tokens_per_second"] / b["tokens_per_second"] for a, b in zip(row["rounds"], peer["rounds"]))
            memory = sorted(a["peak_rss_gb"] / b["peak_rss_gb"] for a, b in zip(row["rounds"], peer["rounds"]))
            row["per_round_vs_trl"] = {"tokens_per_second": {"min": speed[0], "median": statistics.median(speed)},
                                       "peak_rss": {"max": memory[-1], "median": statistics.median(memory)}}


def speed_section(args, earlier: dict | None) -> dict:
    """Each variant in its own child process; with ``--repeats`` the variants run in turn, round after round, and a
    row holds every round (``rounds``) and the median round's figures."""
    rows = dict((earlier or {}).get("rows", {}))
    rounds: dict[str, list] = {v: [] for v in args.variants}
    for _ in range(args.repeats):
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--child", variant, "--student", args.student, "--teacher", args.teacher,
                   "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
                   "--top-k", str(args.top_k), "--tmp", args.tmp, "--precision", args.precision,
                   "--loss-chunk", str(args.loss_chunk)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"{variant} failed:\n{res.stderr[-4000:]}")
            rounds[variant].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rounds[variant][-1]), flush=True)
    for variant, runs in rounds.items():
        median = sorted(runs, key=lambda r: r["tokens_per_second"])[(len(runs) - 1) // 2]
        rows[variant] = median | ({"rounds": runs} if len(runs) > 1 else {})
    add_ratios(rows)
    return {"settings": {"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "top_k": args.top_k,
                         "loss_chunk": args.loss_chunk, "trained": "every weight", "data": "bundled:train code",
                         "precision": args.precision}, "rows": rows}


def _bpb(spec: str, label: str, max_docs: int, max_chars: int) -> dict:
    from xtok.corpus import load_corpus
    from xtok.eval.run import eval_model
    from xtok.models.load import load_model

    cfg = config_from_dict({"recipe": "eval", "models": [spec]})
    ds = load_corpus("bundled:eval", max_docs_per_domain=max_docs, max_chars_per_doc=max_chars)
    model, tok = load_model(spec)
    r = eval_model(model, tok, label, ds, cfg, progress=False)
    return {d: v["bits_per_byte"] for d, v in r["domains"].items()} | {"overall": r["overall"]["bits_per_byte"]}


def quality_section(args, result: dict, out: Path) -> dict:
    from xtok.distill.run import run_distill

    q = result.get("quality") or {}
    q["settings"] = {"config": args.config, "overrides": args.overrides, "eval": f"bundled:eval, {args.max_docs} docs x "
                     f"{args.max_chars} chars per domain"}
    bpb = q.setdefault("bits_per_byte", {})
    seconds = q.setdefault("seconds", {})
    runs = Path(args.tmp) / "quality"
    from xtok.configfile import load_config

    runs_by_label = {"kl": (args.student, ["loss=forward_kl"]), "ce": (args.student, ["loss=ce"]),
                     "uld": (args.untouched, ["loss=uld", f"ce_weight={args.uld_ce_weight}"])}
    for label in args.quality_runs:
        student, loss = runs_by_label[label]
        overrides = [f"student={student}", f"teacher={args.teacher}", f"out={runs / label}", "overwrite=true", *loss,
                     *args.overrides]
        cfg = load_config(args.config, overrides, recipe="distill")
        folder, report = run_distill(cfg)
        seconds[label] = {s["stage"]: s["seconds"] for s in report["stages"]}
        q.setdefault("train_loss", {})[label] = {s["stage"]: s["train_loss"] for s in report["stages"]}
        if label == "kl":
            bpb["(b) + stage 1, KL"] = _bpb(str(folder / "stages" / "stage-1-embeddings" / "model"), "b", args.max_docs,
                                            args.max_chars)
            bpb["(c) + stages 1-2, KL"] = _bpb(str(folder), "c", args.max_docs, args.max_chars)
        elif label == "ce":
            bpb["(d) + stages 1-2, cross-entropy"] = _bpb(str(folder), "d", args.max_docs, args.max_chars)
        else:
            bpb["(e) untouched student + stages 1-2, ULD"] = _bpb(str(folder), "e", args.max_docs, args.max_chars)
        write_json(out, result | {"quality": q})
    for label, spec in (("(a) transplanted, no training", args.student), ("untouched student", args.untouched),
                        ("teacher", args.teacher)):
        bpb[label] = _bpb(spec, label, args.max_docs, args.max_chars)
    return q


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default="out/smol-qwen", help="the transplanted student")
    ap.add_argument("--teacher", default="qwen2.5-coder-0.5b")
    ap.add_argument("--untouched", default="smollm2-135m", help="the student before the transplant")
    ap.add_argument("--sections", nargs="+", default=["speed", "quality"])
    ap.add_argument("--steps", type=int, default=11, help="speed: optimizer steps per trainer (the first not timed)")
    ap.add_argument("--repeats", type=int, default=1, help="speed: rounds over the variants (medians, per-round ratios)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                    help="speed: which trainers to (re)measure; the others stay as the file has them")
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--loss-chunk", type=int, default=LOSS_CHUNK, help="speed: xtok's loss_chunk [the config's default]")
    ap.add_argument("--precision", choices=["float32", "bf16"], default="float32",
                    help="speed: every trainer in float32, or every trainer under bf16 autocast (a GPU, a CPU with AMX)")
    ap.add_argument("--config", default="distill/qwen2.5-coder-0.5b_to_smollm2-135m")
    ap.add_argument("--overrides", nargs="*", default=[], help="quality: key=value over the distill config")
    ap.add_argument("--quality-runs", nargs="+", choices=["kl", "ce", "uld"], default=["kl", "ce", "uld"],
                    help="quality: which trained rows to (re)run; the others stay as the file has them")
    ap.add_argument("--uld-ce-weight", type=float, default=0.5, help="quality (e): cross-entropy share of the ULD loss")
    ap.add_argument("--max-docs", type=int, default=3)
    ap.add_argument("--max-chars", type=int, default=3000)
    ap.add_argument("--tmp", default="/tmp/xtok-bench-distill")
    ap.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="bench/results/distill.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.child:
        print(json.dumps(child(args)))
        return
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result |= {"machine": machine_info(), "packages": package_versions(), "student": args.student, "teacher": args.teacher}
    commands = result.setdefault("commands", {})
    for section in args.sections:
        commands[section] = command_line()
    if "speed" in args.sections:
        result["speed"] = speed_section(args, result.get("speed"))
        write_json(out, result)
    if "quality" in args.sections:
        result["quality"] = quality_section(args, result, out)
        write_json(out, result)
    print(f"written {out}")


if __name__ == "__main__":
    main()
