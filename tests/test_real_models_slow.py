"""Real catalogue models end to end (minutes on a 2-core CPU): run with `pytest -m slow`.

What a user of a transplant sees: the untouched student scores in its known range, and the default
transplant (SmolLM2-135M given Qwen2.5-Coder's tokenizer, OMP inputs, subword-prior head) keeps
most of its prose quality and writes the same fluent text. The reference for fluency is the
untouched student itself: it scores the transplanted model's continuations, and its own greedy
continuations are what the transplant's are compared with.
"""

import math

import pytest
import torch

from xtok.configfile import config_from_dict
from xtok.corpus import load_corpus
from xtok.eval.run import eval_model
from xtok.models.load import load_model
from xtok.transplant.apply import transplant

pytestmark = pytest.mark.slow

PROMPTS = ("The capital of France is", "Once upon a time, in a small village by the sea,",
           "The most important thing about learning to cook is")
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def prose():
    cfg = config_from_dict({"recipe": "eval", "models": ["x"], "data": {"domains": ["prose"], "max_docs_per_domain": 2,
                                                                         "max_chars_per_doc": 3000}})
    return cfg, load_corpus("bundled:eval", domains=["prose"], max_docs_per_domain=2, max_chars_per_doc=3000)


@pytest.fixture(scope="module")
def pair(cache_dir):
    student, s_tok = load_model("smollm2-135m", cache_dir)
    teacher, t_tok = load_model("qwen2.5-coder-0.5b", cache_dir)
    model, report = transplant(student, s_tok, t_tok, teacher_model=teacher)
    del teacher
    return student, s_tok, model, t_tok, report


def greedy(model, tok, prompt: str) -> str:
    x = tok(prompt, return_tensors="pt")
    out = model.generate(**x, max_new_tokens=NEW_TOKENS, do_sample=False)
    return tok.decode(out[0, x["input_ids"].shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def bits_per_byte_of_continuation(model, tok, prompt: str, text: str) -> float:
    """-log2 p(text | prompt) under ``model`` per UTF-8 byte of ``text``."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(text, add_special_tokens=False)["input_ids"]
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[start, *p, *c]])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    nll = -logp[torch.arange(len(targets)), targets][len(p):].sum().item()
    return nll / math.log(2) / len(text.encode("utf-8"))


def test_smollm2_prose_bits_per_byte_in_reference_range(prose, cache_dir):
    cfg, ds = prose
    model, tok = load_model("smollm2-135m", cache_dir)
    bpb = eval_model(model, tok, "smollm2-135m", ds, cfg, progress=False)["overall"]["bits_per_byte"]
    assert 1.0 < bpb < 1.35  # reference: about 1.19 on this Austen prose (bench/results/transplant.json)


def test_transplant_keeps_most_of_the_prose_quality(prose, pair):
    cfg, ds = prose
    student, s_tok, model, t_tok, report = pair
    assert report["tokens"]["new"] > 100_000 and report["head_method"] == "subword-prior"
    before = eval_model(student, s_tok, "before", ds, cfg, progress=False)["overall"]["bits_per_byte"]
    after = eval_model(model, t_tok, "after", ds, cfg, progress=False)["overall"]["bits_per_byte"]
    # measured +22% on bundled prose (1.168 -> 1.425, 3 documents); a broken head or a row misplaced by one
    # id costs several bits per byte, a transplant cannot beat the model it starts from by much
    assert 0.95 * before < after < 1.35 * before


def test_transplanted_model_writes_the_students_fluent_text(pair):
    student, s_tok, model, t_tok, _ = pair
    agree, scores = 0, []
    for prompt in PROMPTS:
        own, text = greedy(student, s_tok, prompt), greedy(model, t_tok, prompt)
        words = text.split()
        # greedy text may end at EOS; the student's own continuation says how long it should be
        assert len(words) >= 0.5 * len(own.split()), f"{prompt!r} -> {text!r} stops early (the student: {own!r})"
        assert len(set(words)) >= 0.5 * len(words), f"{prompt!r} -> {text!r} repeats itself"
        scores.append(bits_per_byte_of_continuation(student, s_tok, prompt, text))
        agree += text[:40] == own[:40]
    # measured: the untouched student scores its own greedy text at 0.23-1.14 bits per byte on these prompts,
    # and the same words shuffled at 2.1-2.6
    assert sum(scores) / len(scores) < 1.5, scores
    # shared tokens keep their rows, so greedy prose follows the original for its first 40 characters
    assert agree >= 2, f"only {agree} of {len(PROMPTS)} continuations start like the untouched student's"
