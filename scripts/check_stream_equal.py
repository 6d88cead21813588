"""The default transplant through both paths, tensor by tensor: the streaming one (``run_transplant``, what ``xtok
transplant --config qwen2.5-coder-0.5b_to_smollm2-135m`` runs: calibration, then rows written shard by shard) and the
in-memory one (``transplant_in_memory``: ``xtok.transplant.apply.transplant`` with the same settings, the route the
head fit takes: the whole student loaded, copied and saved), both written in float32 so no rounding to the source
dtype hides a difference.

    .venv/bin/python scripts/check_stream_equal.py            # -> bench/results/stream_equal.json

Reports every tensor's largest absolute difference and whether the two folders hold the same keys and shapes; the
two calibrations run separately, so a nonzero difference would also show a run-to-run nondeterminism.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

from xtok.configfile import load_config
from xtok.models import resolve_model
from xtok.models.load import load_model, load_tokenizer
from xtok.transplant.apply import save_transplant
from xtok.transplant.run import run_transplant, transplant_in_memory
from xtok.utils.hardware import machine_info
from xtok.utils.io import command_line, package_versions, write_json


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({key: f.get_tensor(key) for key in f.keys()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="qwen2.5-coder-0.5b_to_smollm2-135m")
    ap.add_argument("--out", default="bench/results/stream_equal.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xtok-stream-equal-") as work:
        work = Path(work)
        cfg = load_config(args.config, [f"out={work / 'streamed'}", "out_dtype=float32"], recipe="transplant")
        t0 = time.perf_counter()
        run_transplant(cfg, progress=False)
        streamed_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        student, student_tok = load_model(resolve_model(cfg.student))
        teacher, teacher_tok = load_model(resolve_model(cfg.teacher))
        model, report = transplant_in_memory(cfg, student, student_tok, teacher_tok, teacher)
        del student, teacher
        gc.collect()
        save_transplant(model, teacher_tok, work / "in_memory", report, dtype="float32")
        in_memory_s = time.perf_counter() - t0
        del model
        gc.collect()

        a, b = tensors(work / "streamed"), tensors(work / "in_memory")
        shared = sorted(a.keys() & b.keys())
        diffs = {key: float((a[key].double() - b[key].double()).abs().max()) if a[key].shape == b[key].shape else None
                 for key in shared}
        if load_tokenizer(work / "streamed").get_vocab() != load_tokenizer(work / "in_memory").get_vocab():
            raise SystemExit("the two folders carry different tokenizers")
    result = {
        "machine": machine_info(), "packages": package_versions(), "command": command_line(),
        "config": args.config, "settings": cfg.model_dump(mode="json"),
        "seconds": {"streamed": round(streamed_s, 1), "in_memory": round(in_memory_s, 1)},
        "keys": {"streamed": len(a), "in_memory": len(b), "only_streamed": sorted(a.keys() - b.keys()),
                 "only_in_memory": sorted(b.keys() - a.keys())},
        "shape_mismatches": [key for key, d in diffs.items() if d is None],
        "max_abs_difference": max((d for d in diffs.values() if d is not None), default=None),
        "nonzero": {key: d for key, d in diffs.items() if d},
    }
    write_json(args.out, result)
    print({k: result[k] for k in ("seconds", "keys", "shape_mismatches", "max_abs_difference")})
    print("nonzero:", result["nonzero"])


if __name__ == "__main__":
    main()
