import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from xtok.vocab.identity import start_token_id, vocab_fingerprint


def wordlevel(words, **specials):
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, **specials)


def test_fingerprint_is_the_vocabulary_not_the_object(real_tokenizer, tmp_path):
    tok = real_tokenizer("smollm2-135m")
    tok.save_pretrained(tmp_path / "again")
    assert vocab_fingerprint(AutoTokenizer.from_pretrained(tmp_path / "again")) == vocab_fingerprint(tok)
    words = ["<s>", "</s>", "a", "b"]
    base = vocab_fingerprint(wordlevel(words, bos_token="<s>", eos_token="</s>"))
    assert vocab_fingerprint(wordlevel(words, bos_token="<s>", eos_token="</s>")) == base
    assert vocab_fingerprint(wordlevel(["<s>", "</s>", "b", "a"], bos_token="<s>", eos_token="</s>")) != base  # ids swap
    assert vocab_fingerprint(wordlevel(words, bos_token="<s>", eos_token="b")) != base  # another eos
    assert vocab_fingerprint(wordlevel([*words, "c"], bos_token="<s>", eos_token="</s>")) != base


def test_fingerprint_takes_pieces_that_are_not_valid_utf8():
    """Some GGUF vocabularies hold pieces with lone surrogates; hashing them must not raise."""

    class Bare:
        bos_token = eos_token = pad_token = unk_token = None

        def get_vocab(self):
            return {"<unk>": 0, "\ud800x": 1, "y": 2}

    assert len(vocab_fingerprint(Bare())) == 16


def test_start_token_is_bos_else_eos():
    words = ["<s>", "</s>", "a"]
    assert start_token_id(wordlevel(words, bos_token="<s>", eos_token="</s>")) == 0
    assert start_token_id(wordlevel(words, eos_token="</s>")) == 1
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        start_token_id(wordlevel(words))
