import json

import numpy as np
import pytest
import torch

from tests.conftest import build_tiny
from tests.test_cli import xtok
from xtok.ensemble.mix import Ensemble, check_members, mix_logprob, mix_prob, normalized_weights
from xtok.eval.bpb import evaluate


def test_mixing_rules_against_numpy():
    g = torch.Generator().manual_seed(0)
    logps = torch.log_softmax(torch.randn(3, 2, 4, 9, generator=g), dim=-1)
    w = normalized_weights([1.0, 2.0, 1.0], 3)
    p = logps.exp().numpy()
    wn = np.array([0.25, 0.5, 0.25])
    ref_prob = np.log(np.einsum("m,m...->...", wn, p))
    geo = np.einsum("m,m...->...", wn, np.log(p))
    ref_log = geo - np.log(np.exp(geo).sum(-1, keepdims=True))
    np.testing.assert_allclose(mix_prob(logps, w).numpy(), ref_prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mix_logprob(logps, w).numpy(), ref_log, rtol=1e-5, atol=1e-6)
    one = torch.tensor([1.0, 0.0, 0.0])  # all weight on one member gives that member back
    torch.testing.assert_close(mix_prob(logps, one), logps[0])
    torch.testing.assert_close(mix_logprob(logps, one), logps[0])
    with pytest.raises(ValueError, match="one per model"):
        normalized_weights([1.0], 3)


def test_ensemble_scores_and_generates(real_tokenizer):
    tok = real_tokenizer("smollm2-135m")
    a, b = build_tiny("llama", tok, seed=1), build_tiny("llama", tok, seed=2)
    ens = Ensemble([a, b], normalized_weights(None, 2), "prob").eval()
    texts, doms = ["def f(x):\n    return x + 1\n", "Hello there, world."], ["code", "prose"]
    res = {name: evaluate(m, tok, texts, doms, window=64, overlap=16, progress=False) for name, m in
           (("a", a), ("b", b), ("ens", ens))}
    nll = {k: sum(d.nll_nats for d in r.domains.values()) for k, r in res.items()}
    # Jensen: -log(mean p) <= mean(-log p), so the mixture's total nll is at most the members' average.
    assert nll["ens"] <= (nll["a"] + nll["b"]) / 2 + 1e-6
    ids = tok("def f(x):", return_tensors="pt")["input_ids"]
    gen = ens.generate(ids, 6)
    full = ids
    for _ in range(6):  # the same greedy steps without KV caches
        nxt = ens(full).logits[:, -1].argmax(-1, keepdim=True)
        full = torch.cat([full, nxt], 1)
    assert torch.equal(gen, full)


def test_members_must_share_a_vocabulary(real_tokenizer):
    s_tok, q_tok = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    a, b = build_tiny("llama", s_tok), build_tiny("qwen2", q_tok)
    with pytest.raises(ValueError, match="transplant it"):
        check_members([a, b], [s_tok, q_tok], ["smol", "qwen"])


def test_ensemble_cli(tiny_model_dir, tmp_path):
    a, b = tiny_model_dir("smollm2-135m"), tiny_model_dir("smollm2-135m", seed=1)
    res = xtok("ensemble", str(a), str(b), "--weight", "0.7", "--weight", "0.3", "--max-docs", "1", "--max-chars", "300",
               "--window", "64", "--prompt", "def", "--out", str(tmp_path / "e.json"), "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["weights"] == pytest.approx([0.7, 0.3]) and len(r["members"]) == 2
    assert set(r["ensemble"]["domains"]) == set(r["members"][0]["domains"]) and "text" in r["generation"]
    bad = xtok("ensemble", str(a), str(tiny_model_dir("qwen2.5-coder-0.5b")), "--max-docs", "1")
    assert bad.returncode == 2 and "transplant" in bad.stderr
