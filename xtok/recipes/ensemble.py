"""Recipe: a mixture of models that share one vocabulary, scored against each member."""

from pathlib import Path

from xtok.config import EnsembleConfig
from xtok.ensemble.run import best_member_gap, run_ensemble
from xtok.utils.io import default_output


def run(cfg: EnsembleConfig, cache_dir=None) -> dict:
    out = Path(cfg.out) if cfg.out else default_output("ensemble", cfg.models)
    res = run_ensemble(cfg, cache_dir, out, progress=False)
    return {"written": str(out), "ensemble_minus_best_member_bits_per_byte": best_member_gap(res)}
