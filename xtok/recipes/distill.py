"""Recipe: token-level distillation in progressive stages (resumable; rerun the same command after a stop)."""

from xtok.config import DistillConfig
from xtok.distill.run import run_distill


def run(cfg: DistillConfig, cache_dir=None) -> dict:
    folder, report = run_distill(cfg, cache_dir)
    return {"written": str(folder), "stages": [{k: s.get(k) for k in ("stage", "steps", "train_loss", "seconds")}
                                               for s in report["stages"]]}
