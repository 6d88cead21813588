"""Benchmark TokAlign alignment: speed of each phase, mapping at full vocabulary size, map quality, bits per byte.

    .venv/bin/python scripts/bench_align.py --corpus /work/shared/corpus/train \
        --sections pipeline embedders pivots mapping quality --max-docs 3 --max-chars 3000

Sections (each merged into --out, so they can run one at a time):
  pipeline   the whole alignment (tokenize, count, embed, map, holdout) on --corpus with --embedding;
             tokens/s per phase, seconds, peak resident memory, holdout top-1/top-5, shared agreement
  embedders  ppmi-svd against glove on --compare-corpus (same settings otherwise): seconds and quality
  pivots     holdout top-1/top-5 by number of pivots, on the vectors of the pipeline run
  mapping    the map alone at full size: random 151,936 x dims target and 49,152 x dims source vectors
  quality    bits per byte per eval domain of the source model after init by tokalign, tokalign+omp, omp
Writes bench/results/align.json (another pair: align-SOURCE-TARGET.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch
from bench_transplant import DEFAULT_PAIR, PeakRSS, pair_results

from xtok.align.embed import EmbedOptions
from xtok.align.mapping import Side, holdout_quality, map_rows, shared_pairs
from xtok.align.pipeline import AlignSettings, align
from xtok.configfile import config_from_dict
from xtok.corpus import load_corpus
from xtok.eval.run import eval_model
from xtok.models.load import load_model, load_tokenizer
from xtok.transplant.apply import transplant
from xtok.utils.hardware import machine_info
from xtok.utils.io import command_line, package_versions, write_json
from xtok.vocab.shared import build_token_map


def texts_of(spec: str) -> list[str]:
    return list(load_corpus(spec)["text"])


def run_pipeline(args, target_tok, source_tok, texts, embedding: str):
    settings = AlignSettings(embedding=embedding, window=args.window, min_count=args.min_count, pivots=args.pivots,
                             chunk=args.chunk, embed=EmbedOptions(dims=args.dims, svd_power=args.svd_power, progress=True))
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        al, report = align(target_tok, source_tok, texts, settings)
        seconds = time.perf_counter() - t0
    row = {"embedding": embedding, "chars": sum(map(len, texts)), "documents": len(texts), "seconds": round(seconds, 1),
           "peak_rss_mb": round(mem.peak / 2**20), "tokens": report["tokens"], "quality": report["quality"],
           "timings": report["timings"]}
    print(json.dumps(row, indent=1), flush=True)
    return al, row


def pivots_section(args, al, tmap) -> list[dict]:
    pairs = shared_pairs(*tmap.anchors(), al.target, al.source)
    rows = []
    for p in args.pivot_grid:
        if p < args.dims:
            continue
        q = holdout_quality(pairs, al.target, al.source, fraction=0.1, pivots=min(p, len(pairs[0])), chunk=args.chunk)
        rows.append(q)
        print(q, flush=True)
    return rows


def mapping_section(args) -> dict:
    gen = torch.Generator().manual_seed(0)
    n_t, n_s = 151_936, 49_152
    side = lambda n: Side(torch.arange(n), torch.randn((n, args.dims), generator=gen), torch.ones(n, dtype=torch.long), n)  # noqa: E731
    target, source = side(n_t), side(n_s)
    n_piv = args.pivots or 14_538  # the shared tokens with vectors in the pipeline run
    pivots = (torch.arange(n_piv), torch.arange(n_piv))
    with PeakRSS() as mem:
        base = mem.proc.memory_info().rss
        t0 = time.perf_counter()
        map_rows(target, source, pivots, torch.arange(n_t), top_k=1, chunk=args.chunk)
        seconds = time.perf_counter() - t0
    out = {"target_tokens": n_t, "source_tokens": n_s, "dims": args.dims, "pivots": n_piv, "chunk": args.chunk,
           "seconds": round(seconds, 1), "peak_rss_mb": round(mem.peak / 2**20),
           "peak_above_inputs_mb": round((mem.peak - base) / 2**20),
           "dense_float64_matrix_would_be_mb": round(n_t * n_s * 8 / 2**20)}
    print(out, flush=True)
    return out


def quality_section(args, result, al) -> None:
    cfg = config_from_dict({"recipe": "eval", "models": [args.source],
                            "data": {"max_docs_per_domain": args.max_docs, "max_chars_per_doc": args.max_chars}})
    ds = load_corpus(cfg.data.spec, max_docs_per_domain=args.max_docs, max_chars_per_doc=args.max_chars)
    q = result.setdefault("quality", {})
    q.update(data=f"bundled:eval, {args.max_docs} docs x {args.max_chars} chars", alignment_corpus=args.corpus)
    bpb, secs = q.setdefault("bits_per_byte", {}), q.setdefault("transplant_seconds", {})
    student, s_tok = load_model(args.source)
    teacher = t_tok = None
    for method, head in args.quality_methods:
        label = f"{method} / {head}"
        if method == "omp" or head in ("omp", "focus"):
            if teacher is None:
                teacher, t_tok = load_model(args.target)
        tok = t_tok or load_tokenizer(args.target)
        t0 = time.perf_counter()
        model, rep = transplant(student, s_tok, tok, teacher_model=teacher, method=method, head_method=head, k=8,
                                candidates=128, alignment=al)
        secs[label] = round(time.perf_counter() - t0, 1)
        r = eval_model(model, tok, label, ds, cfg, progress=False)
        bpb[label] = {d: round(v["bits_per_byte"], 4) for d, v in r["domains"].items()} | {
            "overall": round(r["overall"]["bits_per_byte"], 4)}
        q.setdefault("commands", {})[label] = command_line()
        print(label, bpb[label], secs[label], flush=True)
        del model
        gc.collect()
        write_json(args.out, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=DEFAULT_PAIR[0])
    ap.add_argument("--target", default=DEFAULT_PAIR[1])
    ap.add_argument("--corpus", default="/work/shared/corpus/train")
    ap.add_argument("--compare-corpus", default="bundled:train", help="corpus of the embedders comparison")
    ap.add_argument("--embedding", default="ppmi-svd")
    ap.add_argument("--dims", type=int, default=300)
    ap.add_argument("--window", type=int, default=15)
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--pivots", type=int, default=None, help="default: all shared tokens with vectors")
    ap.add_argument("--svd-power", type=float, default=0.0)
    ap.add_argument("--pivot-grid", type=int, nargs="*", default=[300, 1000, 5000, 1 << 30], help="1<<30: all")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--sections", nargs="+", default=["pipeline", "pivots", "mapping", "quality"])
    ap.add_argument("--quality-methods", nargs="*", default=["tokalign/tokalign", "tokalign+omp/tokalign", "omp/focus"],
                    help="input/head init pairs")
    ap.add_argument("--max-docs", type=int, default=3)
    ap.add_argument("--max-chars", type=int, default=3000)
    ap.add_argument("--out", default=None,
                    help="default: bench/results/align.json for the default pair, else align-SOURCE-TARGET.json")
    args = ap.parse_args()
    args.quality_methods = [tuple(m.split("/")) for m in args.quality_methods]
    args.out = args.out or pair_results("align", (args.source, args.target))
    result = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    if (result.get("source"), result.get("target")) != (args.source, args.target):
        result = {}  # another pair's results: start afresh rather than mix the two
    result.update(machine=machine_info(), packages=package_versions(), source=args.source, target=args.target)
    cmd = command_line()
    for section in args.sections:
        result.setdefault("commands", {})[section] = cmd

    target_tok, source_tok = load_tokenizer(args.target), load_tokenizer(args.source)
    al = None
    if "pipeline" in args.sections or "pivots" in args.sections or "quality" in args.sections:
        al, result["pipeline"] = run_pipeline(args, target_tok, source_tok, texts_of(args.corpus), args.embedding)
        result["pipeline"]["corpus"] = args.corpus
        write_json(args.out, result)
    if "embedders" in args.sections:
        texts = texts_of(args.compare_corpus)
        result["embedders"] = {"corpus": args.compare_corpus, "rows": [
            run_pipeline(args, target_tok, source_tok, texts, e)[1] for e in ("ppmi-svd", "glove")]}
        write_json(args.out, result)
    if "pivots" in args.sections:
        result["pivots"] = pivots_section(args, al, build_token_map(target_tok, source_tok))
        write_json(args.out, result)
    if "mapping" in args.sections:
        result["mapping"] = mapping_section(args)
        write_json(args.out, result)
    if "quality" in args.sections:
        quality_section(args, result, al)
    write_json(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
