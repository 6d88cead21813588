"""Recipe: TokAlign — map every target token to a source token from co-occurrence vectors (and optionally apply it)."""

from xtok.align.run import run_align
from xtok.config import AlignConfig


def run(cfg: AlignConfig, cache_dir=None) -> dict:
    folder, report = run_align(cfg, cache_dir)
    return {"written": str(folder), "tokens": report["tokens"], "quality": report["quality"], "seconds": report["seconds"]}
