"""Time the default transplant stage by stage, per calibration precision, and check what the precision costs in quality.

    .venv/bin/python scripts/bench_transplant_time.py --precision float32 bf16
    .venv/bin/python scripts/bench_transplant_time.py --baseline-rev 6604135 --precision float32 auto \
        --omp-dtype float32 auto --out bench/results/transplant_time_epyc_avx512.json

For each precision (with ``--omp-dtype``, each pair of calibration precision and OMP screen dtype):
``xtok transplant --config qwen2.5-coder-0.5b_to_smollm2-135m --calibration-precision P --dtype D`` run as
its own process under ``/usr/bin/time -v`` (wall time and peak RSS of the whole command), the stages from its
transplant_report.json (calibration, input OMP, output rows), then bits per byte of the output on the validation split
(bench_heal.validation_docs, 8 documents x 6,000 characters per domain) and on the eval split (bundled:eval, the
README's), each with a 95% bootstrap interval over documents and the paired ratio to the untouched student. The
runs go one after the other, nothing else running; ``--baseline-rev`` adds a first run of an earlier revision's xtok
(a git worktree of it on PYTHONPATH), the peer the others are compared with. Writes bench/results/transplant_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_heal import public, score, validation_docs  # noqa: E402

from xtok.corpus import load_corpus  # noqa: E402
from xtok.models.load import load_model  # noqa: E402
from xtok.utils.hardware import fast_bf16, machine_info  # noqa: E402
from xtok.utils.io import command_line, package_versions, write_json  # noqa: E402

CONFIG = "qwen2.5-coder-0.5b_to_smollm2-135m"
STUDENT = "smollm2-135m"


def timed_transplant(precision: str, omp_dtype: str, out: Path, source: Path | None = None) -> dict:
    """Run the transplant CLI for calibration ``precision`` and OMP ``omp_dtype`` under /usr/bin/time -v; its wall
    time, peak RSS and report stages. ``source``: run the xtok of that checkout instead (PYTHONPATH), flags as they
    were there."""
    cmd = [sys.executable, "-m", "xtok", "transplant", "--config", CONFIG, "--out", str(out),
           "--calibration-precision", precision]
    if omp_dtype != "float32" or source is None:
        cmd += ["--dtype", omp_dtype]
    env = dict(os.environ, PYTHONPATH=str(source)) if source is not None else None
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, cwd=source)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"transplant failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    report = json.loads((out / "transplant_report.json").read_text())
    prior = report["spaces"]["output"]["subword_prior"]  # the calibration's report, its seconds included
    stages = {"calibration": prior["seconds"], "input rows (OMP)": report["spaces"]["input"]["seconds"],
              "output rows": report["spaces"]["output"]["seconds"]}
    return {"command": " ".join(["xtok", *cmd[3:]]).replace(str(out), "DIR"), "wall_seconds": round(wall, 1),
            "peak_rss_gb": round(int(rss.group(1)) / 2**20, 2) if rss else None, "report_seconds": report["seconds"],
            "stages_seconds": stages, "calibration": {k: v for k, v in prior.items() if k != "seconds"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", nargs="+", default=["float32", "bf16"], choices=["float32", "bf16", "auto"],
                    help="calibration precisions")
    ap.add_argument("--omp-dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "auto"],
                    help="OMP screen dtypes, one per precision (or one for all)")
    ap.add_argument("--baseline-rev", help="also time this git revision's transplant (a worktree of it, float32 "
                                           "calibration and OMP), first, in the same run")
    ap.add_argument("--val-docs", type=int, default=8)
    ap.add_argument("--val-chars", type=int, default=6000)
    ap.add_argument("--eval-docs", type=int, default=8)
    ap.add_argument("--eval-chars", type=int, default=6000)
    ap.add_argument("--out", default="bench/results/transplant_time.json")
    args = ap.parse_args()
    if len(args.omp_dtype) not in (1, len(args.precision)):
        raise SystemExit(f"--omp-dtype takes one value or one per --precision ({len(args.precision)}), not "
                         f"{len(args.omp_dtype)}")
    settings = list(zip(args.precision, args.omp_dtype * len(args.precision) if len(args.omp_dtype) == 1
                        else args.omp_dtype))
    if ("bf16" in args.precision or "bfloat16" in args.omp_dtype) and not fast_bf16():
        print("warning: this machine has no fast bf16 (no AMX, avx512_bf16 or CUDA): bf16 runs will be slow",
              file=sys.stderr)
    result = {"machine": machine_info(), "packages": package_versions(), "command": command_line(), "config": CONFIG,
              "load": "nothing else running; each transplant its own process, one after the other", "runs": {}}
    val_texts, val_domains = validation_docs(args.val_docs, args.val_chars)
    ev = load_corpus("bundled:eval", max_docs_per_domain=args.eval_docs, max_chars_per_doc=args.eval_chars)
    ev_texts, ev_domains = list(ev["text"]), list(ev["domain"])
    result["data"] = {"validation": {"docs": len(val_texts), "chars": sum(map(len, val_texts))},
                      "eval": {"spec": "bundled:eval", "docs": len(ev_texts), "chars": sum(map(len, ev_texts))}}
    work = Path(tempfile.mkdtemp(prefix="bench-transplant-time-"))
    folders: dict[str, Path] = {}  # each run's output, by its name in the JSON
    if args.baseline_rev:
        tree = work / "baseline-src"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), args.baseline_rev], check=True)
        rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        name = f"baseline {rev}: float32 calibration, float32 OMP"
        folders[name] = work / "baseline"
        run = timed_transplant("float32", "float32", folders[name], source=tree)
        print(name, {k: v for k, v in run.items() if k != "command"}, flush=True)
        result["runs"][name] = run
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=True)
    for precision, omp_dtype in settings:
        name = precision if args.omp_dtype == ["float32"] else f"{precision} calibration, {omp_dtype} OMP"
        folders[name] = work / name.replace(" ", "_").replace(",", "")
        run = timed_transplant(precision, omp_dtype, folders[name])
        print(name, {k: v for k, v in run.items() if k != "command"}, flush=True)
        result["runs"][name] = run
        write_json(args.out, result)
    base = next((result["runs"][n] for n in folders if n.startswith("baseline")), None)
    if base is not None:
        for name in folders:
            run = result["runs"][name]
            run["wall_vs_baseline"] = round(run["wall_seconds"] / base["wall_seconds"], 3)
            run["omp_vs_baseline"] = round(run["stages_seconds"]["input rows (OMP)"]
                                           / base["stages_seconds"]["input rows (OMP)"], 3)
        write_json(args.out, result)
    student, s_tok = load_model(STUDENT)
    untouched = {"validation": score(student, s_tok, val_texts, val_domains),
                 "eval": score(student, s_tok, ev_texts, ev_domains)}
    result["untouched"] = {split: public(v) for split, v in untouched.items()}
    del student
    for name, folder in folders.items():
        model, tok = load_model(str(folder))
        for split, (texts, domains) in {"validation": (val_texts, val_domains), "eval": (ev_texts, ev_domains)}.items():
            entry = public(score(model, tok, texts, domains, untouched[split]))
            result["runs"][name][split] = entry
            print(name, split, {d: round(s["bits_per_byte"], 4) for d, s in entry["domains"].items()}, flush=True)
        write_json(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
