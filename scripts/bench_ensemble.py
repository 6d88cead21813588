"""Benchmark `xtok ensemble`: bits per byte of two-model mixtures per domain, against both members.

    .venv/bin/python scripts/bench_ensemble.py --models qwen2.5-coder-0.5b out/e2e-qwen-smol/distill

The members share one vocabulary (the second is SmolLM2-135M after the transplant to Qwen's
tokenizer, here also distilled). Each member is scored once on the held-out sample; each mixture
(mode x weights) on the same sample, through the same code path as `xtok ensemble`. Writes
bench/results/ensemble.json with, per mixture, its bits per byte and, per domain, its gap to the best
member (negative: the mixture is better).
"""

from __future__ import annotations

import argparse
import time

from xtok.configfile import config_from_dict
from xtok.corpus import load_corpus
from xtok.ensemble.mix import Ensemble, check_members, normalized_weights
from xtok.ensemble.run import best_member_gap
from xtok.eval.run import eval_model
from xtok.models.load import load_model
from xtok.utils.hardware import machine_info
from xtok.utils.io import command_line, package_versions, write_json


def bits(res: dict) -> dict[str, float]:
    return {d: v["bits_per_byte"] for d, v in res["domains"].items()} | {"overall": res["overall"]["bits_per_byte"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs=2, default=["qwen2.5-coder-0.5b", "out/e2e-qwen-smol/distill"])
    ap.add_argument("--modes", nargs="+", default=["prob", "logprob"])
    ap.add_argument("--weights", nargs="+", type=float, default=[0.7, 0.5],
                    help="the first member's weight in each mixture (the second gets 1 - w)")
    ap.add_argument("--max-docs", type=int, default=2)
    ap.add_argument("--max-chars", type=int, default=2000)
    ap.add_argument("--out", default="bench/results/ensemble.json")
    args = ap.parse_args()

    cfg = config_from_dict({"recipe": "ensemble", "models": args.models,
                            "data": {"spec": "bundled:eval", "max_docs_per_domain": args.max_docs,
                                     "max_chars_per_doc": args.max_chars}}, "bench")
    loaded = [load_model(spec) for spec in args.models]
    models, toks = [m for m, _ in loaded], [t for _, t in loaded]
    check_members(models, toks, args.models)
    ds = load_corpus(cfg.data.spec, max_docs_per_domain=args.max_docs, max_chars_per_doc=args.max_chars)
    result = {"machine": machine_info(), "packages": package_versions(),
              "command": command_line(),
              "settings": {"models": args.models, "eval": f"bundled:eval, {args.max_docs} docs x {args.max_chars} chars "
                                                          "per domain"},
              "members": {}, "mixtures": []}
    members = []
    for model, spec in zip(models, args.models):
        t0 = time.perf_counter()
        members.append(eval_model(model, toks[0], spec, ds, cfg, progress=False))
        result["members"][spec] = bits(members[-1]) | {"seconds": round(time.perf_counter() - t0, 1)}
        print(spec, result["members"][spec], flush=True)
    for mode in args.modes:
        for w in args.weights:
            weights = normalized_weights([w, 1 - w], 2)
            t0 = time.perf_counter()
            mixed = eval_model(Ensemble(models, weights, mode).eval(), toks[0], f"{mode} {w}", ds, cfg, progress=False)
            result["mixtures"].append({"mode": mode, "weights": weights.tolist(), "bits_per_byte": bits(mixed),
                                       "minus_best_member": best_member_gap({"members": members, "ensemble": mixed}),
                                       "seconds": round(time.perf_counter() - t0, 1)})
            print(result["mixtures"][-1], flush=True)
            write_json(args.out, result)
    write_json(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
