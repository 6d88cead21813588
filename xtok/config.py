"""The pydantic schema of every recipe config (extra="forbid"), loading YAML and key=value overrides.

Every YAML names its recipe (``recipe: eval``); ``load_config`` validates it into that recipe's
model, so a typo in a key is an error, not a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
DType = Literal["float32", "bfloat16"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    """Which documents: bundled:eval, bundled:train, a jsonl/txt file or folder, or a hub dataset."""

    spec: str = "bundled:eval"
    domains: list[str] | None = None
    max_docs_per_domain: int | None = Field(None, ge=1)
    max_chars_per_doc: int | None = Field(None, ge=1)


class EvalSettings(Strict):
    window: int = Field(1024, ge=2, description="positions per forward window")
    overlap: int = Field(256, ge=0, description="context carried between windows of a long document")
    batch_tokens: int = Field(8192, ge=2, description="padded tokens per forward batch")
    dtype: DType = "float32"
    numbers: bool = Field(True, description="add digit-splitting diagnostics")

    @model_validator(mode="after")
    def _overlap_fits(self) -> EvalSettings:
        if self.overlap >= self.window:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than window ({self.window})")
        if self.batch_tokens < self.window:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must be at least window ({self.window})")
        return self


class EvalConfig(Strict):
    recipe: Literal["eval"] = "eval"
    models: list[str] = Field(min_length=1)
    data: DataConfig = DataConfig()
    eval: EvalSettings = EvalSettings()


class TransplantConfig(Strict):
    """Give ``student`` the tokenizer of ``teacher``; new tokens by ``method`` (see ``xtok ls``)."""

    recipe: Literal["transplant"] = "transplant"
    student: str
    teacher: str
    out: str | None = None
    method: str = "omp"
    head_method: str | None = Field("focus", description="init of the output head (None = method); a tied student "
                                    "whose two methods differ is untied")
    # Defaults from bench/results/transplant.json (holdout rebuild of hidden shared tokens and bits per byte on
    # SmolLM2 <- Qwen2.5): k=8 beats k=64, which overfits; 128 candidates lose nothing there and run ~4x faster.
    k: int = Field(8, ge=1, description="OMP sparsity: anchors per new token")
    candidates: int | None = Field(128, ge=1, description="OMP: search only each token's m most correlated anchors")
    exact: bool = Field(False, description="OMP over all anchors (ignores candidates)")
    chunk: int = Field(1024, ge=1, description="new tokens per OMP step; bounds peak memory")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    teacher_tokenizer_only: bool = Field(False, description="use only the teacher's tokenizer, not its embeddings")
    overwrite: bool = False

    @field_validator("method", "head_method")
    @classmethod
    def _known_method(cls, v: str | None) -> str | None:
        from xtok.registry import INIT_METHODS

        if v is not None:
            INIT_METHODS.get(v)
        return v


class DraftCheckConfig(Strict):
    """How good a drafter ``drafter`` is for ``target``: acceptance, speed-up, losslessness."""

    recipe: Literal["draft_check"] = "draft_check"
    target: str
    drafter: str
    prompts: str = Field("bundled:eval", description="documents whose beginnings are the prompts (held-out eval by default)")
    num_prompts: int = Field(8, ge=1)
    prompt_chars: int = Field(256, ge=1, description="characters of each document used as its prompt")
    k: int = Field(4, ge=1, description="draft tokens per round")
    max_new_tokens: int = Field(64, ge=1)
    backend: str = Field("hf", description="hf (transformers assisted generation) or vllm (needs the vllm extra)")
    cross_tokenizer: bool = Field(False, description="baseline: the drafter keeps its own tokenizer (hf: Universal "
                                  "Assisted Generation, vllm: use_heterogeneous_vocab)")
    dtype: DType = "float32"
    out: str | None = None

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from xtok.registry import DRAFT_BACKENDS

        DRAFT_BACKENDS.get(v)
        return v


RECIPE_SCHEMAS: dict[str, type[Strict]] = {"eval": EvalConfig, "transplant": TransplantConfig, "draft_check": DraftCheckConfig}


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. eval.window=512)")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def find_config(name_or_path: str | Path, recipe: str | None = None) -> Path:
    """A path, or a config name under configs/<recipe>/ (with or without .yaml)."""
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
