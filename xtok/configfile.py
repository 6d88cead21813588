"""Recipe configs from YAML files: find one by name, apply key=value overrides, validate it into its schema.

The schemas themselves are ``xtok.config``'s; every YAML names its recipe (``recipe: eval``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from xtok.config import CONFIGS_DIR, RECIPE_SCHEMAS, Strict


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in nested mappings; a number indexes a list (``stages.0.steps``)."""
    node: Any = tree
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"override {key!r}: {part!r} is not an index of a list of {len(node)}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {parts[depth - 1]!r} is not a section")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. eval.window=512)")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def find_config(name_or_path: str | Path, recipe: str | None = None) -> Path:
    """A path, or a config name under xtok/configs/<recipe>/ (with or without .yaml)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    candidates = []
    if recipe:
        candidates.append(CONFIGS_DIR / recipe / f"{path.name.removesuffix('.yaml')}.yaml")
    candidates.append(CONFIGS_DIR / f"{str(name_or_path).removesuffix('.yaml')}.yaml")
    for cand in candidates:
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"config {name_or_path!r} not found (looked at {', '.join(str(c) for c in [path, *candidates])})")


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Strict:
    recipe = data.get("recipe")
    if recipe not in RECIPE_SCHEMAS:
        raise ValueError(f"{source}: 'recipe' must be one of {', '.join(RECIPE_SCHEMAS)}, got {recipe!r}")
    try:
        return RECIPE_SCHEMAS[recipe].model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{source} is not a valid {recipe} config:\n{exc}") from exc


def load_config(name_or_path: str | Path, overrides: list[str] | None = None, recipe: str | None = None) -> Strict:
    path = find_config(name_or_path, recipe)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    if recipe and data.get("recipe") != recipe:
        raise ValueError(f"{path} is a {data.get('recipe')!r} config, not {recipe!r}")
    return config_from_dict(data, str(path))


def validate_file(name_or_path: str | Path) -> str:
    """Validate a recipe config, or an accelerate launch config under xtok/configs/accelerate/; return its kind."""
    path = find_config(name_or_path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "compute_environment" in data:
        from accelerate.commands.config.config_args import ClusterConfig

        try:
            ClusterConfig.from_yaml_file(str(path))
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path} is not a valid accelerate config: {exc}") from exc
        return "accelerate"
    return load_config(path).recipe
