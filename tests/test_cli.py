"""Drive the real CLI in a subprocess, as a user would."""

import json
import subprocess
import sys

import pytest


def xtok(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "xtok", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_eval_json_line(tiny_model_dir, tmp_path):
    folder = tiny_model_dir("smollm2-135m")
    out = tmp_path / "res.json"
    res = xtok("eval", str(folder), "--max-docs", "1", "--max-chars", "400", "--window", "128", "--overlap", "32",
               "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    r = lines[0]
    assert set(r["domains"]) == {"code", "multilingual", "numbers", "prose"}
    assert r["overall"]["bits_per_byte"] > 0 and r["numbers"]["digit_tokens"] > 0
    on_disk = json.loads(out.read_text())
    assert on_disk["results"][0]["overall"] == r["overall"]
    assert on_disk["provenance"]["config"]["eval"]["window"] == 128


def test_eval_table(tiny_model_dir, tmp_path):
    folder = tiny_model_dir("qwen2.5-coder-0.5b")
    res = xtok("eval", str(folder), "--max-docs", "1", "--max-chars", "200", "--domain", "code",
               "--window", "64", "--overlap", "16", "--out", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr
    assert "bits/byte" in res.stdout and "code" in res.stdout and "overall" in res.stdout


@pytest.mark.parametrize("args,message", [
    (["eval", "no-such-model"], "smollm2-135m"),
    (["eval", "smollm2-135m", "--window", "100", "--overlap", "100"], "overlap"),
    (["eval", "smollm2-135m", "--data", "/nonexistent/data.jsonl"], "not found"),
    (["models", "prepare"], "--all"),
    (["models", "prepare", "gpt-5"], "known: smollm2-135m"),
])
def test_bad_input_exits_with_message(args, message):
    res = xtok(*args)
    assert res.returncode == 2
    assert message in " ".join(res.stderr.split())


def test_validate(tmp_path):
    assert xtok("validate", "eval/catalogue").returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: eval\nmodels: [a]\nwindow: 3\n")
    res = xtok("validate", str(bad))
    assert res.returncode == 1 and "window" in res.stderr


def test_models_list_and_ls():
    res = xtok("models", "list")
    assert res.returncode == 0 and "qwen2.5-coder-0.5b" in res.stdout
    res = xtok("ls")
    assert res.returncode == 0 and "recipes (xtok run RECIPE" in res.stdout
    for name in ("end_to_end", "ensemble", "align", "forward_kl", "uld", "vllm", "logprob", "tokalign"):
        assert name in res.stdout, name


@pytest.fixture
def restore_logging():
    import logging

    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]


def test_verbosity_levels_match_the_help(restore_logging):
    import logging

    from xtok.cli import _main

    seen = {}
    for count in (0, 1, 2, 3):
        _main(cache_dir=None, verbose=count)
        seen[count] = logging.getLogger().level
    assert seen == {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}
    res = xtok("--help")
    assert "-v info, -vv debug" in res.stdout and "default: warnings" in res.stdout


def test_eval_data_that_is_not_json_lines_names_the_file_and_line(tiny_model_dir, tmp_path):
    folder = tiny_model_dir("smollm2-135m")
    bad = tmp_path / "notes.jsonl"
    bad.write_text("not json\n")
    res = xtok("eval", str(folder), "--data", str(bad))
    said = " ".join(res.stderr.split())
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"{bad} line 1 is not JSON" in said and "'text' field" in said
    bad.write_text(json.dumps({"text": "fine"}) + "\n\n" + json.dumps(["a list"]) + "\n")
    res = xtok("eval", str(folder), "--data", str(bad))
    assert res.returncode == 2 and f"{bad} line 3 is not a JSON object" in " ".join(res.stderr.split()), res.stderr[-2000:]


def test_eval_window_longer_than_the_models_context_says_so(tiny_model_dir):
    folder = tiny_model_dir("smollm2-135m")  # max_position_embeddings 512
    res = xtok("eval", str(folder), "--window", "100000", "--max-docs", "1", "--max-chars", "100")
    said = " ".join(res.stderr.split())
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "longer than the model's context (512)" in said and "--window 512" in said and "batch_tokens" not in said
    # batch_tokens follows the window unless given; given too small, the error names the option and the fix
    res = xtok("eval", str(folder), "--window", "256", "--overlap", "64", "--batch-tokens", "128")
    said = " ".join(res.stderr.split())
    assert res.returncode == 2 and "batch_tokens (128) must be at least the window (256); raise it (--batch-tokens)" in said
