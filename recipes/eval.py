"""Recipe: bits per byte, compression and digit splitting of each model, per domain."""

from pathlib import Path

from xtok.config import EvalConfig
from xtok.eval.run import run_eval


def run(cfg: EvalConfig, cache_dir=None) -> dict:
    out = Path("xtok-out") / "eval" / ("+".join(Path(m).name for m in cfg.models)[:120] + ".json")
    results = run_eval(cfg, cache_dir, out, progress=False)
    return {"written": str(out), "bits_per_byte": {r["model"]: r["overall"]["bits_per_byte"] for r in results}}
