"""Chunks of one text under two tokenizations: every byte in one chunk on both sides, on the real tokenizers."""

import pytest

from xtok.distill.data import pack_documents
from xtok.vocab.canonical import canonical_vocab
from xtok.vocab.chunks import _utf8_span, chunk_ids, paired_tokenization

TEXTS = ["def add(a, b):\n    return a + b  # 12345 + 678\n", "The quick brown fox jumps over the lazy dog. " * 3,
         "Alle Menschen sind frei und gleich an Würde und Rechten geboren. 人人生而自由，在尊严和权利上一律平等。",
         "Всі люди народжуються вільними і рівними у своїй гідності та правах. 2024-12-01: 3.14159 × 2 = 6.28318",
         "    for i in range(10):\n        print(i * i, end='  ')\n"]


def test_chunk_ids_end_at_the_common_boundaries():
    a, b = chunk_ids([2, 3, 1], [1, 4, 1])  # ends 2,5,6 and 1,5,6: common 5, 6
    assert a == [0, 0, 1] and b == [0, 0, 1]
    a, b = chunk_ids([1, 1, 1], [3])
    assert a == [0, 0, 0] and b == [0]
    with pytest.raises(ValueError, match="cover 3 and 2 bytes"):
        chunk_ids([1, 2], [2])


def test_utf8_span_drops_cut_characters():
    w = "ü€".encode()  # 2 + 3 bytes
    assert _utf8_span(w) == (0, 5)
    assert _utf8_span(w[1:]) == (1, 4)  # a continuation byte first; the euro sign whole
    assert _utf8_span(w[:4]) == (0, 2)  # the euro sign cut after 2 of 3 bytes
    assert _utf8_span(b"ab") == (0, 2)


@pytest.mark.parametrize("a_name,b_name", [("qwen2.5-coder-0.5b", "smollm2-135m"), ("smollm2-135m", "gemma3-270m"),
                                           ("gemma3-270m", "qwen2.5-coder-0.5b")])
def test_every_byte_is_in_one_chunk_on_both_sides(real_tokenizer, a_name, b_name):
    a_tok, b_tok = real_tokenizer(a_name), real_tokenizer(b_name)
    a_cv, b_cv = canonical_vocab(a_tok), canonical_vocab(b_tok)
    blocks = pack_documents(a_tok, TEXTS, seq_len=24)  # blocks cut words, documents and characters anywhere
    pt = paired_tokenization(a_tok, b_tok, blocks)
    assert pt.ids.shape[0] == len(blocks) and pt.a_chunk.shape == blocks.shape
    for i in range(len(blocks)):
        a_ids, b_ids = blocks[i].tolist(), pt.ids[i][pt.mask[i].bool()].tolist()
        ac, bc = pt.a_chunk[i].tolist(), pt.b_chunk[i][: len(b_ids)].tolist()
        n = max(ac + bc) + 1
        for c in range(n):  # a chunk spells the same bytes on both sides, its tokens consecutive
            a_pos = [j for j, x in enumerate(ac) if x == c]
            b_pos = [j for j, x in enumerate(bc) if x == c]
            assert a_pos and b_pos and a_pos == list(range(a_pos[0], a_pos[-1] + 1))
            assert b_pos == list(range(b_pos[0], b_pos[-1] + 1))
            a_bytes = [a_cv.bytes_of[a_ids[j]] for j in a_pos]
            b_bytes = [b_cv.bytes_of[b_ids[j]] for j in b_pos]
            if None in a_bytes or None in b_bytes:  # a special token: alone in its chunk, on both sides
                assert len(a_pos) == len(b_pos) == 1 and a_bytes == [None] and b_bytes == [None]
            else:
                assert b"".join(a_bytes) == b"".join(b_bytes)
        # every side-A byte is covered, but for characters a block edge cuts: only edge tokens stay out
        out = [j for j, x in enumerate(ac) if x < 0]
        assert all(j < 3 or j >= len(ac) - 3 for j in out), (i, out)
        assert all(x >= 0 for x in bc)  # side B is made from the covered bytes: all of it is chunked
    assert pt.uncovered < blocks.numel() * 0.05
    # the whole stream survives: side B decodes to the text of the covered side-A tokens
    i = 1
    covered = b"".join(a_cv.bytes_of[t] for t, c in zip(blocks[i].tolist(), pt.a_chunk[i].tolist())
                       if c >= 0 and a_cv.bytes_of[t] is not None)
    b_row = pt.ids[i][pt.mask[i].bool()].tolist()
    assert b"".join(b_cv.bytes_of[t] for t in b_row if b_cv.bytes_of[t] is not None) == covered


def test_specials_pair_by_role(real_tokenizer):
    smol, qwen = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    blocks = pack_documents(qwen, ["one two", "three four"], seq_len=8)  # start one two end start three four end
    row = blocks[0].tolist()
    pt = paired_tokenization(qwen, smol, blocks)
    b_row = pt.ids[0][pt.mask[0].bool()].tolist()
    special = set(qwen.all_special_ids)
    # a special token before text starts a document (SmolLM2's start token), any other ends one (its EOS)
    want = [smol.bos_token_id if j + 1 < len(row) and row[j + 1] not in special else smol.eos_token_id
            for j, t in enumerate(row) if t in special]
    assert [b for b in b_row if b in set(smol.all_special_ids)] == want and len(want) == 4
    assert want[0] != want[1] and (pt.a_chunk[0] >= 0).all()
