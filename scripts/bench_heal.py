"""Benchmark the zero-shot head and `xtok heal`: bits per byte of untouched / transplanted / healed students.

    .venv/bin/python scripts/bench_heal.py --student smollm2-135m --teacher qwen2.5-coder-0.5b \
        --steps 40 --losses alm ce --eval-docs 8 --eval-chars 6000
    .venv/bin/python scripts/bench_heal.py --steps 36 --variants ce:input ce:input+output:batch \
        --reuse bench/results/heal.json --transplanted DIR --out bench/results/heal_head_rows.json

    .venv/bin/python scripts/bench_heal.py --steps 600 --minutes 30 --curve-points 6 \
        --variants ce:input+output:batch --precision bf16 --full-logits --reuse bench/results/heal.json \
        --transplanted DIR --out bench/results/heal_bf16_30min.json
    .venv/bin/python scripts/bench_heal.py --reuse bench/results/heal_bf16_30min.json --transplanted DIR \
        --healed HEALED [--score-start] --distill-e2e qwen2.5-coder-0.5b_to_smollm2-135m --precision bf16 \
        --full-logits --out bench/results/heal_bf16_30min.json
    .venv/bin/python scripts/bench_heal.py --steps 36 --variants ce:input+output:batch \
        ce:input+output:batch:3e-4 --reuse bench/results/heal_bf16_30min.json --transplanted DIR --score-start \
        --eval-all --val-docs 8 --val-chars 6000 --curve-points 1 --out bench/results/heal_map.json

(--row-spaces keeps ``input`` as its default so the recorded commands in bench/results reproduce; the library's
default, chosen with the second command, is input and head rows with ``head_rows: batch``.)

1. Transplant the student to the teacher's tokenizer with `xtok transplant`'s defaults (OMP k=8 over 128
   candidates for the inputs, subword-prior head, row_norms cap; runs before 2026-12-07 kept the rows as OMP made
   them, row_norms keep, which their JSON's transplant section does not name).
2. Validation (documents of ../shared/corpus/train from source files the bundled training text, which the heal
   trains on, has no part of): the subword-prior head whose families sum to the first piece's probability against the old one
   whose shared first piece kept its full logit ("additive"); the better one is kept.
3. Heal the kept transplant from the untouched student with each loss, the same steps (tokens) for each, the curve
   (bits per byte against tokens seen) on the validation text.
4. Eval (bundled:eval, the README's split): every model, bits per byte per domain with a 95% bootstrap interval over
   documents, and the ratio to the untouched student with a paired interval.
5. ``--distill-e2e``: the healed model (``--healed`` one of an earlier run; the transplant itself for the control)
   distilled from the teacher with an end-to-end config's distill section, scored on the eval split.
Writes bench/results/heal.json (another pair: heal-STUDENT-TEACHER.json). One heavy job at a time: the figures are
taken with nothing else running unless the JSON says otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transplant import DEFAULT_PAIR, PeakRSS, pair_results  # noqa: E402

from xtok.config import HealConfig, StageConfig  # noqa: E402
from xtok.corpus import bundled_dir, load_corpus  # noqa: E402
from xtok.distill.heal import CURVE_FILE, run_heal  # noqa: E402
from xtok.eval.bpb import bootstrap_bpb, evaluate  # noqa: E402
from xtok.models.load import load_model  # noqa: E402
from xtok.transplant.apply import save_transplant, transplant  # noqa: E402
from xtok.utils.hardware import machine_info  # noqa: E402
from xtok.utils.io import command_line, package_versions, write_json  # noqa: E402
from xtok.vocab.shared import build_token_map  # noqa: E402

SHARED_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "train"
VALIDATION_SPLIT = "documents of ../shared/corpus/train from source files the bundled training text has no part of"


def validation_docs(per_domain: int, chars: int) -> tuple[list[str], list[str]]:
    """Documents of the shared training corpus from source files the bundled training text (what heal trains on) has
    no part of. The corpus cuts long files into several documents (argparse.py, a chapter of the Debian reference, a
    novel), so leaving out only the bundled documents themselves (as this did before 2026-12-07) kept other parts of
    the files heal trains on, and a heal's validation curve read its own training files."""
    if not SHARED_TRAIN.is_dir():
        raise SystemExit(f"the validation split is taken from {SHARED_TRAIN}, which this checkout does not have")
    def documents(folder: Path) -> list[dict]:
        return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines() if line]

    bundled = {doc["source"] for doc in documents(bundled_dir("train"))}
    texts, domains, seen = [], [], {}
    for doc in documents(SHARED_TRAIN):
        text, domain, source = doc["text"], doc["domain"], doc["source"]
        if source in bundled or not text.strip() or seen.get(domain, 0) >= per_domain or len(text) < chars // 2:
            continue
        seen[domain] = seen.get(domain, 0) + 1
        texts.append(text[:chars])
        domains.append(domain)
    return texts, domains


def zero_shot_setup(doc: str, name: str, extra=None):
    """The command line and data every zero-shot benchmark of one setting shares (bench_head_context, bench_row_norms):
    ``(args, result header, (eval texts, domains), (validation texts, domains))``; ``extra(parser)`` adds its own
    options, ``name`` names the output ``bench/results/NAME[-STUDENT-TEACHER].json``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--student", default=DEFAULT_PAIR[0])
    ap.add_argument("--teacher", default=DEFAULT_PAIR[1])
    ap.add_argument("--transplanted", default=None, help="the pair's transplant to start from (made here if not given)")
    ap.add_argument("--eval-docs", type=int, default=8)
    ap.add_argument("--eval-chars", type=int, default=6000)
    ap.add_argument("--val-docs", type=int, default=4)
    ap.add_argument("--val-chars", type=int, default=3000)
    ap.add_argument("--load", default="nothing else running", help="what else ran on the machine (recorded)")
    ap.add_argument("--out", default=None)
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    args.out = args.out or pair_results(name, (args.student, args.teacher))
    result = {"machine": machine_info(), "packages": package_versions(), "command": command_line(),
              "student": args.student, "teacher": args.teacher, "load": args.load, "validation_split": VALIDATION_SPLIT}
    ev = load_corpus("bundled:eval", max_docs_per_domain=args.eval_docs, max_chars_per_doc=args.eval_chars)
    ev_texts, ev_domains = list(ev["text"]), list(ev["domain"])
    val_texts, val_domains = validation_docs(args.val_docs, args.val_chars)
    result["data"] = {"eval": {"spec": "bundled:eval", "docs": len(ev_texts), "chars": sum(map(len, ev_texts))},
                      "validation": {"docs": len(val_texts), "chars": sum(map(len, val_texts))}}
    return args, result, (ev_texts, ev_domains), (val_texts, val_domains)


def transplant_for(args, result: dict, prefix: str, **settings) -> Path | str:
    """``args.transplanted``, or the pair's transplant made here with the config's defaults and ``settings`` (its time
    and peak memory go to ``result["transplant"]``)."""
    from xtok.config import TransplantConfig
    from xtok.transplant.run import run_transplant

    if args.transplanted is not None:
        return args.transplanted
    path = Path(tempfile.mkdtemp(prefix=prefix)) / "transplanted"
    with PeakRSS() as mem:
        _, rep = run_transplant(TransplantConfig(student=args.student, teacher=args.teacher, out=str(path), **settings),
                                progress=False)
    result["transplant"] = {"seconds": rep["seconds"], "peak_rss_gb": round(mem.peak / 2**30, 2)}
    return path


def overall(entry: dict) -> float:
    """Bits per byte over every document of a ``score`` result."""
    docs = entry["_docs"]
    return sum(d.nll_nats for d in docs) / sum(d.bytes for d in docs) / math.log(2)


def summary(entry: dict) -> dict:
    """A ``score`` result as the JSON keeps it, with its overall bits per byte."""
    return {**public(entry), "overall": round(overall(entry), 4)}


def score(model, tok, texts, domains, reference=None) -> dict:
    t0 = time.perf_counter()
    res = evaluate(model, tok, texts, domains, window=1024, overlap=256, progress=False)
    out = {"seconds": round(time.perf_counter() - t0, 1), "domains": {}}
    for d in sorted(set(domains)):
        idx = [i for i, x in enumerate(domains) if x == d]
        ref = None if reference is None else [reference["_docs"][i] for i in idx]
        out["domains"][d] = bootstrap_bpb([res.docs[i] for i in idx], ref)
    out["_docs"] = res.docs
    return out


def public(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def additive_head(model, student, s_tok, t_tok):
    """The old subword-prior head: shared first pieces keep the student's row (their full logit)."""
    old = copy.deepcopy(model)
    tmap = build_token_map(t_tok, s_tok)
    shared = tmap.shared_teacher_ids
    with torch.no_grad():
        old.get_output_embeddings().weight[shared] = student.get_output_embeddings().weight[tmap.student_of[shared]]
    return old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default=DEFAULT_PAIR[0])
    ap.add_argument("--teacher", default=DEFAULT_PAIR[1])
    ap.add_argument("--steps", type=int, default=40, help="heal optimizer steps (each 2 x 2 x 256 tokens)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--losses", nargs="+", default=["alm", "ce"])
    ap.add_argument("--eval-docs", type=int, default=8)
    ap.add_argument("--eval-chars", type=int, default=6000)
    ap.add_argument("--val-docs", type=int, default=4)
    ap.add_argument("--val-chars", type=int, default=3000)
    ap.add_argument("--row-spaces", nargs="+", default=["input"], help="new_rows stage: input, output or both")
    ap.add_argument("--head-rows", default="batch", choices=["batch", "all"], help="new_rows stage training the head: "
                    "which head rows a step moves")
    ap.add_argument("--variants", nargs="+", default=None, help="instead of --losses: heals to compare, each "
                    "LOSS[:SPACES[:HEAD_ROWS[:MAP_LR]]] (SPACES input, output or input+output; MAP_LR the stage's "
                    "map_lr, the donor's map), e.g. ce ce:input+output:batch ce:input+output:batch:3e-4")
    ap.add_argument("--eval-all", action="store_true", help="score every heal variant on the eval split, not only the "
                    "one validation chose")
    ap.add_argument("--reuse", default=None, help="a heal JSON of an earlier run: keep its transplant, validation and "
                    "zero-shot sections (with --transplanted, its saved transplant) and redo the heal part")
    ap.add_argument("--transplanted", default=None, help="the transplant folder the --reuse run saved")
    ap.add_argument("--precision", default="float32", choices=["float32", "bf16", "auto"])
    ap.add_argument("--full-logits", action="store_true", help="fused_head: false (faster under bf16 on AMX)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget of each heal's training")
    ap.add_argument("--curve-points", type=int, default=4, help="validation points of the curve after the start")
    ap.add_argument("--healed", default=None, help="with --reuse: a healed folder of that run (its heal section is kept "
                    "and not redone); for --distill-e2e")
    ap.add_argument("--distill-e2e", default=None, help="an end-to-end config (name or path): distill the healed model "
                    "with its distill section (under --precision / --full-logits) and score it on the eval split")
    ap.add_argument("--score-start", action="store_true", help="score --transplanted (the heal's start) on the eval "
                    "split, and it and the healed model on the validation split as selected now")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.healed and not args.reuse:
        ap.error("--healed needs --reuse (the JSON of the run that healed it)")
    args.out = args.out or pair_results("heal", (args.student, args.teacher))
    result = {"machine": machine_info(), "packages": package_versions(), "command": command_line(),
              "student": args.student, "teacher": args.teacher, "load": "nothing else running",
              "validation_split": VALIDATION_SPLIT}
    ev = load_corpus("bundled:eval", max_docs_per_domain=args.eval_docs, max_chars_per_doc=args.eval_chars)
    ev_texts, ev_domains = list(ev["text"]), list(ev["domain"])
    val_texts, val_domains = validation_docs(args.val_docs, args.val_chars)
    result["data"] = {"eval": {"spec": "bundled:eval", "docs": len(ev_texts), "chars": sum(map(len, ev_texts))},
                      "validation": {"docs": len(val_texts), "chars": sum(map(len, val_texts)),
                                     "domains": sorted(set(val_domains))}}
    student, s_tok = load_model(args.student)
    work = Path(tempfile.mkdtemp(prefix="bench-heal-"))
    if args.reuse:
        kept = json.loads(Path(args.reuse).read_text())
        result.update({k: kept[k] for k in ("transplant", "validation", "eval") if k in kept})
        result["earlier_heal_runs"] = kept.get("earlier_heal_runs", [])
        result["reused_commands"] = kept.get("reused_commands", []) + [kept["command"]]
        if args.healed:
            result.update({k: kept[k] for k in ("heal", "heal_chosen_on_validation", "distill_runs",
                                                "validation_rescored") if k in kept})
            result["data"]["validation_of_reused_heal"] = kept["data"].get("validation_of_reused_heal") or {
                **kept["data"]["validation"], "split": kept.get(
                    "validation_split", "documents of ../shared/corpus/train not in the bundled training text (leaky)")}
        path = Path(args.transplanted) if args.transplanted else None
        evals = {"untouched": score(student, s_tok, ev_texts, ev_domains)}
    else:
        path, evals = transplant_and_zero_shot(args, result, student, s_tok, work, val_texts, val_domains, ev_texts,
                                               ev_domains)
    healed = Path(args.healed) if args.healed else heal_section(args, result, evals, student, s_tok, path, work,
                                                                 val_texts, val_domains, ev_texts, ev_domains)
    if args.score_start:
        score_start(args, result, evals, student, s_tok, path, healed, val_texts, val_domains, ev_texts, ev_domains)
    if args.distill_e2e:
        distill_section(args, result, evals, healed, work, ev_texts, ev_domains)
    print(f"written {args.out}")


def score_start(args, result, evals, student, s_tok, path, healed, val_texts, val_domains, ev_texts, ev_domains):
    """The heal's start (--transplanted) on the eval split, and start and healed model on this run's validation split."""
    if path is None:
        raise SystemExit("--score-start needs --transplanted (the heal's start)")
    start, tok = load_model(str(path))
    result["eval"][f"transplanted (the heal's start, {path.name})"] = public(score(start, tok, ev_texts, ev_domains,
                                                                                 evals["untouched"]))
    untouched = score(student, s_tok, val_texts, val_domains)
    val = {"untouched": summary(untouched), "start": summary(score(start, tok, val_texts, val_domains, untouched))}
    healed_model, h_tok = load_model(str(healed))
    val["healed"] = summary(score(healed_model, h_tok, val_texts, val_domains, untouched))
    result["validation_rescored"] = {"split": VALIDATION_SPLIT, **val}
    write_json(args.out, result)


def distill_section(args, result, evals, healed: Path, work: Path, ev_texts, ev_domains) -> None:
    """The issue's last step: the healed student distilled from the teacher at the end-to-end recipe's budget (its
    distill section), scored on the eval split. ``--healed`` the transplant itself (``--transplanted``) is the control:
    the same distillation without the heal."""
    from xtok.configfile import load_config
    from xtok.distill.run import run_distill

    e2e = load_config(args.distill_e2e, recipe="end_to_end")
    cfg = e2e.distill_config(str(healed), str(work / "distilled"))
    cfg = cfg.model_copy(update={"precision": args.precision, "fused_head": cfg.fused_head and not args.full_logits})
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        out, rep = run_distill(cfg)
        seconds = time.perf_counter() - t0
    model, tok = load_model(str(out))
    steps = "+".join(str(st["steps"]) for st in rep["stages"])
    start = Path(args.transplanted).resolve() if args.transplanted else None
    what = "transplanted" if healed.resolve() == start else "healed"
    name = f"{what} + distilled ({cfg.loss}, {steps} steps: the end-to-end budget)"
    result.setdefault("distill_runs", {})[name] = {
        "from": str(healed), "e2e_config": args.distill_e2e, "seconds": round(seconds, 1),
        "peak_rss_gb": round(mem.peak / 2**30, 2), "stages": rep["stages"], "config": cfg.model_dump(mode="json")}
    result["eval"][name] = public(score(model, tok, ev_texts, ev_domains, evals["untouched"]))
    write_json(args.out, result)


def transplant_and_zero_shot(args, result, student, s_tok, work, val_texts, val_domains, ev_texts, ev_domains):
    from xtok.config import TransplantConfig

    made = TransplantConfig(student=args.student, teacher=args.teacher)  # what `xtok transplant` does by default
    settings = {"method": made.method, "head_method": made.head_method, "k": made.k, "candidates": made.candidates,
                "row_norms": made.row_norms}
    teacher, t_tok = load_model(args.teacher)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        moved, report = transplant(student, s_tok, t_tok, teacher_model=teacher, **settings)
        seconds = time.perf_counter() - t0
    result["transplant"] = {"seconds": round(seconds, 1), "peak_rss_gb": round(mem.peak / 2**30, 2), "settings": settings,
                            "shared_rows_replaced": report["spaces"]["output"]["subword_prior"]["shared_rows_replaced"]}
    del teacher

    val = {"untouched": score(student, s_tok, val_texts, val_domains)}
    old = additive_head(moved, student, s_tok, t_tok)
    val["transplanted (families sum to the piece)"] = score(moved, t_tok, val_texts, val_domains, val["untouched"])
    val["transplanted (additive, before)"] = score(old, t_tok, val_texts, val_domains, val["untouched"])
    del old
    result["validation"] = {k: public(v) for k, v in val.items()}
    print(json.dumps(result["validation"], indent=1))
    write_json(args.out, result)

    path = work / "transplanted"
    save_transplant(moved, t_tok, path, report)
    evals = {"untouched": score(student, s_tok, ev_texts, ev_domains)}
    evals["transplanted"] = score(moved, t_tok, ev_texts, ev_domains, evals["untouched"])
    result["eval"] = {k: public(v) for k, v in evals.items()}
    write_json(args.out, result)
    return path, evals


def heal_section(args, result, evals, student, s_tok, path, work, val_texts, val_domains, ev_texts, ev_domains) -> Path:
    """Each loss heals the transplant for the same steps, its curve on the validation text; the loss whose last
    point is lowest overall is chosen there, and only it is scored on the eval split (returned: its folder)."""
    result["heal"] = {}
    curve_file = work / "curve.jsonl"
    curve_file.write_text("".join(json.dumps({"text": t, "domain": d}) + "\n" for t, d in zip(val_texts, val_domains)))
    variants = {}
    for text in args.variants or args.losses:
        loss, spaces, head_rows, map_lr = (text.split(":") + ["", "", ""])[:4]
        spaces = spaces.split("+") if spaces else args.row_spaces
        variants[text] = (loss, spaces, head_rows or args.head_rows, float(map_lr) if map_lr else None)
    healed_dirs = {}
    for name, (loss, spaces, head_rows, map_lr) in variants.items():
        cfg = HealConfig(model=str(path), original=args.student, donor=args.teacher,
                         out=str(work / f"healed-{name.replace(':', '-')}"),
                         loss=loss, stages=[StageConfig(train="new_rows", steps=args.steps, learning_rate=args.lr,
                                                        scheduler="constant_with_warmup", warmup_ratio=0.05,
                                                        row_spaces=spaces, head_rows=head_rows, map_lr=map_lr)],
                         curve_data={"spec": str(curve_file)}, curve_steps=max(1, args.steps // args.curve_points),
                         save_steps=10**6, precision=args.precision, fused_head=not args.full_logits,
                         max_minutes=args.minutes)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out, rep = run_heal(cfg)
            seconds = time.perf_counter() - t0
        healed_dirs[name] = out
        stage = rep["stages"][0]
        result["heal"][name] = {"seconds": round(seconds, 1), "train_seconds": stage["seconds"],
                                "steps": stage["steps"], "tokens": stage["steps"] * cfg.batch_size * cfg.grad_accum * cfg.seq_len,
                                "tokens_per_second": stage["tokens_per_second"], "peak_rss_gb": round(mem.peak / 2**30, 2),
                                "trainable_parameters": stage["trainable_parameters"], "train_loss": stage["train_loss"],
                                "curve": json.loads((out / CURVE_FILE).read_text()), "config": cfg.model_dump(mode="json")}
        write_json(args.out, result)
        print(json.dumps(result["heal"][name]["curve"], indent=1))
    best = min(variants, key=lambda name: result["heal"][name]["curve"][-1]["overall"])
    result["heal_chosen_on_validation"] = best
    for variant in variants if args.eval_all else [best]:
        healed, h_tok = load_model(str(healed_dirs[variant]))
        loss, spaces, head_rows, map_lr = variants[variant]
        rows = "+".join(spaces) + (f" rows, head_rows {head_rows}" if "output" in spaces else " rows")
        rows += f", donor map {map_lr:g}" if map_lr else ""
        steps = result["heal"][variant]["steps"]
        name = f"healed ({loss}, {steps} steps, {rows}{', ' + args.precision if args.precision != 'float32' else ''})"
        result["eval"][name] = public(score(healed, h_tok, ev_texts, ev_domains, evals["untouched"]))
        write_json(args.out, result)
    return healed_dirs[best]


if __name__ == "__main__":
    main()
