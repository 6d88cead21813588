"""Recipe: bits per byte, compression and digit splitting of each model, per domain."""

from xtok.config import EvalConfig
from xtok.eval.run import run_eval
from xtok.utils.io import default_output


def run(cfg: EvalConfig, cache_dir=None) -> dict:
    out = default_output("eval", cfg.models)
    results = run_eval(cfg, cache_dir, out, progress=False)
    return {"written": str(out), "bits_per_byte": {r["model"]: r["overall"]["bits_per_byte"] for r in results}}
