from xtok.corpus import load_corpus
from xtok.eval.numbers import digit_split_stats, token_pieces


def test_qwen_and_gemma_split_every_digit(real_tokenizer):
    texts = load_corpus("bundled:eval", domains=["numbers"], max_docs_per_domain=3)["text"]
    for name in ("qwen2.5-coder-0.5b", "gemma3-270m"):
        stats = digit_split_stats(real_tokenizer(name), texts)
        assert stats["max_digits_in_one_token"] == 1, name
        assert stats["probes"]["12345678"] == list("12345678"), name


def test_stats_count_digits(real_tokenizer):
    tok = real_tokenizer("smollm2-135m")
    stats = digit_split_stats(tok, ["a 1234 b 56"])
    pieces = [p for p in token_pieces(tok, "a 1234 b 56") if any(c.isdigit() for c in p)]
    assert stats["digit_tokens"] == len(pieces)
    assert stats["mean_digits_per_digit_token"] * stats["digit_tokens"] == 6
    assert "".join(token_pieces(tok, "3.14159")) == "3.14159"
