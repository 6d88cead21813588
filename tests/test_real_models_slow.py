"""Real catalogue models end to end (minutes on a 2-core CPU): run with `pytest -m slow`."""

import pytest

from xtok.config import config_from_dict
from xtok.corpus import load_corpus
from xtok.eval.run import eval_model
from xtok.models.load import load_model
from xtok.transplant.apply import transplant

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prose():
    cfg = config_from_dict({"recipe": "eval", "models": ["x"], "data": {"domains": ["prose"], "max_docs_per_domain": 2,
                                                                         "max_chars_per_doc": 3000}})
    return cfg, load_corpus("bundled:eval", domains=["prose"], max_docs_per_domain=2, max_chars_per_doc=3000)


def test_smollm2_prose_bits_per_byte_in_reference_range(prose):
    cfg, ds = prose
    model, tok = load_model("smollm2-135m")
    bpb = eval_model(model, tok, "smollm2-135m", ds, cfg, progress=False)["overall"]["bits_per_byte"]
    assert 1.0 < bpb < 1.35  # reference: about 1.19 on Austen prose


def test_transplanted_smollm2_keeps_most_of_its_prose_quality(prose):
    cfg, ds = prose
    student, s_tok = load_model("smollm2-135m")
    teacher, t_tok = load_model("qwen2.5-coder-0.5b")
    before = eval_model(student, s_tok, "before", ds, cfg, progress=False)["overall"]["bits_per_byte"]
    model, report = transplant(student, s_tok, t_tok, teacher_model=teacher, method="focus")
    after = eval_model(model, t_tok, "after", ds, cfg, progress=False)["overall"]["bits_per_byte"]
    assert report["tokens"]["new"] > 100_000
    assert after < 1.5 * before
    out = model.generate(**t_tok("The capital of France is", return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert len(t_tok.decode(out[0]).split()) > 5
