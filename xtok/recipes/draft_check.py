"""Recipe: how good a drafter the (transplanted) student is for its teacher: acceptance, speed-up, losslessness."""

from pathlib import Path

from xtok.config import DraftCheckConfig
from xtok.speculative.run import run_draft_check
from xtok.utils.io import default_output


def run(cfg: DraftCheckConfig, cache_dir=None) -> dict:
    out = Path(cfg.out) if cfg.out else default_output("draft-check", [cfg.drafter])
    res = run_draft_check(cfg, cache_dir, out)
    return {"written": str(out)} | {k: res[k] for k in ("acceptance_rate", "mean_acceptance_length", "speedup", "lossless")}
