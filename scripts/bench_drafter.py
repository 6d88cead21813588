"""Benchmark drafters for speculative decoding: untouched (cross-tokenizer baseline) and transplanted, both backends.

    .venv/bin/xtok transplant --student smollm2-135m --teacher qwen2.5-coder-0.5b --out /tmp/smol-qwen
    .venv/bin/python scripts/bench_drafter.py --transplanted /tmp/smol-qwen
    # later, once `xtok distill` has run: add its rows to the same file, same settings
    .venv/bin/python scripts/bench_drafter.py --kinds distilled --distilled DIR --append

For each backend (hf: transformers assisted generation; vllm: vLLM draft_model) and each k, the
target generates greedily without and with the drafter on the same held-out prompts, one request at
a time: (a) the untouched drafter keeps its own tokenizer (hf: Universal Assisted Generation, vllm:
use_heterogeneous_vocab); (b) the drafter transplanted to the target's tokenizer (xtok transplant);
(c) with --distilled, the transplanted drafter after token-level distillation (xtok distill).
Runs go one after another, never in parallel. Writes bench/results/drafter.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from xtok.configfile import config_from_dict
from xtok.speculative.run import run_draft_check
from xtok.utils.io import command_line, machine_info, package_versions, write_json

COLUMNS = ("backend", "drafter_kind", "k", "acceptance_rate", "mean_acceptance_length", "tokens_per_second_target_alone",
           "tokens_per_second_with_drafter", "speedup", "lossless")
KINDS = ("untouched", "transplanted", "distilled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="qwen2.5-coder-0.5b")
    ap.add_argument("--untouched", default="smollm2-135m", help="the drafter with its own tokenizer")
    ap.add_argument("--transplanted", default=None, help="the drafter given the target's tokenizer (xtok transplant)")
    ap.add_argument("--distilled", default=None,
                    help="optional: the transplanted drafter after `xtok distill` (e.g. an end-to-end run's distill/)")
    ap.add_argument("--backends", nargs="+", default=["hf", "vllm"])
    ap.add_argument("--k", nargs="+", type=int, default=[2, 4])
    ap.add_argument("--num-prompts", type=int, default=4)
    ap.add_argument("--prompt-chars", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                    help="which drafters to run (distilled needs --distilled)")
    ap.add_argument("--append", action="store_true",
                    help="add these runs to an existing --out written with the same settings (e.g. --kinds distilled "
                         "after a run without --distilled); greedy acceptance is deterministic, and each run measures "
                         "its own target-alone speed")
    ap.add_argument("--out", default="bench/results/drafter.json")
    args = ap.parse_args()

    command = command_line()
    settings = {"target": args.target, "num_prompts": args.num_prompts, "prompt_chars": args.prompt_chars,
                "max_new_tokens": args.max_new_tokens, "prompts": "bundled:eval", "dtype": "float32"}
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
    paths = {"untouched": (args.untouched, True), "transplanted": (args.transplanted, False),
             "distilled": (args.distilled, False)}
    if "distilled" in args.kinds and not args.distilled:
        if args.kinds != list(KINDS):
            sys.exit("--kinds distilled needs --distilled DIR (the drafter after `xtok distill`)")
        args.kinds.remove("distilled")
    drafters = {kind: paths[kind] for kind in args.kinds}
    if "transplanted" in drafters and not args.transplanted:
        sys.exit("--transplanted DIR is required unless --kinds leaves it out (xtok transplant writes it)")
    started = time.perf_counter() - result.get("total_seconds", 0.0)
    print(" | ".join(COLUMNS), flush=True)
    for backend in args.backends:
        for label, (drafter, cross) in drafters.items():
            for k in args.k:
                cfg = config_from_dict({"recipe": "draft_check", "target": args.target, "drafter": drafter, "k": k,
                                        "num_prompts": args.num_prompts, "prompt_chars": args.prompt_chars,
                                        "max_new_tokens": args.max_new_tokens, "backend": backend,
                                        "cross_tokenizer": cross}, "bench")
                t0 = time.perf_counter()
                res = run_draft_check(cfg)
                run = {"drafter_kind": label, **res, "wall_seconds": round(time.perf_counter() - t0, 1)}
                result["runs"].append(run)
                result["total_seconds"] = round(time.perf_counter() - started, 1)
                write_json(args.out, result)
                print(" | ".join(f"{run[c]:.3f}" if isinstance(run[c], float) else str(run[c]) for c in COLUMNS), flush=True)
    print(f"written: {args.out} ({result['total_seconds']} s)")


if __name__ == "__main__":
    main()
