import pytest
import torch

from xtok.align.cooc import TokenStream, cooccurrence, frequent_ids, tokenize


def dense_reference(docs: list[list[int]], keep: list[int], window: int) -> torch.Tensor:
    """GloVe's counting by loops: drop tokens not kept, then 1/d for pairs within ``window``, both directions."""
    index = {t: i for i, t in enumerate(keep)}
    x = torch.zeros((len(keep), len(keep)), dtype=torch.float64)
    for doc in docs:
        kept = [index[t] for t in doc if t in index]
        for p, a in enumerate(kept):
            for d in range(1, window + 1):
                if p + d < len(kept):
                    b = kept[p + d]
                    x[a, b] += 1.0 / d
                    x[b, a] += 1.0 / d
    return x


def stream_of(docs: list[list[int]], vocab: int) -> TokenStream:
    ids = torch.tensor([t for doc in docs for t in doc], dtype=torch.long)
    doc = torch.tensor([i for i, d in enumerate(docs) for _ in d], dtype=torch.long)
    return TokenStream(ids, doc, vocab)


@pytest.mark.parametrize("window,chunk", [(1, 1 << 20), (3, 1 << 20), (5, 7), (2, 1)])
def test_counts_match_dense_loops(window, chunk):
    gen = torch.Generator().manual_seed(window)
    docs = [(torch.rand(n, generator=gen) ** 3 * 12).long().tolist() for n in (40, 1, 0, 25, 3, 60)]  # skewed: rare ids
    s = stream_of(docs, 12)
    counts = s.counts()
    keep = frequent_ids(counts, 6)  # some ids are dropped from the stream before windowing
    assert 0 < len(keep) < 12
    got = cooccurrence(s, keep, window, chunk_tokens=chunk)
    torch.testing.assert_close(got.dense(), dense_reference(docs, keep.tolist(), window))
    assert torch.equal(got.rows * got.n + got.cols, torch.sort(got.rows * got.n + got.cols).values)  # row-major


def test_pairs_never_cross_documents():
    s = stream_of([[0, 0, 0], [1, 1]], 2)
    x = cooccurrence(s, torch.tensor([0, 1]), window=4).dense()
    assert x[0, 1] == 0 and x[1, 0] == 0
    assert x[0, 0] == pytest.approx(2 * (1 + 1 + 0.5)) and x[1, 1] == pytest.approx(2.0)


def test_bad_window():
    with pytest.raises(ValueError, match="window=0"):
        cooccurrence(stream_of([[0, 1]], 2), torch.tensor([0, 1]), window=0)


def test_tokenize_matches_the_tokenizer_per_document(real_tokenizer):
    tok = real_tokenizer("smollm2-135m")
    texts = ["def f(x):\n    return x + 1", "Hello world, hello.", "12345 apples"]
    s = tokenize(tok, texts, batch_size=2)
    want = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert s.ids.tolist() == [i for w in want for i in w]
    assert s.doc.tolist() == [d for d, w in enumerate(want) for _ in w]
    assert s.vocab_size == len(tok)
