"""``xtok run RECIPE``: a recipe is a module of this package with ``run(cfg, cache_dir) -> dict`` composing library calls.

Its config schema is ``xtok.config.RECIPE_SCHEMAS[RECIPE]``; configs live in ``xtok/configs/RECIPE/`` (package data).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from xtok.config import RECIPE_SCHEMAS, Strict

RECIPES_DIR = Path(__file__).resolve().parent


def recipe_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and not m.ispkg)


def check_recipe(name: str) -> str:
    """``name`` if it is a recipe, else a ValueError listing the known ones."""
    if name not in RECIPE_SCHEMAS or name not in recipe_names():
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(recipe_names())}")
    return name


def run_recipe(name: str, cfg: Strict, cache_dir: str | Path | None = None) -> dict[str, Any]:
    check_recipe(name)
    if getattr(cfg, "recipe", None) != name:
        raise ValueError(f"recipe {name!r} was given a {getattr(cfg, 'recipe', type(cfg).__name__)!r} config")
    return importlib.import_module(f"{__name__}.{name}").run(cfg, cache_dir)
