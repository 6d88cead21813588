import copy

import pytest
import torch

from tests.conftest import build_tiny
from tests.speculative.reference import assert_rejects_bad_input, reference_rounds
from xtok.registry import DRAFT_BACKENDS
from xtok.speculative.hf import hf_draft_check, record_rounds

PROMPTS = ["The quick brown fox", "def add(a, b):\n    return", "In 1815, the population was"]


@pytest.fixture(scope="module")
def pair(real_tokenizer):
    tok = real_tokenizer("smollm2-135m")
    target = build_tiny("llama", tok, seed=0)
    return tok, target


def test_self_drafting_accepts_everything_and_is_lossless(pair):
    tok, target = pair
    res = hf_draft_check(target, copy.deepcopy(target), tok, PROMPTS, k=4, max_new_tokens=12)
    assert res["lossless"] and res["acceptance_rate"] == 1.0
    assert res["acceptance_per_position"][0] == 1.0
    assert res["mean_acceptance_length"] > 3


def test_counts_match_a_plain_reference_loop(pair):
    tok, target = pair
    drafter = build_tiny("llama", tok, seed=7)
    drafter.load_state_dict({**drafter.state_dict(), **{k: v for k, v in target.state_dict().items() if "layers.1" in k}})
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    ref_rounds, ref_seq = reference_rounds(target, drafter, ids, k=3, max_new=10)
    drafter.generation_config.num_assistant_tokens = 3
    drafter.generation_config.num_assistant_tokens_schedule = "constant"
    drafter.generation_config.assistant_confidence_threshold = 0.0
    with record_rounds(target) as rounds, torch.no_grad():
        out = target.generate(input_ids=ids, attention_mask=torch.ones_like(ids), assistant_model=drafter,
                              max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out[0].tolist() == ref_seq
    assert rounds == ref_rounds
    assert sum(a + 1 for _, a in rounds) == 10


def test_different_drafter_is_still_lossless(pair):
    tok, target = pair
    drafter = build_tiny("llama", tok, seed=3, tie_word_embeddings=False)  # tied random models all echo the last token
    res = DRAFT_BACKENDS.get("hf")(target, drafter, tok, PROMPTS, k=2, max_new_tokens=8)
    assert res["lossless"] and res["acceptance_rate"] < 1.0
    assert set(res) >= {"acceptance_rate", "mean_acceptance_length", "acceptance_per_position", "speedup", "lossless"}


def test_bad_inputs(pair, real_tokenizer):
    tok, target = pair
    other = build_tiny("qwen2", real_tokenizer("qwen2.5-coder-0.5b"))
    assert_rejects_bad_input(hf_draft_check, target, target, other, tok, PROMPTS)


def test_draft_check_cli_json(tiny_model_dir, tmp_path):
    import json

    from tests.test_cli import xtok

    folder = tiny_model_dir("smollm2-135m")
    res = xtok("draft-check", "--target", str(folder), "--drafter", str(folder), "--k", "3", "--num-prompts", "2",
               "--prompt-chars", "40", "--max-new-tokens", "6", "--out", str(tmp_path / "d.json"), "--json")
    assert res.returncode == 0, res.stderr
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["lossless"] is True and line["acceptance_rate"] == 1.0 and len(line["acceptance_per_position"]) == 3
    bad = xtok("draft-check", "--target", str(folder), "--drafter", str(tiny_model_dir("qwen2.5-coder-0.5b")))
    assert bad.returncode == 2 and "transplant the drafter" in " ".join(bad.stderr.split())
    bad = xtok("draft-check", "--target", str(folder), "--drafter", str(folder), "--backend", "telepathy")
    assert bad.returncode == 2 and "unknown drafter backend" in " ".join(bad.stderr.split())


def test_cross_tokenizer_rounds_can_exceed_k(pair, real_tokenizer, monkeypatch):
    """UAG re-tokenizes each drafted token into the target's vocabulary, so one round can verify more than k
    tokens; the figures must count every position (not fail on "impossible" rounds) and stay lossless."""
    import xtok.speculative.hf as hf

    monkeypatch.setattr(hf, "warm_up", lambda *a: None)  # its rounds would reach the outer recorder too
    tok, target = pair
    qwen = real_tokenizer("qwen2.5-coder-0.5b")
    drafter = build_tiny("qwen2", qwen, seed=5, tie_word_embeddings=False)
    with record_rounds(target) as rounds:
        res = hf_draft_check(target, drafter, tok, PROMPTS, k=1, max_new_tokens=10, drafter_tokenizer=qwen,
                             cross_tokenizer=True)
    longest = max(d for d, _ in rounds)
    assert longest > 1, rounds  # the case under test happened
    assert res["lossless"] and res["cross_tokenizer"]
    assert len(res["acceptance_per_position"]) == longest
    assert res["drafted_tokens"] == sum(d for d, _ in rounds) and res["rounds"] == len(rounds)
