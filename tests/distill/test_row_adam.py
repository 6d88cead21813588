"""RowAdam: Adam's moments for the trained rows only, against torch.optim.Adam on gradients masked to those rows."""

import pytest
import torch

from xtok.distill.row_adam import RowAdam


def _run(opt_kind: str, steps: int, seed: int = 0, state=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(50, 6, generator=g))
    x = torch.randn(steps, 8, 6, generator=g)
    rows = torch.tensor([3, 7, 7, 20, 49])  # a repeat is one row
    mask = torch.zeros(50, 1)
    mask[rows] = 1
    opt = RowAdam([(w, rows)], lr=0.05, betas=(0.8, 0.95), eps=1e-6) if opt_kind == "row" else \
        torch.optim.Adam([w], lr=0.05, betas=(0.8, 0.95), eps=1e-6, foreach=False)
    if state is not None:
        w.data.copy_(state[0])
        opt.load_state_dict(state[1])
    for t in range(steps):
        opt.zero_grad()
        loss = torch.logsumexp(x[t] @ w.T, dim=1).sum() + (w ** 3).sum()  # every row gets a gradient
        loss.backward()
        w.grad *= mask  # what the new_rows stage's hook does
        opt.step()
    return w.detach().clone(), opt


def test_row_adam_matches_adam_on_masked_gradients():
    ref, _ = _run("adam", 6)
    got, opt = _run("row", 6)
    start = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    frozen = torch.ones(50, dtype=torch.bool)
    frozen[[3, 7, 20, 49]] = False
    assert torch.equal(got[frozen], start[frozen]) and torch.equal(ref[frozen], start[frozen])
    # the same elementwise float32 operations on the same values: equal up to a few ulps of the moved rows
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert not torch.equal(got[~frozen], start[~frozen])
    state = next(iter(opt.state.values()))
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (4, 6) and state["step"] == 6


def test_row_adam_resumes_from_its_state_dict():
    whole, _ = _run("row", 6)
    half, opt = _run("row", 3)
    saved = (half, opt.state_dict())
    # the rest of the run from the saved weights and state (inputs drawn for 6 steps, the last 3 used)
    g = torch.Generator().manual_seed(0)
    torch.randn(50, 6, generator=g)
    x = torch.randn(6, 8, 6, generator=g)
    w = torch.nn.Parameter(saved[0].clone())
    rows = torch.tensor([3, 7, 20, 49])
    mask = torch.zeros(50, 1)
    mask[rows] = 1
    resumed = RowAdam([(w, rows)], lr=0.05, betas=(0.8, 0.95), eps=1e-6)
    resumed.load_state_dict(saved[1])
    for t in range(3, 6):
        resumed.zero_grad()
        (torch.logsumexp(x[t] @ w.T, dim=1).sum() + (w ** 3).sum()).backward()
        w.grad *= mask
        resumed.step()
    assert torch.equal(w.detach(), whole)


def test_row_adam_bad_input():
    w = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match=r"rows of matrices, got a parameter of shape \(4,\)"):
        RowAdam([(w, torch.tensor([0]))])
    with pytest.raises(ValueError, match="lr=-1"):
        RowAdam([(torch.nn.Parameter(torch.zeros(2, 2)), torch.tensor([0]))], lr=-1)


def test_prepare_stage_gives_row_adam_its_rows_and_freezes_a_matrix_without_any(real_tokenizer):
    from types import SimpleNamespace

    from tests.conftest import build_tiny
    from xtok.distill.stages import prepare_stage

    model = build_tiny("llama", real_tokenizer("smollm2-135m"), tie_word_embeddings=False)
    v = model.get_input_embeddings().weight.shape[0]
    masks = {"input": torch.zeros(v, dtype=torch.bool), "output": torch.zeros(v, dtype=torch.bool)}
    masks["input"][[5, 9]] = True
    masks["output"][[1]] = True
    stage = SimpleNamespace(train="new_rows", weight_decay=0.0, row_spaces=["input"])
    model, names, n, trained = prepare_stage(model, stage, masks)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert len(trained) == 1 and trained[0][0] is emb and trained[0][1].tolist() == [5, 9]
    assert n == 2 * emb.shape[1] and emb.requires_grad and not head.requires_grad and names == ["model.embed_tokens.weight"]
    none = {k: torch.zeros_like(m) for k, m in masks.items()}
    with pytest.raises(ValueError, match=r"no row to train in \['input'\]"):
        prepare_stage(build_tiny("llama", real_tokenizer("smollm2-135m"), tie_word_embeddings=False), stage, none)
