"""The align job in-process: config checks, and failures that leave nothing behind."""

import json

import pytest
import torch

from xtok.align.run import run_align
from xtok.configfile import config_from_dict


def cfg(**kw):
    return config_from_dict({"recipe": "align", "source": "s", "target": "t", **kw})


@pytest.mark.parametrize("kw,message", [
    ({"dims": 64, "pivots": 10}, r"pivots \(10\) must be at least dims \(64\)"),
    ({"embedding": "word2vec"}, "unknown co-occurrence embedding 'word2vec'; known: glove, ppmi-svd"),
    ({"fallback": "tokalign"}, "fallback 'tokalign' needs an alignment itself"),
    ({"method": "telepathy"}, "unknown init method 'telepathy'"),
    ({"windw": 3}, "Extra inputs are not permitted"),
])
def test_config_rejects(kw, message):
    with pytest.raises(ValueError, match=message):
        cfg(**kw)


def test_config_defaults_follow_tokalign():
    c = cfg()
    assert (c.dims, c.window, c.min_count, c.glove_iters, c.glove_x_max) == (300, 15, 5, 15, 10.0)
    assert c.data.spec == "bundled:train" and c.method == "tokalign"


def test_too_small_corpus_fails_cleanly_and_writes_nothing(synthetic_pair, tmp_path):
    target_tok, source_tok, _, _ = synthetic_pair
    source, target = tmp_path / "src", tmp_path / "tgt"
    source_tok.save_pretrained(source)
    target_tok.save_pretrained(target)
    data = tmp_path / "tiny.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"a1 a2 a3 b4 a{i}"}) for i in range(30)) + "\n")
    out = tmp_path / "o"
    c = cfg(source=str(source), target=str(target), data={"spec": str(data)}, out=str(out), dims=32, pivots=32, min_count=2)
    with pytest.raises(ValueError, match=r"only \d+ tokens are frequent enough for a vector, not more than dims=32"):
        run_align(c, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".o.*"))
    out.mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_align(c, progress=False)


def test_transplant_job_reads_an_alignment_folder(synthetic_pair, synthetic_alignment, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.conftest import build_tiny
    from xtok.align.result import save_alignment
    from xtok.transplant.run import run_transplant

    target, source, _, truth = synthetic_pair
    al, _ = synthetic_alignment
    (tmp_path / "al").mkdir()
    save_alignment(al, tmp_path / "al")
    student = build_tiny("llama", source, vocab_size=len(source))
    student.save_pretrained(tmp_path / "s")
    source.save_pretrained(tmp_path / "s")
    target.save_pretrained(tmp_path / "t")
    c = config_from_dict({"recipe": "transplant", "student": str(tmp_path / "s"), "teacher": str(tmp_path / "t"),
                          "out": str(tmp_path / "o"), "method": "tokalign", "head_method": "tokalign",
                          "teacher_tokenizer_only": True, "alignment": str(tmp_path / "al")})
    out, report = run_transplant(c, progress=False)
    emb = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    old = student.get_input_embeddings().weight
    assert all(torch.equal(emb[t], old[s]) for t, s in truth.items())
    assert report["spaces"]["input"]["tokalign_copied"] == len(truth)
