"""Time the default transplant stage by stage, per calibration precision, and check what the precision costs in quality.

    .venv/bin/python scripts/bench_transplant_time.py --precision float32 bf16

For each precision: ``xtok transplant --config qwen2.5-coder-0.5b_to_smollm2-135m --calibration-precision P`` run as
its own process under ``/usr/bin/time -v`` (wall time and peak RSS of the whole command), the stages from its
transplant_report.json (calibration, input OMP, output rows), then bits per byte of the output on the validation split
(bench_heal.validation_docs, 8 documents x 6,000 characters per domain) and on the eval split (bundled:eval, the
README's), each with a 95% bootstrap interval over documents and the paired ratio to the untouched student. The
precisions run one after the other, nothing else running. Writes bench/results/transplant_time.json.
"""

from __future__ import annotations

import argparse
import json
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


def timed_transplant(precision: str, out: Path) -> dict:
    """Run the transplant CLI for ``precision`` under /usr/bin/time -v; its wall time, peak RSS and report stages."""
    cmd = [str(Path(sys.executable).parent / "xtok"), "transplant", "--config", CONFIG, "--out", str(out),
           "--calibration-precision", precision]
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"transplant failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    report = json.loads((out / "transplant_report.json").read_text())
    prior = report["spaces"]["output"]["subword_prior"]  # the calibration's report, its seconds included
    stages = {"calibration": prior["seconds"], "input rows (OMP)": report["spaces"]["input"]["seconds"],
              "output rows": report["spaces"]["output"]["seconds"]}
    return {"command": " ".join(["xtok", *cmd[1:]]).replace(str(out), "DIR"), "wall_seconds": round(wall, 1),
            "peak_rss_gb": round(int(rss.group(1)) / 2**20, 2) if rss else None, "report_seconds": report["seconds"],
            "stages_seconds": stages, "calibration": {k: v for k, v in prior.items() if k != "seconds"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", nargs="+", default=["float32", "bf16"], choices=["float32", "bf16", "auto"])
    ap.add_argument("--val-docs", type=int, default=8)
    ap.add_argument("--val-chars", type=int, default=6000)
    ap.add_argument("--eval-docs", type=int, default=8)
    ap.add_argument("--eval-chars", type=int, default=6000)
    ap.add_argument("--out", default="bench/results/transplant_time.json")
    args = ap.parse_args()
    if "bf16" in args.precision and not fast_bf16():
        print("warning: this machine has no fast bf16 (no AMX, no CUDA): the bf16 run will be slow", file=sys.stderr)
    result = {"machine": machine_info(), "packages": package_versions(), "command": command_line(), "config": CONFIG,
              "load": "nothing else running; each transplant its own process, one after the other", "runs": {}}
    val_texts, val_domains = validation_docs(args.val_docs, args.val_chars)
    ev = load_corpus("bundled:eval", max_docs_per_domain=args.eval_docs, max_chars_per_doc=args.eval_chars)
    ev_texts, ev_domains = list(ev["text"]), list(ev["domain"])
    result["data"] = {"validation": {"docs": len(val_texts), "chars": sum(map(len, val_texts))},
                      "eval": {"spec": "bundled:eval", "docs": len(ev_texts), "chars": sum(map(len, ev_texts))}}
    work = Path(tempfile.mkdtemp(prefix="bench-transplant-time-"))
    for precision in args.precision:
        run = timed_transplant(precision, work / precision)
        print(precision, {k: v for k, v in run.items() if k != "command"}, flush=True)
        result["runs"][precision] = run
        write_json(args.out, result)
    student, s_tok = load_model(STUDENT)
    untouched = {"validation": score(student, s_tok, val_texts, val_domains),
                 "eval": score(student, s_tok, ev_texts, ev_domains)}
    result["untouched"] = {split: public(v) for split, v in untouched.items()}
    del student
    for precision in args.precision:
        model, tok = load_model(str(work / precision))
        for split, (texts, domains) in {"validation": (val_texts, val_domains), "eval": (ev_texts, ev_domains)}.items():
            entry = public(score(model, tok, texts, domains, untouched[split]))
            result["runs"][precision][split] = entry
            print(precision, split, {d: round(s["bits_per_byte"], 4) for d, s in entry["domains"].items()}, flush=True)
        write_json(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
