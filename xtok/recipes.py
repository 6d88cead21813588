"""``xtok run RECIPE``: recipes are the files under recipes/, each a ``run(cfg, cache_dir) -> dict`` composing library calls."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from xtok.config import CONFIGS_DIR, RECIPE_SCHEMAS, Strict

RECIPES_DIR = CONFIGS_DIR.parent / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.py") if not p.stem.startswith("_"))


def recipe_path(name: str) -> Path:
    path = RECIPES_DIR / f"{name}.py"
    if name not in RECIPE_SCHEMAS or not path.is_file():
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(recipe_names())}")
    return path


def run_recipe(name: str, cfg: Strict, cache_dir: str | Path | None = None) -> dict[str, Any]:
    if getattr(cfg, "recipe", None) != name:
        raise ValueError(f"recipe {name!r} was given a {getattr(cfg, 'recipe', type(cfg).__name__)!r} config")
    spec = importlib.util.spec_from_file_location(f"xtok_recipe_{name}", recipe_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(cfg, cache_dir)
