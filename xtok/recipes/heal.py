"""Recipe: heal a transplant from its original (resumable; rerun the same command after a stop)."""

from xtok.config import HealConfig
from xtok.distill.heal import run_heal


def run(cfg: HealConfig, cache_dir=None) -> dict:
    folder, report = run_heal(cfg, cache_dir)
    return {"written": str(folder), "stages": [{k: s.get(k) for k in ("stage", "steps", "train_loss", "seconds")}
                                               for s in report["stages"]]}
