"""xtok align through the real CLI on tiny models with real tokenizers."""

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.test_cli import xtok
from xtok.align.result import MAP_FILE, REPORT_FILE, load_alignment
from xtok.transplant.apply import REPORT_FILE as TRANSPLANT_REPORT
from xtok.utils.io import PROVENANCE_FILE

SMALL = ["--max-docs", "2", "--max-chars", "20000", "--dims", "16", "--pivots", "64", "--window", "5", "--min-count", "2"]


def test_align_cli_writes_map_report_and_model(tiny_model_dir, tmp_path):
    source, target = tiny_model_dir("smollm2-135m"), tiny_model_dir("qwen2.5-coder-0.5b")
    out = tmp_path / "al"
    res = xtok("align", "--source", str(source), "--target", str(target), "--corpus", "bundled:train", "--out", str(out),
               *SMALL, "--apply", "--fallback", "mean")
    assert res.returncode == 0, res.stderr
    assert "aligned" in res.stdout and "holdout top-1" in res.stdout
    report = json.loads((out / REPORT_FILE).read_text())
    t = report["tokens"]
    assert t["target_vocab"] == 151936 and t["shared"] + t["aligned"] + t["no_vector"] == 151936
    assert t["aligned"] > 0 and t["no_vector"] > 0 and report["no_vector_fallback"] == "mean"
    assert 0 <= report["quality"]["top1"] <= report["quality"]["top5"] <= 1 and report["quality"]["hidden"] > 0
    assert report["apply"]["spaces"]["input"]["tokalign_fallback"] == {"method": "mean", "tokens": t["no_vector"]}
    meta = json.loads((out / MAP_FILE).read_text())
    assert len(meta["source_of"]) == 151936 and max(meta["source_of"]) < 49152
    al = load_alignment(out)
    assert al.target.vectors.shape[1] == 16
    assert json.loads((out / PROVENANCE_FILE).read_text())["config"]["recipe"] == "align"
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.vocab_size == len(tok) == 151936
    applied = json.loads((out / "model" / TRANSPLANT_REPORT).read_text())
    assert applied["method"] == "tokalign" and applied["head_method"] == "subword-prior"
    assert applied["spaces"]["output"]["subword_prior"]["tokens"]["corpus_tokens"] > 0  # no teacher model: counts


def test_align_cli_bad_input(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = xtok("align", "--source", "smollm2-135m", "--target", "qwen2.5-coder-0.5b", "--corpus", str(empty),
               "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "is empty" in " ".join(res.stderr.split())
    out = tmp_path / "exists"
    out.mkdir()
    res = xtok("align", "--source", "smollm2-135m", "--target", "qwen2.5-coder-0.5b", "--out", str(out))
    assert res.returncode == 2 and "--overwrite" in res.stderr
    assert not (tmp_path / "o").exists() and not any(out.iterdir())
