"""What the recipe schemas share: the strict base model, data and eval settings, registered-name fields."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from xtok import registry as registries  # imports nothing else of xtok: the modules filling it load on first use

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"  # package data: shipped in the wheel
DType = Literal["float32", "bfloat16"]
Precision = Literal["float32", "bf16", "auto"]  # training: float32, or bf16 autocast over float32 weights


def _registered(registry: str) -> AfterValidator:
    """A field holding a name from one of ``xtok.registry``'s registries (checked on validation, loaded lazily)."""

    def check(v: str | None) -> str | None:
        if v is not None:
            getattr(registries, registry).get(v)
        return v

    return AfterValidator(check)


InitMethod = Annotated[str, _registered("INIT_METHODS")]
LossName = Annotated[str, _registered("LOSSES")]
DraftBackend = Annotated[str, _registered("DRAFT_BACKENDS")]
EnsembleMode = Annotated[str, _registered("ENSEMBLE_MODES")]
Embedder = Annotated[str, _registered("EMBEDDERS")]


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
    batch_tokens: int | None = Field(None, ge=2, description="padded tokens per forward batch (default: 8192, or one "
                                     "window where the window is longer)")
    dtype: DType = "float32"
    numbers: bool = Field(True, description="add digit-splitting diagnostics")

    @model_validator(mode="after")
    def _overlap_fits(self) -> EvalSettings:
        if self.overlap >= self.window:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than window ({self.window})")
        if self.batch_tokens is not None and self.batch_tokens < self.window:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must be at least the window ({self.window}); raise "
                             "it (--batch-tokens), or leave it out to follow the window")
        return self

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_tokens or max(8192, self.window)


class AgreementSettings(Strict):
    """Greedy agreement with ``against``: prompts from the eval data's documents, continued by both models."""

    prompts: int = Field(8, ge=1, description="documents whose beginnings are the prompts, domains in turn")
    prompt_chars: int = Field(256, ge=1)
    max_new_tokens: int = Field(32, ge=1)

