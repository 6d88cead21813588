"""Benchmark the OMP transplant: speed against mergekit-tokensurgeon's OMP, exactness, and quality per init method.

    .venv/bin/python scripts/bench_transplant.py --student smollm2-135m --teacher qwen2.5-coder-0.5b \
        --k 64 --sample 1024 --peer-python /tmp/tsurgeon/venv/bin/python \
        --methods omp focus subword mean randn zero --quality-k 8 --max-docs 3 --max-chars 3000

Speed: both OMPs run on the same sample of new tokens, same dictionary (all shared anchors), same k,
one after the other in this run; the full-vocabulary time is extrapolated linearly from the
sample (ours is timed at two sample sizes to show the linearity). The peer is mergekit's
``batch_omp`` (mergekit 0.1.5, run by ``--peer-python``, a Python that has ``pip install
mergekit==0.1.5 torch==2.13.0``) over the same tensors, in the same batch size tokensurgeon uses (512).
Quality: bits per byte per eval domain of the student before and after a transplant by each method.
Writes bench/results/transplant.json (another pair: transplant-STUDENT-TEACHER.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from xtok.configfile import config_from_dict
from xtok.corpus import load_corpus
from xtok.eval.run import eval_model
from xtok.models.load import load_model, resolve_model
from xtok.transplant.apply import transplant
from xtok.transplant.omp import batch_omp, resolve_dtype
from xtok.utils.hardware import machine_info
from xtok.utils.io import command_line, package_versions, write_json
from xtok.vocab.shared import build_token_map

PEER_CODE = """
import sys, time, torch
from mergekit.tokensurgeon import batch_omp
d = torch.load(sys.argv[1])
x, atoms, k, bs = d["x"], d["atoms"], d["k"], d["batch"]
t0 = time.perf_counter()
idx, coef = [], []
for s in range(0, x.shape[0], bs):
    i, c = batch_omp(x[s:s + bs], atoms, k)
    idx.append(i); coef.append(c)
torch.save({"seconds": time.perf_counter() - t0, "idx": torch.cat(idx), "coef": torch.cat(coef)}, sys.argv[2])
"""


class PeakRSS:
    """Sample this process's resident memory in a thread; .peak in bytes."""

    def __enter__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def timed_omp(x, atoms, k, chunk, dtype, candidates=None):
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        idx, coef = batch_omp(x, atoms, k, chunk=chunk, dtype=dtype, candidates=candidates)
        seconds = time.perf_counter() - t0
    return idx, coef, seconds, mem.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default=DEFAULT_PAIR[0])
    ap.add_argument("--teacher", default=DEFAULT_PAIR[1])
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--sample", type=int, default=1024, help="new tokens timed (extrapolated to all)")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--peer-python", default=None, help="a Python with mergekit installed; omit to skip the peer")
    ap.add_argument("--candidates", nargs="*", type=int, default=[], help="also time OMP restricted to m candidates")
    ap.add_argument("--quality-candidates", type=int, default=None, help="candidates for the quality run's omp")
    ap.add_argument("--sections", nargs="+", default=["speed", "holdout", "quality"],
                    help="speed, holdout (rebuild hidden shared tokens), quality (bits per byte), peer_quality "
                         "(tokensurgeon's output, bits per byte), head_mass "
                         "(probability on new rows where the target is shared); others kept from --out")
    ap.add_argument("--holdout", type=int, default=512, help="shared tokens hidden for the holdout section")
    ap.add_argument("--methods", nargs="*", default=["omp", "focus", "subword", "mean", "randn", "zero"])
    ap.add_argument("--quality-k", type=int, default=None, help="k for the quality run (default --k)")
    ap.add_argument("--head-method", default=None, help="output-head init for the quality run (default: each method)")
    ap.add_argument("--max-docs", type=int, default=3)
    ap.add_argument("--max-chars", type=int, default=3000)
    ap.add_argument("--out", default=None,
                    help="default: bench/results/transplant.json for the default pair, else transplant-STUDENT-TEACHER.json")
    args = ap.parse_args()
    args.out = args.out or pair_results("transplant", (args.student, args.teacher))
    old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    if old.get("student") != args.student or old.get("teacher") != args.teacher:
        old = {}
    result: dict = {**old, "machine": machine_info(), "packages": package_versions(), "student": args.student,
                    "teacher": args.teacher, "omp_dtype": str(resolve_dtype(args.dtype))}
    commands = result.setdefault("commands", {})
    for section in args.sections:
        commands[f"speed k{args.k}" if section == "speed" else section] = command_line()

    student, s_tok = load_model(args.student)
    teacher, t_tok = load_model(args.teacher)
    tmap = build_token_map(t_tok, s_tok)
    anchor_t, _ = tmap.anchors()
    new = tmap.new_teacher_ids
    donor = teacher.get_input_embeddings().weight.detach().float()
    atoms = donor[anchor_t]
    gen = torch.Generator().manual_seed(0)
    sample = new[torch.randperm(len(new), generator=gen)[: args.sample]]
    x = donor[sample]
    result["tokens"] = tmap.counts() | {"anchors": len(anchor_t), "donor_dim": donor.shape[1]}

    if "speed" in args.sections:
        result.setdefault("speed", {})[f"k{args.k}"] = speed_section(args, x, atoms, len(new))
        write_json(args.out, result)
    if "holdout" in args.sections:
        result["holdout"] = holdout_section(args, student, s_tok, t_tok, donor, tmap)
        print(json.dumps(result["holdout"], indent=1))
        write_json(args.out, result)
    if "quality" in args.sections:
        quality_section(args, result, student, s_tok, teacher, t_tok)
    if "peer_quality" in args.sections:
        peer_quality_section(args, result)
    if "head_mass" in args.sections:
        result["head_mass"] = head_mass_section(args, student, s_tok, teacher, t_tok, tmap)
        print(json.dumps(result["head_mass"], indent=1))
        write_json(args.out, result)
    print(f"written {args.out}")


DEFAULT_PAIR = ("smollm2-135m", "qwen2.5-coder-0.5b")  # (student or source, teacher or target)


def pair_results(kind: str, pair: tuple[str, str]) -> str:
    """bench/results/KIND.json for the default pair, else KIND-STUDENT-TEACHER.json: one file per pair."""
    return f"bench/results/{kind}.json" if pair == DEFAULT_PAIR else f"bench/results/{kind}-{pair[0]}-{pair[1]}.json"


def head_mass_section(args, student, s_tok, teacher, t_tok, tmap) -> dict:
    """Where the probability goes: mass on new-token rows at positions whose target is a shared token."""
    is_new = tmap.student_of < 0
    docs = load_corpus("bundled:eval", domains=["code", "prose"], max_docs_per_domain=1, max_chars_per_doc=2500)
    out = {"docs": "first code and prose eval documents, 2,500 characters each", "rows": []}
    for method, head in (("omp", "omp"), ("omp", "focus"), ("focus", "focus")):
        model, _ = transplant(student, s_tok, t_tok, teacher_model=teacher, method=method, head_method=head, k=8,
                              candidates=128, chunk=args.chunk, dtype=args.dtype)
        for text, dom in zip(docs["text"], docs["domain"]):
            ids = torch.tensor([[t_tok.bos_token_id] + t_tok(text, add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)  # (T, V)
            target = ids[0, 1:]
            new_t = is_new[target]
            bits = -logp.gather(1, target[:, None])[:, 0] / math.log(2)
            out["rows"].append({"input": method, "head": head, "domain": dom, "new_target_share": round(new_t.float().mean().item(), 3),
                                "mass_on_new_rows_at_shared_targets": round(logp[:, is_new].exp().sum(-1)[~new_t].mean().item(), 3),
                                "bits_at_shared_targets": round(bits[~new_t].mean().item(), 2),
                                "bits_at_new_targets": round(bits[new_t].mean().item(), 2)})
        del model
        gc.collect()
    return out


def speed_section(args, x, atoms, n_new: int) -> dict:
    """Ours at sample/2 and sample (linearity), exactness, the peer on the same sample, candidate variants."""
    half = args.sample // 2
    _, _, t_half, _ = timed_omp(x[:half], atoms, args.k, args.chunk, args.dtype)
    idx, coef, t_full, peak = timed_omp(x, atoms, args.k, args.chunk, args.dtype)
    per_token = t_full / args.sample
    speed = {"k": args.k, "sample_tokens": args.sample, "chunk": args.chunk,
             "xtok_seconds_half_sample": round(t_half, 2), "xtok_seconds_sample": round(t_full, 2),
             "xtok_linearity_ratio": round(t_full / t_half, 3), "xtok_peak_rss_mb": round(peak / 2**20),
             "xtok_extrapolated_seconds_all_new": round(per_token * n_new, 1)}
    # exactness: our coefficients against dense least squares on our support
    errs = []
    for i in range(0, args.sample, max(1, args.sample // 64)):
        ref = torch.linalg.lstsq(atoms[idx[i]].T.double(), x[i].double().unsqueeze(-1)).solution.squeeze(-1)
        errs.append((coef[i].double() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12))
    speed["max_relative_coef_error_vs_lstsq"] = max(errs)
    if args.peer_python:
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"x": x, "atoms": atoms, "k": args.k, "batch": 512}, f"{tmp}/in.pt")
            subprocess.run([args.peer_python, "-c", PEER_CODE, f"{tmp}/in.pt", f"{tmp}/out.pt"], check=True)
            peer = torch.load(f"{tmp}/out.pt")
        same = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(idx, peer["idx"])) / idx.numel()
        speed.update(peer="mergekit 0.1.5 tokensurgeon batch_omp (batch 512)", peer_seconds_sample=round(peer["seconds"], 2),
                     peer_extrapolated_seconds_all_new=round(peer["seconds"] / args.sample * n_new, 1),
                     speedup_vs_peer=round(peer["seconds"] / t_full, 2), support_overlap_with_peer=round(same, 3))
    exact_resid = (x - torch.einsum("bk,bkd->bd", coef, atoms[idx])).norm(dim=1)
    for m in args.candidates:
        c_idx, c_coef, t_m, peak_m = timed_omp(x, atoms, args.k, args.chunk, args.dtype, candidates=m)
        resid = (x - torch.einsum("bk,bkd->bd", c_coef, atoms[c_idx])).norm(dim=1)
        overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(idx, c_idx)) / idx.numel()
        speed[f"candidates_{m}"] = {
            "seconds_sample": round(t_m, 2), "extrapolated_seconds_all_new": round(t_m / args.sample * n_new, 1),
            "speedup_vs_exact": round(t_full / t_m, 2), "peak_rss_mb": round(peak_m / 2**20),
            "support_overlap_with_exact": round(overlap, 3),
            "mean_residual_ratio_vs_exact": round((resid / exact_resid.clamp_min(1e-12)).mean().item(), 4),
            **({"speedup_vs_peer": round(speed["peer_seconds_sample"] / t_m, 2)} if "peer_seconds_sample" in speed else {}),
        }
    print(json.dumps(speed, indent=1))
    return speed


# subword is left out: a hidden shared token's text is spelled by the student as that very token (trivially exact).
HOLDOUT_GRID = [("mean", {}), ("focus", {}), ("omp", {"k": 4}), ("omp", {"k": 8}), ("omp", {"k": 16}),
                ("omp", {"k": 64}), ("omp", {"k": 8, "candidates": 128}), ("omp", {"k": 64, "candidates": 256})]


def holdout_section(args, student, s_tok, t_tok, donor, tmap) -> dict:
    """Hide shared tokens from the anchors, rebuild their student rows, compare with the true rows."""
    from xtok.registry import INIT_METHODS
    from xtok.transplant.methods import Space
    from xtok.vocab.canonical import canonical_vocab

    anchor_t, anchor_s = tmap.anchors()
    s_rows = student.get_input_embeddings().weight.detach().float()
    perm = torch.randperm(len(anchor_t), generator=torch.Generator().manual_seed(1))
    hold, keep = perm[: args.holdout], perm[args.holdout :]
    truth = s_rows[anchor_s[hold]]
    t_bytes = canonical_vocab(t_tok).bytes_of
    out = {"hidden_tokens": args.holdout, "anchors_kept": len(keep), "rows": []}
    for name, kw in HOLDOUT_GRID:
        space = Space("input", s_rows, donor, anchor_t[keep], anchor_s[keep], t_bytes, s_tok, chunk=args.chunk, **kw)
        t0 = time.perf_counter()
        rows = INIT_METHODS.get(name)(space, anchor_t[hold])
        out["rows"].append({"method": name, **kw, "seconds": round(time.perf_counter() - t0, 2),
                            "mean_cosine": round(torch.nn.functional.cosine_similarity(rows, truth, dim=1).mean().item(), 4),
                            "mean_relative_error": round(((rows - truth).norm(dim=1) / truth.norm(dim=1)).mean().item(), 4)})
    return out


def quality_data(args, result):
    """The eval config, data and the quality record (kept when it was measured on the same data)."""
    cfg = config_from_dict({"recipe": "eval", "models": [args.student],
                            "data": {"max_docs_per_domain": args.max_docs, "max_chars_per_doc": args.max_chars}})
    ds = load_corpus(cfg.data.spec, max_docs_per_domain=args.max_docs, max_chars_per_doc=args.max_chars)
    data_desc = f"bundled:eval, {args.max_docs} docs x {args.max_chars} chars"
    q = result.get("quality") if (result.get("quality") or {}).get("data") == data_desc else None
    q = q or {"data": data_desc, "bits_per_byte": {}, "transplant_seconds": {}, "settings": {}}
    result["quality"] = q
    return cfg, ds, q


def record_quality(args, result, q, label, model, tok, ds, cfg, seconds: float | None = None) -> None:
    r = eval_model(model, tok, label, ds, cfg, progress=False)
    q["bits_per_byte"][label] = {d: v["bits_per_byte"] for d, v in r["domains"].items()} | {
        "overall": r["overall"]["bits_per_byte"]}
    if seconds is not None:
        q["transplant_seconds"][label] = round(seconds, 1)
    q.setdefault("commands", {})[label] = command_line()
    print(label, {d: round(v, 3) for d, v in q["bits_per_byte"][label].items()}, flush=True)
    write_json(args.out, result)


def quality_section(args, result, student, s_tok, teacher, t_tok) -> None:
    """Bits per byte per domain before and after each method (merged into any earlier quality rows)."""
    cfg, ds, q = quality_data(args, result)
    for name, model, tok in (("untouched student", student, s_tok), ("teacher", teacher, t_tok)):
        if name not in q["bits_per_byte"]:
            record_quality(args, result, q, name, model, tok, ds, cfg)
    for method in args.methods:
        k = args.quality_k or args.k
        label = f"omp k={k}" + (f" candidates={args.quality_candidates}" if args.quality_candidates else "") \
            if method == "omp" else method
        if args.head_method and args.head_method != method:
            label += f", head {args.head_method}"
        t0 = time.perf_counter()
        model, _ = transplant(student, s_tok, t_tok, teacher_model=teacher, method=method, head_method=args.head_method, k=k,
                              candidates=args.quality_candidates, chunk=args.chunk, dtype=args.dtype)
        seconds = time.perf_counter() - t0
        record_quality(args, result, q, label, model, t_tok, ds, cfg, seconds)
        del model
        gc.collect()


def peer_quality_section(args, result) -> None:
    """mergekit-tokensurgeon's own output (its OMP, k = --quality-k or --k), scored like the rows above."""
    if not args.peer_python:
        sys.exit("--sections peer_quality needs --peer-python (a Python with mergekit installed)")
    cli = Path(args.peer_python).parent / "mergekit-tokensurgeon"
    k = args.quality_k or args.k
    cfg, ds, q = quality_data(args, result)
    with tempfile.TemporaryDirectory(prefix="xtok-tsurgeon-") as tmp:
        cmd = [str(cli), resolve_model(args.student), resolve_model(args.teacher), f"{tmp}/out", "-k", str(k),
               "--approximation-method", "omp", "--quiet"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0
        q["settings"]["tokensurgeon"] = {"command": " ".join(shlex.quote(c) for c in cmd[:1] + ["STUDENT", "TEACHER", "OUT"]
                                                             + cmd[4:]), "mergekit": "0.1.5"}
        model, tok = load_model(f"{tmp}/out")
        record_quality(args, result, q, f"tokensurgeon omp k={k}", model, tok, ds, cfg, seconds)


if __name__ == "__main__":
    main()
