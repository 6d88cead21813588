"""Stage keys of resumable pipelines: a changed default or xtok version reruns a stage; its output path does not."""

import pytest

import xtok
from xtok.config import InitMethod, TransplantConfig
from xtok.utils.stages import Pipeline, config_key, stage_key


class OldDefaults(TransplantConfig):
    """TransplantConfig as it was before head_method's default moved from focus to subword-prior."""

    head_method: InitMethod | None = "focus"


def test_a_changed_default_changes_the_key():
    now, before = TransplantConfig(student="s", teacher="t", out="a"), OldDefaults(student="s", teacher="t", out="a")
    assert now.model_dump(exclude_defaults=True) == before.model_dump(exclude_defaults=True)  # what the old key saw
    assert config_key(now) != config_key(before)
    moved = TransplantConfig(student="s", teacher="t", out="elsewhere", overwrite=True)
    assert config_key(moved) == config_key(now)  # where a stage writes is not what it computes
    assert config_key(now, "upstream-1") != config_key(now, "upstream-2") != config_key(now)
    assert config_key(now, exclude=("out", "overwrite", "student")) == config_key(
        TransplantConfig(student="other", teacher="t"), exclude=("out", "overwrite", "student"))


def test_another_xtok_version_changes_the_key(monkeypatch):
    cfg = TransplantConfig(student="s", teacher="t")
    key = config_key(cfg)
    monkeypatch.setattr(xtok, "__version__", "999.0.0")
    assert config_key(cfg) != key


def test_pipeline_reruns_only_a_changed_stage(tmp_path):
    calls = []

    def run(name, key):
        return Pipeline(tmp_path).stage(name, key, lambda: calls.append(name) or {"name": name})

    assert run("a", stage_key(1)) == {"name": "a"} and run("b", stage_key(2)) == {"name": "b"}
    run("a", stage_key(1))
    run("b", stage_key(3))
    assert calls == ["a", "b", "b"]


@pytest.mark.parametrize("field,value", [("k", 16), ("head_method", "focus"), ("calibration_tokens", 4096)])
def test_every_setting_is_in_the_key(field, value):
    base = TransplantConfig(student="s", teacher="t")
    assert config_key(base.model_copy(update={field: value})) != config_key(base)
