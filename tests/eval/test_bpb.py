import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import build_tiny
from xtok.eval.bpb import evaluate, plan_windows
from xtok.vocab.identity import start_token_id

TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a wife.",
    "def add(a, b):\n    return a + b\n",
    "Où est la gare? 東京は日本の首都です。 Ünïcödé bytes count, not characters.",
    "12345 + 67890 = 80235",
]
DOMAINS = ["prose", "code", "multi", "numbers"]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 50, 51, 52, 100, 257])
@pytest.mark.parametrize("window,overlap", [(2, 0), (4, 1), (16, 8), (16, 15), (64, 16)])
def test_windows_score_every_target_once_with_context(n, window, overlap):
    seen = []
    for start, end, first in plan_windows(n, window, overlap):
        assert end - start <= window and start < first <= end
        if start > 0:
            assert first - start >= overlap
        seen.extend(range(first, end))
    assert seen == list(range(1, n))


def test_bad_overlap():
    with pytest.raises(ValueError, match="smaller than the window"):
        plan_windows(10, 4, 4)


def _reference_bpb(model, tok, texts):
    """Unbatched, unwindowed: -sum log2 p over [start]+tokens / UTF-8 bytes, straight from log_softmax."""
    nll = 0.0
    nbytes = 0
    for text in texts:
        ids = [start_token_id(tok)] + tok(text, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits[0].double(), dim=-1)
        nll -= sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))
        nbytes += len(text.encode("utf-8"))
    return nll / math.log(2) / nbytes


@pytest.mark.parametrize("name,arch", [("smollm2-135m", "llama"), ("qwen2.5-coder-0.5b", "qwen2"), ("gemma3-270m", "gemma3")])
def test_bits_per_byte_matches_reference(real_tokenizer, name, arch):
    tok = real_tokenizer(name)
    model = build_tiny(arch, tok)
    res = evaluate(model, tok, TEXTS, DOMAINS, window=256, overlap=64, batch_tokens=512, progress=False)
    assert res.overall().summary()["bits_per_byte"] == pytest.approx(_reference_bpb(model, tok, TEXTS), rel=1e-5)
    for text, dom in zip(TEXTS, DOMAINS):
        assert res.domains[dom].summary()["bits_per_byte"] == pytest.approx(_reference_bpb(model, tok, [text]), rel=1e-5)
        assert res.domains[dom].bytes == len(text.encode("utf-8"))


def test_uniform_model_gives_log2_vocab_per_token(real_tokenizer):
    """Zero output weights -> uniform distribution: bits/byte = tokens * log2(V) / bytes exactly."""
    tok = real_tokenizer("smollm2-135m")
    model = build_tiny("llama", tok)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    res = evaluate(model, tok, TEXTS, DOMAINS, window=8, overlap=3, batch_tokens=16, progress=False)
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS)
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    summary = res.overall().summary()
    assert summary["tokens"] == n_tokens and summary["bytes"] == n_bytes
    assert summary["bits_per_byte"] == pytest.approx(n_tokens * math.log2(len(tok)) / n_bytes, rel=1e-6)
    assert summary["bytes_per_token"] == pytest.approx(n_bytes / n_tokens)


def test_batching_and_padding_do_not_change_the_score(real_tokenizer):
    tok = real_tokenizer("qwen2.5-coder-0.5b")
    model = build_tiny("qwen2", tok)
    texts = TEXTS * 3
    doms = DOMAINS * 3
    one = evaluate(model, tok, texts, doms, window=32, overlap=8, batch_tokens=32, progress=False)
    many = evaluate(model, tok, texts, doms, window=32, overlap=8, batch_tokens=4096, progress=False)
    assert one.overall().nll_nats == pytest.approx(many.overall().nll_nats, rel=1e-5)


def test_windowed_long_document_matches_per_window_reference(real_tokenizer):
    """A document longer than the window: each target is scored with the context its window gives."""
    tok = real_tokenizer("smollm2-135m")
    model = build_tiny("llama", tok)
    text = " ".join(TEXTS * 4)
    window, overlap = 24, 6
    ids = [start_token_id(tok)] + tok(text, add_special_tokens=False)["input_ids"]
    ref = 0.0
    for start, end, first in plan_windows(len(ids), window, overlap):
        x = torch.tensor([ids[start:end]])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0]
        targets = torch.tensor(ids[start + 1 : end])
        nll = F.cross_entropy(logits[:-1], targets, reduction="none")
        ref += nll[first - start - 1 :].sum().item()
    res = evaluate(model, tok, [text], ["x"], window=window, overlap=overlap, batch_tokens=window * 3, progress=False)
    assert res.overall().nll_nats == pytest.approx(ref, rel=1e-5)
    full = evaluate(model, tok, [text], ["x"], window=512, overlap=0, batch_tokens=512, progress=False)
    assert full.overall().nll_nats != pytest.approx(ref, rel=1e-6)  # the context really was cut


def test_window_longer_than_context_is_refused(real_tokenizer):
    tok = real_tokenizer("smollm2-135m")
    model = build_tiny("llama", tok)
    with pytest.raises(ValueError, match=r"longer than the model's context \(512\); pass --window 512"):
        evaluate(model, tok, TEXTS, DOMAINS, window=1024, overlap=0, batch_tokens=2048, progress=False)


def test_no_documents_is_refused(real_tokenizer):
    tok = real_tokenizer("smollm2-135m")
    with pytest.raises(ValueError, match="no documents"):
        evaluate(build_tiny("llama", tok), tok, [], [], progress=False)
