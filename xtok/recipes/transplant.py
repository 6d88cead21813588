"""Recipe: give the student the teacher's tokenizer (shared tokens copied, new ones by OMP or another init)."""

from xtok.config import TransplantConfig
from xtok.transplant.run import run_transplant


def run(cfg: TransplantConfig, cache_dir=None) -> dict:
    folder, report = run_transplant(cfg, cache_dir, progress=False)
    return {"written": str(folder), "tokens": report["tokens"], "seconds": report["seconds"]}
