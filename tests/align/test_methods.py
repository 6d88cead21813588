import pytest
import torch

from tests.conftest import build_tiny
from xtok.align.result import load_alignment, save_alignment
from xtok.registry import INIT_METHODS
from xtok.transplant.apply import transplant
from xtok.transplant.methods import Space
from xtok.vocab.canonical import canonical_vocab
from xtok.vocab.shared import build_token_map


def space_for(al, target, source, student, **kw):
    tmap = build_token_map(target, source)
    anchor_t, anchor_s = tmap.anchors()
    return Space("input", student, None, anchor_t, anchor_s, canonical_vocab(target).bytes_of, source, chunk=16,
                 alignment=al, **kw), tmap


def test_tokalign_copies_the_aligned_source_rows(synthetic_pair, synthetic_alignment):
    target, source, _, truth = synthetic_pair
    al, _ = synthetic_alignment
    student = torch.randn(len(source), 5)
    space, tmap = space_for(al, target, source, student)
    new = tmap.new_teacher_ids
    rows = INIT_METHODS.get("tokalign")(space, new)
    torch.testing.assert_close(rows, student[al.source_of[new]])
    assert space.details == {"tokalign_copied": len(new), "tokalign_fallback": {"method": "subword", "tokens": 0}}
    t = next(iter(truth))
    assert torch.equal(rows[new.tolist().index(t)], student[truth[t]])


def test_tokens_without_vector_go_to_the_fallback_never_to_a_source_id(synthetic_pair, synthetic_alignment):
    target, source, _, _ = synthetic_pair
    al, _ = synthetic_alignment
    student = torch.randn(len(source), 5)
    c5 = target.get_vocab()["c5"]
    al.source_of[c5], al.how[c5] = -1, "no_vector"  # as if too rare
    try:
        for method in ("tokalign", "tokalign+omp"):
            space, tmap = space_for(al, target, source, student, k=4)
            new = tmap.new_teacher_ids
            rows = INIT_METHODS.get(method)(space, new)
            assert space.details[f"{method}_fallback"]["tokens"] == (1 if method == "tokalign" else 0)
            r = rows[new.tolist().index(c5)]
            if method == "tokalign":  # subword: "c5" is spelled by the source as pieces, here [UNK] -> its row
                pieces = source("c5", add_special_tokens=False)["input_ids"]
                torch.testing.assert_close(r, student[pieces].mean(0))
    finally:
        al.source_of[c5], al.how[c5] = int(source.get_vocab()["b5"]), "aligned"


def test_tokalign_omp_mixes_anchors_in_cooccurrence_space(synthetic_pair, synthetic_alignment):
    target, source, _, _ = synthetic_pair
    al, _ = synthetic_alignment
    # a student whose rows are a linear image of the source co-occurrence vectors: OMP over shared anchors then
    # rebuilds a new token's row from its (target-side) co-occurrence vector as well as the vectors allow
    space, tmap = space_for(al, target, source, torch.randn(len(source), 5), k=8)
    new = tmap.new_teacher_ids
    rows = INIT_METHODS.get("tokalign+omp")(space, new)
    assert rows.shape == (len(new), 5) and torch.isfinite(rows).all()
    assert space.details["tokalign+omp_approximated"] == len(new)


def test_methods_need_an_alignment():
    space = Space("input", torch.randn(4, 2), None, torch.arange(2), torch.arange(2), [], None)
    for name in ("tokalign", "tokalign+omp"):
        with pytest.raises(ValueError, match="needs a token alignment; run `xtok align` first"):
            INIT_METHODS.get(name)(space, torch.tensor([3]))


def test_save_load_roundtrip_and_transplant(synthetic_pair, synthetic_alignment, tmp_path):
    target, source, _, truth = synthetic_pair
    al, _ = synthetic_alignment
    save_alignment(al, tmp_path)
    back = load_alignment(tmp_path)
    assert torch.equal(back.source_of, al.source_of) and back.how == al.how
    torch.testing.assert_close(back.target.vectors, al.target.vectors)
    torch.testing.assert_close(back.score, al.score, equal_nan=True, atol=1e-4, rtol=0)  # stored to 4 places
    student = build_tiny("llama", source, vocab_size=len(source))
    model, report = transplant(student, source, target, method="tokalign", head_method="tokalign", alignment=back)
    emb, old = model.get_input_embeddings().weight, student.get_input_embeddings().weight
    for t, s in truth.items():
        assert torch.equal(emb[t], old[s])
    assert report["spaces"]["input"]["tokalign_copied"] == len(truth)
    with pytest.raises(ValueError, match="needs a token alignment"):
        transplant(student, source, target, method="tokalign")


def test_alignment_refuses_other_tokenizer_files(synthetic_pair, synthetic_alignment):
    """Same size, same words, other ids: caught by the vocabulary fingerprint, not only by the size."""
    from tests.align.conftest import word_level

    target, source, _, _ = synthetic_pair
    al, _ = synthetic_alignment
    student = build_tiny("llama", source, vocab_size=len(source))
    words = sorted(w for w in target.get_vocab() if w != "[UNK]")
    other = word_level(words, rename=True)
    assert len(other) == len(target)
    with pytest.raises(ValueError, match=r"alignment was made for a target tokenizer of 191 tokens.*run xtok align again"):
        transplant(student, source, other, method="tokalign", head_method="tokalign", alignment=al)
