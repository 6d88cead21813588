"""Benchmark the catalogue: conversion time, load time, eval throughput and bits per byte per domain.

    .venv/bin/python scripts/bench_models.py [--models smollm2-135m ...] [--reconvert] [--dtype float32]

Writes bench/results/models.json (machine, versions, the exact command) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from xtok.configfile import config_from_dict
from xtok.corpus import load_corpus
from xtok.eval.report import print_tables
from xtok.eval.run import eval_model
from xtok.models import catalogue as cat
from xtok.models.convert import MODEL_INFO_FILE, convert_gguf
from xtok.models.load import load_model, prepare
from xtok.utils.hardware import machine_info
from xtok.utils.io import package_versions, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=[e.name for e in cat.CATALOGUE.values() if e.ci])
    ap.add_argument("--reconvert", action="store_true", help="time a fresh conversion into a temporary folder")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--max-docs", type=int, default=None, help="documents per eval domain (default: all)")
    ap.add_argument("--max-chars", type=int, default=None, help="truncate each document")
    ap.add_argument("--out", default="bench/results/models.json")
    args = ap.parse_args()

    cfg = config_from_dict({"recipe": "eval", "models": args.models,
                            "data": {"max_docs_per_domain": args.max_docs, "max_chars_per_doc": args.max_chars},
                            "eval": {"window": args.window, "overlap": args.window // 4, "dtype": args.dtype}})
    ds = load_corpus(cfg.data.spec, max_docs_per_domain=cfg.data.max_docs_per_domain, max_chars_per_doc=cfg.data.max_chars_per_doc)
    rows = []
    for name in args.models:
        folder = prepare(name)
        info = json.loads((folder / MODEL_INFO_FILE).read_text())
        conversion_s = info["conversion_seconds"]
        if args.reconvert:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                convert_gguf(cat.gguf_file(cat.get_entry(name)), Path(tmp) / name)
                conversion_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model, tok = load_model(name, dtype=args.dtype)
        load_s = time.perf_counter() - t0
        res = eval_model(model, tok, name, ds, cfg)
        res.update(conversion_seconds=round(conversion_s, 1), load_seconds=round(load_s, 2),
                   folder_mb=round(sum(p.stat().st_size for p in folder.iterdir()) / 1e6, 1),
                   max_abs_logit_diff=info["max_abs_logit_diff"])
        rows.append(res)
        del model
    print_tables(rows, Console())
    write_json(args.out, {
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
        "machine": machine_info(), "packages": package_versions(),
        "settings": cfg.eval.model_dump(), "data": cfg.data.model_dump(), "results": rows,
    })
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
