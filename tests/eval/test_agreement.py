"""Greedy byte agreement: a model agrees with itself fully, and the count is of bytes, across tokenizers."""

from xtok.corpus import prompts_in_turn as prompts_of
from xtok.eval.agreement import common_prefix, greedy_agreement, greedy_continuations
from xtok.transplant.apply import transplant


def test_common_prefix_and_prompts():
    assert common_prefix(b"abcd", b"abxy") == 2 and common_prefix(b"ab", b"abc") == 2 and common_prefix(b"", b"a") == 0
    texts, domains = ["a1", "a2", "b1", "c1"], ["a", "a", "b", "c"]
    assert prompts_of(texts, domains, 3, 1) == ["a", "b", "c"]
    assert prompts_of(texts, domains, 9, 2) == ["a1", "b1", "c1", "a2"]


def test_agreement_with_itself_and_with_a_transplant(tiny_model_dir, real_tokenizer):
    from transformers import AutoModelForCausalLM

    smol, qwen = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("smollm2-135m"))
    prompts = ["def add(a, b):\n", "The quick brown fox"]
    same = greedy_agreement(model, smol, model, smol, prompts, max_new_tokens=6)
    total = sum(len(smol.decode(ids, skip_special_tokens=True).encode()) for ids in
                greedy_continuations(model, smol, prompts, 6))
    assert same["agreed_share"] == 1.0 and same["mean_agreed_bytes"] * 2 == total and "new_token_share" not in same
    moved, _ = transplant(model, smol, qwen, method="mean", head_method="mean")
    other = greedy_agreement(moved, qwen, model, smol, prompts, max_new_tokens=6)
    for row in other["per_prompt"]:
        assert 0 <= row["agreed_bytes"] <= min(row["bytes"], row["original_bytes"])
    share = other["new_token_share"]
    assert 0 <= share["generated"] <= 1 and 0 <= share["tokenizer_on_same_text"] <= 1
