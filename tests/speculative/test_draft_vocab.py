"""Vocabulary checks between drafter and target, the drafter's head view (padding, FR-Spec), and the time breakdown."""

import copy
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import build_tiny
from xtok.speculative.draft_vocab import DraftHead, check_draft_vocab, frequent_tokens, head_view, padded_copy
from xtok.speculative.hf import hf_draft_check
from xtok.speculative.inputs import check_drafter_context, check_vocab, drafter_size_warning
from xtok.speculative.vllm_worker import install_draft_vocab

PROMPTS = ["The quick brown fox", "def add(a, b):\n    return"]


@pytest.fixture(scope="module")
def tok(real_tokenizer):
    return real_tokenizer("smollm2-135m")


def fake_tokenizer(table):
    return SimpleNamespace(get_vocab=lambda: dict(table))


def test_check_vocab_accepts_padding_and_refuses_content():
    a = fake_tokenizer({"a": 0, "b": 1, "c": 2})
    assert check_vocab(3, 3, a, a) is False
    assert check_vocab(64, 3, a, a) is True  # padding on one side
    assert check_vocab(3, 128, a, fake_tokenizer({"c": 2, "b": 1, "a": 0})) is True  # same table, any order
    with pytest.raises(ValueError, match="not the target's.*'d'=2.*transplant the drafter"):
        check_vocab(3, 3, a, fake_tokenizer({"a": 0, "b": 1, "d": 2}))
    with pytest.raises(ValueError, match="transplant the drafter"):  # sizes differ and the drafter's tokenizer unknown
        check_vocab(3, 64, a, None)
    with pytest.raises(ValueError, match="drafter has 2 embedding rows for a tokenizer of 3"):
        check_vocab(3, 2, a, a)
    assert check_vocab(3, 99, a, fake_tokenizer({"z": 0}), cross_tokenizer=True) is False
    with pytest.raises(ValueError, match="cross-tokenizer baseline needs the drafter's tokenizer"):
        check_vocab(3, 99, a, None, cross_tokenizer=True)


def test_context_and_size_checks():
    prompts = ["a", "b"]
    check_drafter_context(prompts, [[0] * 10, [0] * 20], 30, 4, 54)  # exactly fits
    with pytest.raises(ValueError, match="needs 55 positions.*context is 54"):
        check_drafter_context(prompts, [[0] * 10, [0] * 21], 30, 4, 54)
    with pytest.raises(ValueError, match="k=64 draft tokens is beyond the drafter's context"):
        check_drafter_context(["a"], [[0]], 1, 64, 64)
    own = lambda text: {"input_ids": [0] * 21}  # noqa: E731  the drafter's own tokenizer reads 21 tokens
    with pytest.raises(ValueError, match="needs 55 positions"):
        check_drafter_context(prompts, [[0] * 10, [0] * 10], 30, 4, 54, own)
    assert drafter_size_warning(10, 9) is None
    assert "cannot make it faster" in drafter_size_warning(10, 10)


def test_draft_head_matches_masked_full_logits():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 20, bias=True)
    h = torch.randn(2, 3, 8)
    full = head(h)
    keep = torch.tensor([1, 4, 5, 17])
    out = DraftHead(head, 20, keep)(h)
    lowest = torch.finfo(h.dtype).min
    torch.testing.assert_close(out[..., keep], full[..., keep])
    mask = torch.ones(20, dtype=torch.bool)
    mask[keep] = False
    assert (out[..., mask] == lowest).all()
    assert torch.equal(out.argmax(-1), keep[full[..., keep].argmax(-1)])
    padded = DraftHead(head, 24)(h)  # target has 4 more (padding) ids
    torch.testing.assert_close(padded[..., :20], full)
    assert (padded[..., 20:] == lowest).all()
    torch.testing.assert_close(DraftHead(head, 16)(h), full[..., :16])  # drafter's extra rows dropped
    with pytest.raises(ValueError, match="must lie in"):
        DraftHead(head, 16, torch.tensor([3, 16]))


def test_frequent_tokens_against_a_count(tok):
    texts = ["the cat and the dog and the bird", "the end"]
    counts = Counter(i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"])
    special = set(tok.all_special_ids)
    n = len(special) + 2
    got = frequent_tokens(tok, texts, n).tolist()
    assert got == sorted(got) and special <= set(got)
    top2 = sorted((i for i in counts if i not in special), key=lambda i: (-counts[i], i))[:2]
    assert set(got) - special == set(top2)
    with pytest.raises(ValueError, match="not a reduction"):
        frequent_tokens(tok, texts, len(tok))
    with pytest.raises(ValueError, match="no text"):
        frequent_tokens(tok, [], 10)


def test_padded_drafter_is_read_at_the_target_size(tok):
    target = build_tiny("llama", tok, seed=0, tie_word_embeddings=False)
    drafter = build_tiny("llama", tok, seed=0, tie_word_embeddings=False, vocab_size=len(tok) + 64)
    state = drafter.state_dict()
    for name, value in target.state_dict().items():  # the target's weights, 64 padding rows past them
        state[name][: value.shape[0]] = value
    drafter.load_state_dict(state)
    head = drafter.get_output_embeddings()
    with pytest.raises(ValueError, match="transplant the drafter"):
        hf_draft_check(target, drafter, tok, PROMPTS, k=3, max_new_tokens=6)  # no drafter tokenizer: sizes alone refuse
    res = hf_draft_check(target, drafter, tok, PROMPTS, k=3, max_new_tokens=6, drafter_tokenizer=tok)
    assert res["drafter_padded_to_target_vocab"] and res["lossless"] and res["acceptance_rate"] == 1.0
    assert drafter.get_output_embeddings() is head and drafter.config.vocab_size == len(tok) + 64  # restored


def test_reduced_draft_vocab_stays_lossless_and_proposes_only_kept_ids(tok):
    target = build_tiny("llama", tok, seed=0, tie_word_embeddings=False)
    drafter = copy.deepcopy(target)
    everything = torch.arange(len(tok))
    res = hf_draft_check(target, drafter, tok, PROMPTS, k=3, max_new_tokens=8, draft_vocab=everything)
    assert res["lossless"] and res["acceptance_rate"] == 1.0 and res["draft_vocab"] == len(tok)
    keep = torch.arange(0, len(tok), 2)  # the even ids only
    with head_view(drafter, len(tok), keep), torch.no_grad():
        ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
        assert int(drafter(input_ids=ids).logits[0, -1].argmax()) % 2 == 0
    res = hf_draft_check(target, drafter, tok, PROMPTS, k=3, max_new_tokens=8, draft_vocab=keep)
    assert res["lossless"] and res["acceptance_rate"] < 1.0
    with pytest.raises(ValueError, match="drop --draft-vocab or --cross-tokenizer"):
        hf_draft_check(target, drafter, tok, PROMPTS, k=3, max_new_tokens=8, draft_vocab=keep, drafter_tokenizer=tok,
                       cross_tokenizer=True)


def test_time_breakdown_adds_up_and_warns_on_a_large_drafter(tok):
    target = build_tiny("llama", tok, seed=0)
    drafter = build_tiny("llama", tok, seed=1, tie_word_embeddings=False, hidden_size=96)
    res = hf_draft_check(target, drafter, tok, PROMPTS, k=2, max_new_tokens=6)
    w, alone = res["time"]["with_drafter"], res["time"]["target_alone"]
    assert w["drafting_s"] > 0 and w["verification_s"] > 0 and w["rounds"] == res["rounds"]
    assert w["drafting_s"] + w["verification_s"] + w["overhead_s"] == pytest.approx(w["seconds"])
    assert 0 < alone["forward_s"] <= alone["seconds"]
    assert any("cannot make it faster" in m for m in res["warnings"])


def test_drafter_context_is_checked(tok):
    target = build_tiny("llama", tok, seed=0)
    drafter = build_tiny("llama", tok, seed=1, max_position_embeddings=16)
    with pytest.raises(ValueError, match="drafter needs .* its context is 16"):
        hf_draft_check(target, drafter, tok, PROMPTS, k=4, max_new_tokens=12)


def test_padded_copy_for_vllm(tmp_path, tok):
    model = build_tiny("llama", tok, seed=2, tie_word_embeddings=False)
    src = tmp_path / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    from transformers import AutoModelForCausalLM

    size = len(tok) + 64
    out = AutoModelForCausalLM.from_pretrained(padded_copy(str(src), size, tmp_path / "padded"))
    assert out.config.vocab_size == size
    for new, old in ((out.get_input_embeddings(), model.get_input_embeddings()),
                     (out.get_output_embeddings(), model.get_output_embeddings())):
        torch.testing.assert_close(new.weight[: len(tok)], old.weight)
        assert new.weight.shape[0] == size and (new.weight[len(tok) :] == 0).all()


def test_vllm_draft_vocab_choice_is_the_masked_full_heads_argmax():
    """install_draft_vocab (the vLLM worker's FR-Spec) on a stand-in worker: its greedy choice equals the argmax of
    the full head's logits (with bias) where every id outside ``keep`` is masked, ties included (lower id wins)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    with torch.no_grad():
        head.weight[7] = head.weight[3]  # ids 3 and 7 tie on every input
        head.bias[7] = head.bias[3]
    proposer = SimpleNamespace(model=SimpleNamespace(lm_head=head), _greedy_sample=lambda h: None)
    worker = SimpleNamespace(model_runner=SimpleNamespace(drafter=proposer))
    keep = [40, 3, 7, 11, 12, 0, 25]  # unsorted on purpose
    assert install_draft_vocab(worker, keep) == len(keep)
    hidden = torch.randn(64, 8)
    with torch.no_grad():
        full = head(hidden).double()
        full[:, [i for i in range(50) if i not in keep]] = float("-inf")
        got = proposer._greedy_sample(hidden)
    assert torch.equal(got, full.argmax(-1)) and set(got.tolist()) <= set(keep)
    tie = torch.zeros(1, 8)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[[3, 7]] = 1.0
    # the tensors were copied at install: a fresh install sees the new weights, and the tie goes to the lower id
    install_draft_vocab(worker, keep)
    assert proposer._greedy_sample(tie).tolist() == [3]
    for bad in ([], [50], [-1]):
        with pytest.raises(ValueError, match=r"must lie in \[0, 50\)"):
            install_draft_vocab(worker, bad)
    with pytest.raises(ValueError, match="no _greedy_sample or no plain lm_head"):
        install_draft_vocab(SimpleNamespace(model_runner=None), keep)


def test_check_draft_vocab_names_the_range_and_the_cross_tokenizer_conflict():
    check_draft_vocab(None, 10, cross_tokenizer=True)  # no reduction: nothing to check
    check_draft_vocab(torch.tensor([0, 9]), 10)
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\) \(got 2 ids in \[0, 10\]\)"):
        check_draft_vocab(torch.tensor([0, 10]), 10)
    with pytest.raises(ValueError, match=r"got 0 ids\)"):
        check_draft_vocab(torch.tensor([], dtype=torch.long), 10)
    with pytest.raises(ValueError, match="drop --draft-vocab or --cross-tokenizer"):
        check_draft_vocab(torch.tensor([1]), 10, cross_tokenizer=True)
