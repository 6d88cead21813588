"""The catalogue tokenizers give the same ids under every supported transformers release.

tests/assets/tokenizer_probe_ids.json holds the ids xtok's tokenizers gave under transformers 5.19.0
and 5.23.0 alike (they differ without xtok setting the tokenizer from the GGUF metadata: Gemma-3's
``<bos>``); written by tests/models/tokenizer_probe.py.
"""

import json

import pytest

from tests.models.tokenizer_probe import ASSET, CHAT, MODELS, PROBES, probe

STORED = json.loads(ASSET.read_text(encoding="utf-8"))["models"]


@pytest.mark.parametrize("name", MODELS)
def test_probe_texts_give_the_stored_ids(real_tokenizer, name):
    tok = real_tokenizer(name)
    got, want = probe(tok), STORED[name]
    assert got["special_ids"] == want["special_ids"]
    for kind in PROBES:
        assert got["ids"][kind] == want["ids"][kind], kind
    assert got["chat"] == want["chat"]


@pytest.mark.parametrize("name", MODELS)
def test_stored_ids_are_the_probe_texts(real_tokenizer, name):
    """The stored ids are no arbitrary numbers: they decode to the probe texts, special tokens where the GGUF says."""
    tok = real_tokenizer(name)
    want = STORED[name]
    bos = want["special_ids"]["bos_token"]
    for kind, text in PROBES.items():
        ids = want["ids"][kind]
        assert tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) == text, kind
        assert (ids[0] == bos) == (name == "gemma3-270m"), kind  # only Gemma-3's GGUF asks for <bos>
    if name == "gemma3-270m":
        assert want["chat"] is None  # its GGUF (a base model) carries no chat template
    else:
        chat = want["chat"]
        assert tok.decode(chat["ids"], clean_up_tokenization_spaces=False) == chat["text"]
        assert all(m["content"] in chat["text"] for m in CHAT)
