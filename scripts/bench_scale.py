"""Transplant at 7B shape without downloading one: peak memory and time of the streaming transplant.

Writes a synthetic llama-architecture model with random bf16 weights in Llama-2-7B's body shape (hidden 4,096,
32 layers, intermediate 11,008, untied head) carrying SmolLM2's tokenizer (49,152 tokens; about 13.5 GB on disk),
then runs ``xtok transplant`` on it in a child process (the Qwen2.5 tokenizer by OMP, the donor
Qwen2.5-Coder-0.5B's embeddings; ``--head-method omp``, since subword-prior runs the models), and records the child's
peak RSS and wall time, the seconds the rows took, and a plain shard-by-shard read-and-write of the same model (what
disk speed alone costs). The output is loaded in transformers on the meta device with every key and shape checked.

    .venv/bin/python scripts/bench_scale.py --out bench/results/scale.json

``--layers 2`` makes a small run to try the script (about 1.5 GB).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xtok.models.load import load_tokenizer, stored_tensors  # noqa: E402
from xtok.utils.hardware import machine_info  # noqa: E402
from xtok.utils.io import package_versions, write_json  # noqa: E402


def write_synthetic(folder: Path, args, tok) -> dict:
    """Random bf16 weights (normal, std 0.02; norms 1) in the given shape, in shards of ``args.shard_gb``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, intermediate_size=args.intermediate,
                      num_attention_heads=args.heads, num_key_value_heads=args.heads, vocab_size=len(tok),
                      max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg.dtype = torch.bfloat16
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(cfg).state_dict().items()}
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    shard, size, files, weight_map = {}, 0, [], {}

    def flush():
        nonlocal shard, size
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for key, shape in shapes.items():
        if key.endswith("norm.weight"):
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.empty(shape, dtype=torch.float32).normal_(0, 0.02, generator=gen).to(torch.bfloat16)
        shard[key] = t
        size += t.numel() * 2
        if size >= args.shard_gb * 2**30:
            flush()
    if shard:
        flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg.save_pretrained(folder)
    tok.save_pretrained(folder)
    params = sum(torch.Size(s).numel() for s in shapes.values())
    return {"parameters": params, "shards": len(files), "bytes": sum((folder / f).stat().st_size for f in files),
            "seconds": round(time.perf_counter() - t0, 1), "hidden": args.hidden, "layers": args.layers,
            "intermediate": args.intermediate, "vocab": len(tok)}


def plain_copy(src: Path, dst: Path) -> float:
    """Read every shard with safetensors and write it back: the disk cost of a transplant that changed nothing."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    t0 = time.perf_counter()
    for f in sorted(src.glob("*.safetensors")):
        save_file(load_file(str(f)), str(dst / f.name), metadata={"format": "pt"})
    return round(time.perf_counter() - t0, 1)


def check_output(out: Path, rows: int) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out)).state_dict().items()}
    got = stored_tensors(out)
    _, info = AutoModelForCausalLM.from_pretrained(out, device_map="meta", output_loading_info=True)
    return {"keys_expected": len(want), "keys_stored": len(got),
            "keys_missing": sorted(set(want) - set(got))[:5], "keys_unexpected": sorted(set(got) - set(want))[:5],
            "shapes_differ": sorted(k for k in got if k in want and tuple(got[k][1]) != want[k])[:5],
            "stored_dtypes": sorted({d for d, _ in got.values()}), "vocab_rows": want["model.embed_tokens.weight"][0],
            "vocab_rows_expected": rows, "transformers_loading_info": {k: sorted(v)[:5] for k, v in info.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--intermediate", type=int, default=11008)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--tokenizer", default="smollm2-135m", help="the synthetic student's tokenizer")
    ap.add_argument("--teacher", default="qwen2.5-coder-0.5b", help="the donor: its tokenizer and embeddings")
    ap.add_argument("--shard-gb", type=float, default=2.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/xtok-bench-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the synthetic model and the output")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/scale.json")
    ap.add_argument("--real-student", default=None, help="transplant this catalogue model instead of a synthetic one "
                    "(e.g. qwen2.5-coder-1.5b with --teacher smollm2-135m)")
    args = ap.parse_args()

    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    if args.real_student:
        real_student(args)
        return
    student, out, copy = args.workdir / "student", args.workdir / "transplanted", args.workdir / "plain-copy"
    tok = load_tokenizer(args.tokenizer)
    synthetic = write_synthetic(student, args, tok)
    print(f"synthetic model: {synthetic['parameters'] / 1e9:.2f}B parameters, {synthetic['bytes'] / 2**30:.1f} GiB "
          f"in {synthetic['shards']} shards, {synthetic['seconds']}s", flush=True)
    copy_seconds = plain_copy(student, copy)
    shutil.rmtree(copy)
    print(f"plain shard copy: {copy_seconds}s", flush=True)
    command, transplant = measure_transplant(str(student), args.teacher, out)
    result = {
        "machine": machine_info(), "packages": package_versions(),
        "command": "python scripts/bench_scale.py " + " ".join(sys.argv[1:]),
        "transplant_command": command,
        "load": "nothing else running",
        "synthetic_student": synthetic,
        "transplant": transplant,
        "plain_shard_copy_seconds": copy_seconds,
        "check": check_output(out, transplant["vocab_rows"]),
    }
    if args.out.is_file():  # keep the real-student record of an earlier --real-student run
        earlier = json.loads(args.out.read_text())
        result.update({k: v for k, v in earlier.items() if k == "real_student"})
    write_json(args.out, result)
    t = result["transplant"]
    print(f"transplant: {t['wall_seconds']}s wall ({t['rows_seconds']}s computing rows, plain copy {copy_seconds}s), "
          f"peak RSS {t['peak_rss_gb']} GB -> {args.out}")
    if not args.keep:
        shutil.rmtree(args.workdir)


def measure_transplant(student: str, teacher: str, out: Path) -> tuple[str, dict]:
    """``xtok transplant`` (OMP both spaces: streamed) in a child process: its command and wall time, peak RSS, report."""
    command = [sys.executable, "-m", "xtok", "transplant", "--student", student, "--teacher", teacher,
               "--head-method", "omp", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far: run one per process
    if proc.returncode != 0:
        sys.exit(f"the transplant failed:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "transplant_report.json").read_text())
    return " ".join(["xtok"] + command[3:]), {
        "wall_seconds": round(wall, 1), "peak_rss_gb": round(peak_kb / 2**20, 2),
        "rows_seconds": round(sum(s["seconds"] for s in report["spaces"].values()), 1),
        "report_seconds": report["seconds"], "streamed": report.get("streamed", False), "dtype": report.get("dtype"),
        "vocab_rows": report["vocab_rows"], "tokens": report.get("tokens"),
        "output_bytes": sum(p.stat().st_size for p in out.glob("*.safetensors")),
        "spaces": {k: {"seconds": v["seconds"], "approximated": v["approximated"],
                       "safety_flagged": v.get("safety", {}).get("flagged")} for k, v in report["spaces"].items()}}


def real_student(args) -> None:
    """The real catalogue model ``--real-student`` given ``--teacher``'s tokenizer, recorded under ``real_student`` in
    the JSON (the synthetic record kept)."""
    from xtok.models.load import resolve_model

    folder = Path(resolve_model(args.real_student))
    out = args.workdir / "real-transplanted"
    command, transplant = measure_transplant(args.real_student, args.teacher, out)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result["real_student"] = {
        "machine": machine_info(), "command": "python scripts/bench_scale.py " + " ".join(sys.argv[1:]),
        "transplant_command": command, "load": "nothing else running", "student": args.real_student,
        "student_bytes": sum(p.stat().st_size for p in folder.glob("*.safetensors")), "teacher": args.teacher,
        "transplant": transplant, "check": check_output(out, transplant["vocab_rows"])}
    write_json(args.out, result)
    t = transplant
    print(f"{args.real_student} <- {args.teacher}: {t['wall_seconds']}s wall, peak RSS {t['peak_rss_gb']} GB -> {args.out}")
    if not args.keep:
        shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
