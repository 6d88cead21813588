"""Benchmark the head fit (xtok/transplant/head_fit.py) against the zero-shot subword-prior head, and say where the bits go.

    .venv/bin/python scripts/bench_head_fit.py --transplanted DIR --tokens 30000 90000 --l2 0.03 0.1 0.3

1. The transplant: DIR (an `xtok transplant` output of the default pair with the default settings), or one made here
   with them (OMP k=8 over 128 candidates, subword-prior head).
2. Features: the transplant's own final hidden states over the largest --tokens positions of bundled:train, the text
   `head_fit_tokens` reads (a smaller setting uses their prefix, which is what it would read).
3. Validation (documents of ../shared/corpus/train not in bundled:train, as in bench_heal.py): every (tokens, l2) of the
   grid; the setting with the lowest overall bits per byte is kept.
   ``--share-map off seen all`` fits the rows from the transplant's head and from the head after the share map
   (xtok/transplant/share_map.py: the teacher's in-family shares as one map), moving the families the fit text
   reaches (seen) or every multi-member family (all); each map's own head scored too.
4. Eval (bundled:eval, the README's split): untouched student, zero-shot transplant, head-fitted transplant (the best
   of each start), bits per
   byte per domain with 95% bootstrap intervals and the paired ratio to the untouched student; and where the bits go:
   the cost of the byte chunks that hold a new token and of those that do not, against the untouched student's cost
   of the same bytes (chunks end where both tokenizations end a token).
Writes bench/results/head_fit.json. One heavy job at a time.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_heal import public, score, validation_docs  # noqa: E402
from bench_transplant import DEFAULT_PAIR, PeakRSS, pair_results  # noqa: E402

from xtok.config import TransplantConfig  # noqa: E402
from xtok.corpus import load_corpus  # noqa: E402
from xtok.models.load import load_model  # noqa: E402
from xtok.transplant.calibrate import calibration_texts  # noqa: E402
from xtok.transplant.head_fit import final_states, fit_rows, teacher_fit_targets, token_windows  # noqa: E402
from xtok.transplant.methods import first_piece_table  # noqa: E402
from xtok.transplant.run import run_transplant  # noqa: E402
from xtok.transplant.share_map import SCOPES, Families, apply_share_map  # noqa: E402
from xtok.utils.hardware import machine_info  # noqa: E402
from xtok.utils.io import command_line, package_versions, write_json  # noqa: E402
from xtok.vocab.chunks import paired_tokenization  # noqa: E402
from xtok.vocab.shared import build_token_map  # noqa: E402


def _token_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0].float()
    return logits[:-1].log_softmax(-1).gather(1, ids[1:, None])[:, 0]


def where_bits_go(model, tok, student, s_tok, texts, domains, max_tokens: int = 1023) -> dict:
    """Per domain: bits per chunk holding a new token / holding none, for ``model`` and for the untouched student on the
    same bytes (each document's first ``max_tokens`` tokens of ``tok``)."""
    new = build_token_map(tok, s_tok).student_of < 0
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    acc: dict[str, dict[str, float]] = {}
    for text, dom in zip(texts, domains):
        a = torch.tensor([[start] + tok(text, add_special_tokens=False)["input_ids"][:max_tokens]])
        pair = paired_tokenization(tok, s_tok, a)
        b = pair.ids[0][pair.mask[0].bool()]
        la, lb = _token_logprobs(model, a[0]), _token_logprobs(student, b)
        ca, cb = pair.a_chunk[0, 1:], pair.b_chunk[0, 1 : len(b)]
        n = int(max(ca.max(), cb.max())) + 1

        def per_chunk(c, values, n=n):
            return torch.zeros(n, dtype=torch.float64).index_add_(0, c.clamp(min=0), (values * (c >= 0)).double())

        has_new = per_chunk(ca, new[a[0, 1:]].float()) > 0
        valid = (per_chunk(ca, torch.ones(len(ca))) > 0) & (per_chunk(cb, torch.ones(len(cb))) > 0)
        cost_a, cost_b = -per_chunk(ca, la) / math.log(2), -per_chunk(cb, lb) / math.log(2)
        d = acc.setdefault(dom, {})
        for name, m in (("new", has_new & valid), ("shared", ~has_new & valid)):
            d[f"{name}_chunks"] = d.get(f"{name}_chunks", 0) + int(m.sum())
            d[f"{name}_bits"] = d.get(f"{name}_bits", 0.0) + float(cost_a[m].sum())
            d[f"{name}_bits_untouched"] = d.get(f"{name}_bits_untouched", 0.0) + float(cost_b[m].sum())
    out = {}
    for dom, d in sorted(acc.items()):
        out[dom] = {}
        for name in ("new", "shared"):
            k = max(1, d[f"{name}_chunks"])
            out[dom][f"{name}_chunks"] = d[f"{name}_chunks"]
            out[dom][f"bits_per_{name}_chunk"] = round(d[f"{name}_bits"] / k, 3)
            out[dom][f"untouched_bits_per_{name}_chunk"] = round(d[f"{name}_bits_untouched"] / k, 3)
        total = d["new_bits"] + d["shared_bits"] - d["new_bits_untouched"] - d["shared_bits_untouched"]
        out[dom]["share_of_excess_bits_on_new_chunks"] = round((d["new_bits"] - d["new_bits_untouched"]) / total, 3) \
            if total > 0 else None
    return out


def start_name(scope: str) -> str:
    return f"share map ({scope})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default=DEFAULT_PAIR[0])
    ap.add_argument("--teacher", default=DEFAULT_PAIR[1])
    ap.add_argument("--transplanted", default=None, help="an xtok transplant output of the pair (default settings)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[30000, 90000])
    ap.add_argument("--l2", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--teacher-weight", type=float, nargs="+", default=[0.0],
                    help="the teacher's share of the fit's targets (0: hard next tokens only)")
    ap.add_argument("--top-k", type=int, default=8, help="the teacher's tokens per position in the targets")
    ap.add_argument("--share-map", choices=["off", *SCOPES], nargs="+", default=["off"],
                    help="fit the rows from the transplant's head (off) and/or after the share map, moving the families "
                    "the fit text reaches (seen) or every multi-member family (all)")
    ap.add_argument("--eval-docs", type=int, default=8)
    ap.add_argument("--eval-chars", type=int, default=6000)
    ap.add_argument("--val-docs", type=int, default=4)
    ap.add_argument("--val-chars", type=int, default=3000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.out = args.out or pair_results("head_fit", (args.student, args.teacher))
    result = {"machine": machine_info(), "packages": package_versions(), "command": command_line(),
              "student": args.student, "teacher": args.teacher, "load": "nothing else running"}
    student, s_tok = load_model(args.student)
    path = args.transplanted
    if path is None:
        path = str(Path(tempfile.mkdtemp(prefix="bench-head-fit-")) / "transplanted")
        run_transplant(TransplantConfig(student=args.student, teacher=args.teacher, out=path), progress=False)
    model, tok = load_model(path)
    result["transplant"] = {"folder": "reused" if args.transplanted else "made here", "settings": "xtok transplant defaults"}
    head = model.get_output_embeddings()
    w0 = head.weight.detach().clone()

    t0 = time.perf_counter()
    windows = token_windows(tok, calibration_texts("bundled:train", max(args.tokens)), max(args.tokens))
    hidden, targets = final_states(model, windows, max(args.tokens))
    result["features"] = {"positions": len(targets), "seconds": round(time.perf_counter() - t0, 1),
                          "tokens_per_second": round(len(targets) / (time.perf_counter() - t0), 1)}
    print(result["features"], flush=True)
    scopes = [sm for sm in args.share_map if sm != "off"]
    top_k = args.top_k if any(a > 0 for a in args.teacher_weight) else None  # the teacher's targets are needed
    soft, groups, fam, teacher_rows = None, None, None, None
    if scopes or top_k:
        teacher, _ = load_model(args.teacher)
        t0 = time.perf_counter()
        fam = Families.of(first_piece_table(tok, s_tok, student.get_output_embeddings().weight.shape[0]), w0.shape[0]) \
            if scopes else None
        soft, groups = teacher_fit_targets(teacher, windows, max(args.tokens), w0.shape[0], top_k=top_k, fam=fam)
        teacher_rows = teacher.get_output_embeddings().weight.detach().float()[: w0.shape[0]]
        result["teacher_passes"] = {"top_k": top_k, "share_map": bool(scopes),  # one pass serves both
                                    "seconds": round(time.perf_counter() - t0, 1)}
        del teacher
        print(result["teacher_passes"], flush=True)

    val_texts, val_domains = validation_docs(args.val_docs, args.val_chars)
    val = {"transplanted (zero-shot)": public(score(model, tok, val_texts, val_domains))}
    starts = {"off": w0}
    if scopes:
        result["share_map"] = {}
        for scope in scopes:
            starts[scope], report = apply_share_map(w0, hidden, groups, teacher_rows, fam, scope=scope)
            result["share_map"][scope] = report
            with torch.no_grad():
                head.weight.copy_(starts[scope])
            val[start_name(scope)] = public(score(model, tok, val_texts, val_domains))
            print(start_name(scope), report, {d: round(s["bits_per_byte"], 4)
                                              for d, s in val[start_name(scope)]["domains"].items()}, flush=True)
    fits = {}
    grid = [(n, l2, a, sm) for n in sorted(args.tokens) for l2 in args.l2 for a in args.teacher_weight for sm in args.share_map]
    for n, l2, alpha, sm in grid:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            rows, ids, before, after = fit_rows(hidden[:n], targets[:n], starts[sm], l2=l2, iterations=args.iterations,
                                                soft=None if soft is None else (soft[0][:n], soft[1][:n]),
                                                soft_weight=alpha)
            seconds = time.perf_counter() - t0
        with torch.no_grad():
            head.weight.copy_(starts[sm])
            head.weight[ids] = rows
        name = ("" if sm == "off" else f"{start_name(sm)} + ") + f"head fit ({n} positions, l2 {l2}" + \
            (f", teacher {alpha} top-{args.top_k})" if alpha else ")")
        fits[name] = (starts[sm], rows, ids, sm)
        val[name] = {**public(score(model, tok, val_texts, val_domains)), "fit_seconds": round(seconds, 1),
                     "fit_peak_rss_gb": round(mem.peak / 2**30, 2), "rows_fitted": len(ids),
                     "ce_before": round(before, 4), "ce_after": round(after, 4), "positions": n, "l2": l2,
                     "teacher_weight": alpha}
        print(name, {d: round(s["bits_per_byte"], 4) for d, s in val[name]["domains"].items()}, flush=True)
        result["validation"] = val
        write_json(args.out, result)

    def overall(entry):  # every domain counts the same
        doms = entry["domains"].values()
        return sum(s["bits_per_byte"] for s in doms) / len(doms)

    best = min(fits, key=lambda k: overall(val[k]))
    result["chosen_on_validation"] = best
    # the best fit of each start, so the eval split shows what the share map adds
    shown = [min((k for k in fits if fits[k][3] == sm), key=lambda k: overall(val[k]))
             for sm in dict.fromkeys(f[3] for f in fits.values())]
    ev = load_corpus("bundled:eval", max_docs_per_domain=args.eval_docs, max_chars_per_doc=args.eval_chars)
    ev_texts, ev_domains = list(ev["text"]), list(ev["domain"])
    result["data"] = {"eval": {"spec": "bundled:eval", "docs": len(ev_texts), "chars": sum(map(len, ev_texts))},
                      "validation": {"docs": len(val_texts), "chars": sum(map(len, val_texts))},
                      "fit": {"spec": "bundled:train", "positions": len(targets)}}
    evals = {"untouched": score(student, s_tok, ev_texts, ev_domains)}
    bits = {}
    with torch.no_grad():
        head.weight.copy_(w0)
    evals["transplanted (zero-shot)"] = score(model, tok, ev_texts, ev_domains, evals["untouched"])
    bits["transplanted (zero-shot)"] = where_bits_go(model, tok, student, s_tok, ev_texts, ev_domains)
    for name in shown:
        start, rows, ids, _ = fits[name]
        with torch.no_grad():
            head.weight.copy_(start)
            head.weight[ids] = rows
        evals[name] = score(model, tok, ev_texts, ev_domains, evals["untouched"])
        bits[name] = where_bits_go(model, tok, student, s_tok, ev_texts, ev_domains)
        print(name, {d: round(s.get("ratio", 0), 4) for d, s in public(evals[name])["domains"].items()}, flush=True)
    result["eval"] = {k: public(v) for k, v in evals.items()}
    result["where_the_bits_go"] = bits
    write_json(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
