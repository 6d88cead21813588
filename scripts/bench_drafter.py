"""Benchmark drafters for speculative decoding against the target alone and the in-family drafter, both backends.

    .venv/bin/xtok transplant --student smollm2-135m --teacher qwen2.5-coder-0.5b --out /tmp/smol-qwen
    .venv/bin/python scripts/bench_drafter.py --target qwen2.5-coder-1.5b --transplanted /tmp/smol-qwen \
        --k 4 2 6 --repeats 3 --num-prompts 8 --max-new-tokens 64 --prompt-domains code
    # later (another session, or once `xtok heal`/`xtok distill` has run): the same command with --resume runs only
    # the runs the file lacks; --kinds distilled --distilled DIR adds that drafter's rows
    .venv/bin/python scripts/bench_drafter.py ... --resume

For each backend (hf: transformers assisted generation; vllm: vLLM draft_model) and each k, the
target generates greedily without and with the drafter on the same held-out prompts, one request at
a time: (a) the untouched drafter keeps its own tokenizer (hf: Universal Assisted Generation, vllm:
use_heterogeneous_vocab); (b) the drafter transplanted to the target's tokenizer (xtok transplant);
(c) with --healed / --distilled, the transplanted drafter after `xtok heal` / distillation; (d) the in-family drafter
(--in-family, a smaller model of the target's own family and tokenizer: what a user would pick instead). With
--draft-vocab 0 N, every drafter on the target's tokenizer also runs with a head of the N most frequent tokens
(FR-Spec), labelled <kind>+frN.
Every run measures its own target-alone speed (it varied 2x between runs here), so the speed-up is paired;
each (backend, drafter, k) is run --repeats times, repeat-major (a stopped run leaves whole repeats), and
``summary`` gives min and median. Runs go one after another, never in parallel. Writes
bench/results/drafter.json for the default target, bench/results/drafter-<size>.json otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from xtok.configfile import config_from_dict
from xtok.speculative.run import run_draft_check
from xtok.utils.hardware import machine_info
from xtok.utils.io import command_line, package_versions, write_json

COLUMNS = ("backend", "drafter_kind", "k", "acceptance_rate", "mean_acceptance_length", "tokens_per_second_target_alone",
           "tokens_per_second_with_drafter", "speedup", "lossless")
KINDS = ("in_family", "untouched", "transplanted", "healed", "distilled")
SUMMED = ("tokens_per_second_target_alone", "tokens_per_second_with_drafter", "speedup")
DEFAULT_TARGET = "qwen2.5-coder-0.5b"


def default_out(target: str) -> str:
    if target == DEFAULT_TARGET:
        return "bench/results/drafter.json"
    return f"bench/results/drafter-{Path(target).name.rsplit('-', 1)[-1]}.json"


def run_key(run: dict) -> tuple:
    return run["backend"], run["drafter_kind"], run["k"], run.get("repeat", 0)


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (backend, drafter, k): acceptance of the first run (greedy: the same every repeat, checked), min and
    median of the speeds and the speed-up over the repeats, and whether every repeat was lossless."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(run_key(run)[:3], []).append(run)
    rows = []
    for (backend, kind, k), rs in groups.items():
        row = {"backend": backend, "drafter_kind": kind, "drafter": rs[0]["drafter"], "k": k,
               "draft_vocab": rs[0].get("draft_vocab"), "repeats": len(rs),
               "acceptance_rate": rs[0]["acceptance_rate"], "mean_acceptance_length": rs[0]["mean_acceptance_length"],
               "acceptance_same_every_repeat": len({round(r["acceptance_rate"], 9) for r in rs}) == 1,
               "lossless": all(r["lossless"] for r in rs)}
        for col in SUMMED:
            vals = [r[col] for r in rs]
            row[col] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
        for part in ("drafting", "verification"):
            costs = [r["time"]["round_cost_in_target_steps"][f"{part}_s"] for r in rs if r.get("time")]
            if costs and all(v is not None for v in costs):
                row[f"{part}_cost_in_target_steps_median"] = statistics.median(costs)
        rows.append(row)
    return rows


LABELS = {"in_family": "in-family {drafter}", "untouched": "untouched {drafter} (across tokenizers)",
          "transplanted": "transplanted", "healed": "+ healed", "distilled": "+ distilled for drafting"}


def markdown_table(runs: list[dict]) -> str:
    """The README's table: one line per (backend, k, drafter), median (min–max) of the speeds over the repeats."""
    def spread(v: dict) -> str:
        return f"{v['median']:.2f} ({v['min']:.2f}–{v['max']:.2f})" if v["min"] != v["max"] else f"{v['median']:.2f}"

    def label(row: dict) -> tuple[str, str]:  # "distilled+fr32768" -> ("distilled", "fr32768")
        kind, _, fr = row["drafter_kind"].partition("+")
        return kind, fr

    def order(row: dict) -> tuple:
        kind, fr = label(row)
        return row["backend"], row["k"], KINDS.index(kind), fr

    lines = ["| backend | k | drafter | repeats | acceptance | mean acceptance length | tok/s alone | tok/s drafted "
             "| speed-up | drafting / verification per round, in target steps | lossless |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(summarize(runs), key=order):
        kind, fr = label(row)
        name = LABELS[kind].format(drafter=Path(row["drafter"]).name)
        if fr:
            name += f", head of {row['draft_vocab']:,} rows"
        cost = "—"
        if "verification_cost_in_target_steps_median" in row:
            cost = (f"{row['drafting_cost_in_target_steps_median']:.2f} / "
                    f"{row['verification_cost_in_target_steps_median']:.2f}")
        lines.append(f"| {row['backend']} | {row['k']} | {name} | {row['repeats']} | {row['acceptance_rate']:.3f} "
                     f"| {row['mean_acceptance_length']:.2f} | {spread(row['tokens_per_second_target_alone'])} "
                     f"| {spread(row['tokens_per_second_with_drafter'])} | {spread(row['speedup'])} | {cost} "
                     f"| {'yes' if row['lossless'] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default=DEFAULT_TARGET)
    ap.add_argument("--in-family", default=DEFAULT_TARGET,
                    help="a smaller model with the target's tokenizer (for the 1.5B target: Qwen2.5-Coder-0.5B)")
    ap.add_argument("--untouched", default="smollm2-135m", help="the drafter with its own tokenizer")
    ap.add_argument("--transplanted", default=None, help="the drafter given the target's tokenizer (xtok transplant)")
    ap.add_argument("--healed", default=None, help="the transplanted drafter after `xtok heal`")
    ap.add_argument("--distilled", default=None,
                    help="optional: the transplanted drafter after `xtok distill` (e.g. an end-to-end run's distill/)")
    ap.add_argument("--backends", nargs="+", default=["hf", "vllm"])
    ap.add_argument("--k", nargs="+", type=int, default=[2, 4])
    ap.add_argument("--num-prompts", type=int, default=4)
    ap.add_argument("--prompt-chars", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--prompt-domains", nargs="+", default=None, help="only prompts of these domains (e.g. code)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each (backend, drafter, k), min and median kept")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                    help="which drafters to run (healed needs --healed, distilled --distilled)")
    ap.add_argument("--draft-vocab", nargs="+", type=int, default=[0],
                    help="head sizes for the drafters on the target's tokenizer: 0 = the full head; N = FR-Spec, the N "
                         "target tokens most frequent in the bundled train split (rows labelled <kind>+fr<N>)")
    ap.add_argument("--append", "--resume", dest="append", action="store_true",
                    help="add to an existing --out written with the same settings, skipping the runs it holds (e.g. "
                         "--kinds distilled after a run without --distilled, or the rest of a stopped run); greedy "
                         "acceptance is deterministic, and each run measures its own target-alone speed")
    ap.add_argument("--out", default=None, help="default bench/results/drafter.json, or drafter-<size>.json for "
                                                "another target")
    ap.add_argument("--table", action="store_true",
                    help="print the markdown table (median and range over the repeats) of --out and exit; runs nothing")
    args = ap.parse_args()
    args.out = args.out or default_out(args.target)
    if args.table:
        with open(args.out, encoding="utf-8") as f:
            print(markdown_table(json.load(f)["runs"]))
        return
    if args.in_family == args.target:
        args.kinds = [k for k in args.kinds if k != "in_family"]  # the default target has no smaller family member here

    command = command_line()
    settings = {"target": args.target, "num_prompts": args.num_prompts, "prompt_chars": args.prompt_chars,
                "max_new_tokens": args.max_new_tokens, "prompts": "bundled:eval", "dtype": "float32"}
    if args.prompt_domains:
        settings["prompt_domains"] = args.prompt_domains
    if args.append:
        with open(args.out, encoding="utf-8") as f:
            result = json.load(f)
        if result.get("settings") != settings:
            sys.exit(f"--append: {args.out} was written with settings {result.get('settings')}, not {settings}; "
                     "rerun with those settings or without --append")
        result.setdefault("appended_by", []).append({"command": command, "packages": package_versions()})
    else:
        result = {"machine": machine_info(), "packages": package_versions(), "command": command,
                  "settings": settings, "runs": []}
    paths = {"in_family": (args.in_family, False), "untouched": (args.untouched, True),
             "transplanted": (args.transplanted, False), "healed": (args.healed, False),
             "distilled": (args.distilled, False)}
    for kind, job in (("healed", "xtok heal"), ("distilled", "xtok distill")):
        if kind in args.kinds and not paths[kind][0]:
            if kind in sys.argv:
                sys.exit(f"--kinds {kind} needs --{kind} DIR (the drafter after `{job}`)")
            args.kinds.remove(kind)
    drafters = {}  # label -> (drafter, cross tokenizer, draft vocab)
    for kind in args.kinds:
        drafter, cross = paths[kind]
        for n in [0] if cross else args.draft_vocab:
            drafters[kind if not n else f"{kind}+fr{n}"] = (drafter, cross, n)
    if "transplanted" in drafters and not args.transplanted:
        sys.exit("--transplanted DIR is required unless --kinds leaves it out (xtok transplant writes it)")
    started = time.perf_counter() - result.get("total_seconds", 0.0)
    done = {run_key(r) for r in result["runs"]}
    print(" | ".join(("repeat",) + COLUMNS), flush=True)
    for repeat in range(args.repeats):
        for k in args.k:
            for backend in args.backends:
                for label, (drafter, cross, n_vocab) in drafters.items():
                    if (backend, label, k, repeat) in done:
                        continue
                    cfg = config_from_dict({"recipe": "draft_check", "target": args.target, "drafter": drafter, "k": k,
                                            "num_prompts": args.num_prompts, "prompt_chars": args.prompt_chars,
                                            "prompt_domains": args.prompt_domains,
                                            "max_new_tokens": args.max_new_tokens, "backend": backend,
                                            "cross_tokenizer": cross, "draft_vocab": n_vocab}, "bench")
                    t0 = time.perf_counter()
                    res = run_draft_check(cfg)
                    run = {"drafter_kind": label, "repeat": repeat, **res, "wall_seconds": round(time.perf_counter() - t0, 1)}
                    result["runs"].append(run)
                    result["summary"] = summarize(result["runs"])
                    result["total_seconds"] = round(time.perf_counter() - started, 1)
                    write_json(args.out, result)
                    print(" | ".join([str(repeat)] + [f"{run[c]:.3f}" if isinstance(run[c], float) else str(run[c])
                                                      for c in COLUMNS]), flush=True)
    print(f"written: {args.out} ({result['total_seconds']} s)")


if __name__ == "__main__":
    main()
