from pathlib import Path

import pytest

from xtok.config import CONFIGS_DIR, EvalConfig
from xtok.configfile import config_from_dict, load_config, validate_file

ALL_CONFIGS = sorted(CONFIGS_DIR.rglob("*.yaml"))


def test_configs_exist():
    assert ALL_CONFIGS, f"no YAML under {CONFIGS_DIR}"


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=[str(p.relative_to(CONFIGS_DIR)) for p in ALL_CONFIGS])
def test_every_config_validates(path: Path):
    kind = validate_file(path)
    assert path.parent.name == kind or path.parent.parent.name == kind


def test_a_broken_accelerate_config_is_rejected(tmp_path):
    bad = tmp_path / "acc.yaml"
    bad.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_procs: 2\n")
    with pytest.raises(ValueError, match="not a valid accelerate config"):
        validate_file(bad)


def test_list_overrides(tmp_path):
    cfg = load_config("distill/qwen2.5-coder-0.5b_to_smollm2-135m", ["stages.1.steps=7", "teacher_cache.top_k=null"])
    assert cfg.stages[1].steps == 7 and cfg.teacher_cache.top_k is None
    with pytest.raises(ValueError, match="not an index"):
        load_config("distill/qwen2.5-coder-0.5b_to_smollm2-135m", ["stages.5.steps=7"])


def test_unknown_key_rejected():
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        config_from_dict({"recipe": "eval", "models": ["x"], "eval": {"windw": 10}})


def test_unknown_recipe_rejected():
    with pytest.raises(ValueError, match="'recipe' must be one of"):
        config_from_dict({"recipe": "bake", "models": ["x"]})


def test_overrides_and_cross_field_checks(tmp_path):
    cfg = load_config("eval/catalogue", ["eval.window=512", "eval.overlap=128", "data.max_docs_per_domain=3"])
    assert isinstance(cfg, EvalConfig)
    assert (cfg.eval.window, cfg.eval.overlap, cfg.data.max_docs_per_domain) == (512, 128, 3)
    with pytest.raises(ValueError, match="overlap"):
        load_config("eval/catalogue", ["eval.window=100", "eval.overlap=100"])
    with pytest.raises(ValueError, match="not key=value"):
        load_config("eval/catalogue", ["eval.window"])


def test_a_reduced_draft_vocab_is_refused_across_tokenizers_at_validation():
    base = {"recipe": "draft_check", "target": "t", "drafter": "d"}
    for backend in ("hf", "vllm"):
        assert config_from_dict({**base, "draft_vocab": 4096, "backend": backend}).draft_vocab == 4096
    with pytest.raises(ValueError, match="draft_vocab=4096 needs the drafter on the target's tokenizer"):
        config_from_dict({**base, "draft_vocab": 4096, "cross_tokenizer": True})
