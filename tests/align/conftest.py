"""A synthetic tokenizer pair whose true map is known, over a corpus with learnable co-occurrences.

Words ``a0..`` are spelled the same by both tokenizers (byte-shared pivots). Words ``b0..`` exist
only in the source; the target tokenizer normalizes every ``b`` to ``c`` and has ``c0..`` instead,
so target ``c<i>`` reads exactly where source ``b<i>`` does: its true partner. Target ids are a
permutation of the source ids, so an identity map would be wrong. The corpus is a sparse Markov
chain: each word has a few preferred successors, which gives every word a distinct context.
"""

from __future__ import annotations

import random

import pytest

N_SHARED, N_RENAMED = 150, 40


def word_level(words: list[str], rename: bool):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if rename:
        tok.normalizer = normalizers.Replace("b", "c")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def markov_corpus(n_words: int, docs: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    succ = [rng.sample(range(n_words), 3) for _ in range(n_words)]
    out = []
    for _ in range(docs):
        w, doc = rng.randrange(n_words), []
        for _ in range(length):
            doc.append(w)
            w = rng.choice(succ[w]) if rng.random() < 0.85 else rng.randrange(n_words)
        out.append(doc)
    return out


@pytest.fixture(scope="session")
def synthetic_pair():
    """(target tokenizer, source tokenizer, texts, truth: target id -> source id for the renamed words)."""
    shared = [f"a{i}" for i in range(N_SHARED)]
    source_words = shared + [f"b{i}" for i in range(N_RENAMED)]
    rng = random.Random(1)
    target_words = shared + [f"c{i}" for i in range(N_RENAMED)]
    rng.shuffle(target_words)  # different ids for the same words
    source, target = word_level(source_words, False), word_level(target_words, True)
    texts = [" ".join(source_words[w] for w in doc) for doc in markov_corpus(len(source_words), 40, 1500)]
    sv, tv = source.get_vocab(), target.get_vocab()
    truth = {tv[f"c{i}"]: sv[f"b{i}"] for i in range(N_RENAMED)}
    return target, source, texts, truth


@pytest.fixture(scope="session")
def synthetic_alignment(synthetic_pair):
    from xtok.align.embed import EmbedOptions
    from xtok.align.pipeline import AlignSettings, align

    target, source, texts, _ = synthetic_pair
    settings = AlignSettings(window=4, min_count=3, pivots=100, embed=EmbedOptions(dims=24))
    return align(target, source, texts, settings)
