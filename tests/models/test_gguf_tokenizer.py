"""Setting a tokenizer from GGUF metadata: what it changes, that a saved folder keeps it, and bad metadata."""

import copy

import pytest

from xtok.models.convert import compare_tokenizer_with_folder
from xtok.models.gguf_tokenizer import GGUFTokenizerSpec, TokenizerSpecError, apply_tokenizer_spec, check_tokenizer_spec


def _spec(**kw):
    base = dict(model="gpt2", token_ids={"bos_token": 1, "eos_token": 2}, add_bos=False, add_eos=False, chat_template=None)
    return GGUFTokenizerSpec(**{**base, **kw})


def test_spec_sets_bos_eos_adding_and_template_and_a_saved_folder_keeps_them(real_tokenizer, tmp_path):
    tok = copy.deepcopy(real_tokenizer("smollm2-135m"))  # <|im_start|> = 1, <|im_end|> = 2; adds neither
    plain = tok("hi there", add_special_tokens=False)["input_ids"]
    spec = _spec(add_bos=True, add_eos=True, chat_template="{{ messages[0]['content'] }}")
    apply_tokenizer_spec(tok, spec, "test")
    assert tok("hi there")["input_ids"] == [1, *plain, 2]
    tok.save_pretrained(tmp_path)
    again = compare_tokenizer_with_folder(tok, tmp_path, spec)
    assert again("hi there")["input_ids"] == [1, *plain, 2]
    assert again.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "x"


def test_spec_moves_a_special_token_role(real_tokenizer):
    tok = copy.deepcopy(real_tokenizer("smollm2-135m"))
    apply_tokenizer_spec(tok, _spec(token_ids={"bos_token": 1, "eos_token": 2, "pad_token": 0}), "test")
    assert (tok.pad_token_id, tok.pad_token) == (0, "<|endoftext|>")


def test_an_id_past_the_vocabulary_is_refused_by_name(real_tokenizer):
    tok = copy.deepcopy(real_tokenizer("smollm2-135m"))
    with pytest.raises(TokenizerSpecError, match=r"token id 999999 as eos_token, but its tokenizer has only 49152 tokens"):
        apply_tokenizer_spec(tok, _spec(token_ids={"bos_token": 1, "eos_token": 999999}), "some.gguf")


def test_check_names_what_differs(real_tokenizer):
    tok = real_tokenizer("smollm2-135m")  # adds no <bos>
    with pytest.raises(TokenizerSpecError, match=r"some.gguf does not do what its GGUF says: .*add_bos=True"):
        check_tokenizer_spec(tok, _spec(add_bos=True, chat_template=tok.chat_template), "some.gguf")
    with pytest.raises(TokenizerSpecError, match="chat template differs"):
        check_tokenizer_spec(tok, _spec(chat_template="other"), "some.gguf")
