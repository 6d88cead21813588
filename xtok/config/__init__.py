"""The pydantic schema of every recipe config (extra="forbid").

Every YAML names its recipe (``recipe: eval``); ``xtok.configfile.load_config`` validates it into that
recipe's model, so a typo in a key is an error, not a silently ignored setting. ``common`` holds what the
schemas share, ``training`` the distill and heal recipes, ``recipes`` the others.
"""

from xtok.config.common import (
    CONFIGS_DIR,
    AgreementSettings,
    DataConfig,
    DType,
    EvalSettings,
    InitMethod,
    LossName,
    Strict,
)
from xtok.config.recipes import (
    RECIPE_SCHEMAS,
    AlignConfig,
    DraftCheckConfig,
    EndToEndConfig,
    EndToEndDraftCheck,
    EnsembleConfig,
    EvalConfig,
    TransplantConfig,
)
from xtok.config.training import DistillConfig, GenerationsConfig, HealConfig, OnPolicyConfig, StageConfig, TeacherCacheConfig

__all__ = ["CONFIGS_DIR", "RECIPE_SCHEMAS", "AgreementSettings", "AlignConfig", "DType", "DataConfig", "DistillConfig",
           "DraftCheckConfig", "EndToEndConfig", "EndToEndDraftCheck", "EnsembleConfig", "EvalConfig", "EvalSettings",
           "GenerationsConfig", "HealConfig", "InitMethod", "LossName", "OnPolicyConfig", "StageConfig", "Strict", "TeacherCacheConfig",
           "TransplantConfig"]
