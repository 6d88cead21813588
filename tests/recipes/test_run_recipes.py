"""`xtok run RECIPE --config ...` for every recipe, on tiny models, through the real CLI."""

import json

import pytest
import yaml

from tests.test_cli import xtok
from xtok.recipes import recipe_names

TINY_DISTILL = {"data": {"spec": "bundled:train", "domains": ["code"], "max_docs_per_domain": 2}, "seq_len": 16,
                "max_sequences": 4, "batch_size": 2, "teacher_cache": {"top_k": 8}, "logging_steps": 1,
                "stages": [{"train": "embeddings", "steps": 1, "learning_rate": 1e-3},
                           {"train": "full", "steps": 1, "learning_rate": 1e-4}]}
TINY_HEAL = {"data": {"spec": "bundled:train", "max_docs_per_domain": 1}, "seq_len": 16, "max_sequences": 2,
             "batch_size": 2, "grad_accum": 1, "stages": [{"train": "new_rows", "steps": 1, "learning_rate": 1e-3}]}
TINY_EVAL = {"eval_data": {"max_docs_per_domain": 1, "max_chars_per_doc": 200},
             "eval": {"window": 64, "overlap": 16, "batch_tokens": 512}}


def _run(tmp_path, recipe, cfg, *overrides):
    path = tmp_path / f"{recipe}.yaml"
    path.write_text(yaml.safe_dump({"recipe": recipe, **cfg}))
    res = xtok("run", recipe, "--config", str(path), *overrides, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture
def pair(tiny_model_dir):
    return str(tiny_model_dir("smollm2-135m")), str(tiny_model_dir("qwen2.5-coder-0.5b"))


def test_end_to_end_runs_resumes_and_reports(pair, tmp_path):
    student, teacher = pair
    cfg = {"student": student, "teacher": teacher, "out": str(tmp_path / "e2e"), "transplant": {"k": 2, "candidates": 16},
           "heal": TINY_HEAL, "distill": TINY_DISTILL, **TINY_EVAL,
           "draft_check": {"k": [2], "num_prompts": 1, "prompt_chars": 40, "max_new_tokens": 4}}
    first = _run(tmp_path, "end_to_end", cfg)
    run = tmp_path / "e2e"
    assert {"transplant", "heal", "eval_healed", "distill", "eval_distilled", "draft_hf_k2_untouched",
            "draft_hf_k2_healed", "draft_hf_k2_distilled"} <= set(first["ran"])
    report = (run / "report.md").read_text()
    for needle in ("Bits per byte", "distilled", "## Heal (loss ce", "stage-1-new_rows", "stage-1-embeddings",
                   "acceptance", "bits_per_byte.png"):
        assert needle in report
    for png in ("bits_per_byte.png", "distill_loss.png", "acceptance.png"):
        assert (run / png).stat().st_size > 1000
    summary = json.loads((run / "end_to_end.json").read_text())
    assert set(summary["bits_per_byte"]) == {"untouched student", "teacher", "transplanted (OMP)", "healed", "distilled"}
    assert all(r["lossless"] for r in summary["draft_check"])
    assert _run(tmp_path, "end_to_end", cfg)["ran"] == []  # nothing changed: every stage skipped
    # A drafter setting changes only the drafter checks, not the transplant or the distillation.
    again = _run(tmp_path, "end_to_end", cfg, "draft_check.max_new_tokens=3")
    assert again["ran"] and all(name.startswith("draft_") for name in again["ran"])


def test_every_other_recipe_through_xtok_run(pair, tmp_path):
    student, teacher = pair
    assert set(recipe_names()) >= {"eval", "transplant", "heal", "distill", "draft_check", "ensemble", "end_to_end"}
    ev = _run(tmp_path, "eval", {"models": [student], "data": {"max_docs_per_domain": 1, "max_chars_per_doc": 200},
                                 "eval": {"window": 64, "overlap": 16}})
    assert ev["bits_per_byte"][student] > 0
    tr = _run(tmp_path, "transplant", {"student": student, "teacher": teacher, "out": str(tmp_path / "t"), "k": 2,
                                       "candidates": 16})
    assert tr["tokens"]["new"] > 0
    he = _run(tmp_path, "heal", {"model": str(tmp_path / "t"), "original": student, "out": str(tmp_path / "h"),
                                 **TINY_HEAL})
    assert [s["stage"] for s in he["stages"]] == ["stage-1-new_rows"] and he["stages"][0]["train_loss"] > 0
    di = _run(tmp_path, "distill", {"student": str(tmp_path / "t"), "teacher": teacher, "out": str(tmp_path / "d"),
                                    **TINY_DISTILL})
    assert [s["stage"] for s in di["stages"]] == ["stage-1-embeddings", "stage-2-full"]
    dc = _run(tmp_path, "draft_check", {"target": teacher, "drafter": str(tmp_path / "d"), "k": 2, "num_prompts": 1,
                                        "prompt_chars": 40, "max_new_tokens": 4, "out": str(tmp_path / "dc.json")})
    assert dc["lossless"] is True
    en = _run(tmp_path, "ensemble", {"models": [teacher, str(tmp_path / "d")], "data": {"max_docs_per_domain": 1,
              "max_chars_per_doc": 200}, "eval": {"window": 64, "overlap": 16}, "out": str(tmp_path / "en.json")})
    assert set(en["ensemble_minus_best_member_bits_per_byte"]) == {"code", "multilingual", "numbers", "prose"}


def test_run_refuses_a_config_of_another_recipe(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("recipe: eval\nmodels: [x]\n")
    res = xtok("run", "distill", "--config", str(path))
    assert res.returncode == 2 and "not 'distill'" in res.stderr
    res = xtok("run", "bake", "--config", str(path))
    assert res.returncode == 2 and "unknown recipe" in res.stderr
