import pytest

from xtok.vocab.canonical import BYTE_LEVEL, SENTENCEPIECE, canonical_vocab, gpt2_byte_decoder, piece_bytes
from xtok.vocab.shared import build_token_map

TEXTS = ["Hello world, the cat sat.\n\tdef f(x): return x**2", "Grüße aus Köln — 東京 🙂 12345", "  leading  spaces\n\n"]
KIND = {"smollm2-135m": BYTE_LEVEL, "qwen2.5-coder-0.5b": BYTE_LEVEL, "gemma3-270m": SENTENCEPIECE}


def test_gpt2_byte_map_is_a_bijection():
    table = gpt2_byte_decoder()
    assert sorted(table.values()) == list(range(256))
    assert table["Ġ"] == ord(" ") and table["Ċ"] == ord("\n") and table["A"] == ord("A")


def test_piece_spellings():
    assert piece_bytes("Ġthe", BYTE_LEVEL) == b" the"
    assert piece_bytes("▁the", SENTENCEPIECE) == b" the"
    assert piece_bytes("<0x0A>", SENTENCEPIECE) == b"\n"
    assert piece_bytes("ĠÃ©", BYTE_LEVEL) == " é".encode()
    assert piece_bytes("▁", BYTE_LEVEL) is None  # not a byte-level spelling


@pytest.mark.parametrize("name", sorted(KIND))
def test_token_bytes_concatenate_to_the_text(real_tokenizer, name):
    """On the real tokenizers, the canonical bytes of a tokenization spell the text exactly."""
    tok = real_tokenizer(name)
    cv = canonical_vocab(tok)
    assert cv.kind == KIND[name]
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert b"".join(cv.bytes_of[i] for i in ids) == text.encode("utf-8")


def test_byte_matching_finds_far_more_than_raw_strings(real_tokenizer):
    smol, gemma = real_tokenizer("smollm2-135m"), real_tokenizer("gemma3-270m")
    tmap = build_token_map(gemma, smol)
    raw = len(set(smol.get_vocab()) & set(gemma.get_vocab()))
    assert tmap.counts()["shared_bytes"] > 3 * raw > 40_000
    the_g, the_s = gemma.convert_tokens_to_ids("▁the"), smol.convert_tokens_to_ids("Ġthe")
    assert tmap.student_of[the_g] == the_s and tmap.how[the_g] == "bytes"


def test_shared_map_is_consistent(real_tokenizer):
    qwen, smol = real_tokenizer("qwen2.5-coder-0.5b"), real_tokenizer("smollm2-135m")
    tmap = build_token_map(qwen, smol)
    qcv, scv = canonical_vocab(qwen), canonical_vocab(smol)
    t_ids, s_ids = tmap.anchors()
    assert len(t_ids) == tmap.counts()["shared_bytes"] > 30_000
    for t, s in list(zip(t_ids.tolist(), s_ids.tolist()))[::997]:
        assert qcv.bytes_of[t] == scv.bytes_of[s]
    c = tmap.counts()
    assert c["shared_bytes"] + c["shared_special"] + c["new"] == len(qwen)
