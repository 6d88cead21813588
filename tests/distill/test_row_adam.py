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
    stage = SimpleNamespace(train="new_rows", weight_decay=0.0, row_spaces=["input"], head_rows="batch", map_lr=None)
    model, names, n, trained, gate, maps = prepare_stage(model, stage, masks)
    assert maps == []
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert len(trained) == 1 and trained[0][0] is emb and trained[0][1].tolist() == [5, 9]
    assert n == 2 * emb.shape[1] and emb.requires_grad and not head.requires_grad and names == ["model.embed_tokens.weight"]
    assert gate is None  # the head does not train: nothing to gate
    none = {k: torch.zeros_like(m) for k, m in masks.items()}
    with pytest.raises(ValueError, match=r"no row to train in \['input'\]"):
        prepare_stage(build_tiny("llama", real_tokenizer("smollm2-135m"), tie_word_embeddings=False), stage, none)


def test_lazy_row_adam_matches_sparse_adam():
    """Lazy rows against torch.optim.SparseAdam (its own sparse arithmetic) on the same row-sparse gradients: a row
    moves, and its moments change, only at the steps where it has a gradient."""
    g = torch.Generator().manual_seed(3)
    start = torch.randn(30, 5, generator=g)
    w, ref = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    rows = torch.arange(10, 30)  # rows 0..9 never train
    opt = RowAdam([(w, rows)], lr=0.02, betas=(0.85, 0.99), eps=1e-8, lazy=[w])
    sparse = torch.optim.SparseAdam([ref], lr=0.02, betas=(0.85, 0.99), eps=1e-8)
    hit_ever = torch.zeros(30, dtype=torch.bool)
    for _ in range(7):
        hit = torch.zeros(30, dtype=torch.bool)
        hit[torch.randint(10, 30, (6,), generator=g)] = True  # the rows of this step's batch
        hit_ever |= hit
        grad = torch.randn(30, 5, generator=g) * hit[:, None]
        w.grad, ref.grad = grad.clone(), grad.to_sparse(1)
        opt.step()
        sparse.step()
    # SparseAdam adds eps to sqrt(v) before its bias correction, torch.optim.Adam (and RowAdam) after: a relative
    # difference of about eps / sqrt(v) ~ 1e-8 per step; the rest is float32 rounding of a few operations
    torch.testing.assert_close(w.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(w.detach()[~hit_ever], start[~hit_ever]) and not torch.equal(w.detach()[hit_ever], start[hit_ever])
    plain = torch.nn.Parameter(start.clone())  # not lazy: a row hit once keeps moving on its momentum
    opt = RowAdam([(plain, rows)], lr=0.02, betas=(0.85, 0.99), eps=1e-8)
    for t in range(2):
        plain.grad = torch.zeros(30, 5)
        plain.grad[12] = 1.0 if t == 0 else 0.0
        opt.step()
    moved = (plain.detach() - start)[12]
    assert bool((moved < -0.02 * 1.5).all())  # two steps, the second on momentum alone
    with pytest.raises(ValueError, match="lazy matrix must be one of the trained"):
        RowAdam([(w, rows)], lazy=[plain])


@pytest.mark.parametrize("fused", [False, True])
def test_head_rows_batch_moves_only_the_rows_a_batch_holds_or_predicts(real_tokenizer, tmp_path, fused):
    """One step of a new_rows stage training the head (head_rows: batch): the trained head rows that moved are
    exactly those of the batch's tokens and of the model's first choices at its target positions (taken here from
    the model before the step), each against the sign of its dense gradient; every other row is as it was. The
    same with the fused head (``fused_head``, whose logits exist one chunk at a time)."""
    from types import SimpleNamespace

    from datasets import Dataset
    from transformers import TrainingArguments

    from tests.conftest import build_tiny
    from xtok.distill.stages import prepare_stage
    from xtok.distill.trainer import DistillTrainer

    tok = real_tokenizer("qwen2.5-coder-0.5b")
    model = build_tiny("qwen2", tok, seed=4)  # untied head
    head0 = model.get_output_embeddings().weight.detach().clone()
    ids = tok(["def f(x):\n    return x + 1\n", "import os, sys\n"], padding="max_length", max_length=12,
              truncation=True)
    labels = [[t if m else -100 for t, m in zip(r, a)] for r, a in zip(ids["input_ids"], ids["attention_mask"])]
    inp, lab = torch.tensor(ids["input_ids"]), torch.tensor(labels)
    v = head0.shape[0]
    trainable = torch.zeros(v, dtype=torch.bool)
    trainable[100:] = True  # rows below 100 stand for shared rows: they never train
    masks = {"input": torch.zeros(v, dtype=torch.bool), "output": trainable}
    with torch.no_grad():  # the dense reference: the whole head's gradient and first choices of the model as it is
        probe = build_tiny("qwen2", tok, seed=4)
        out = probe(input_ids=inp, attention_mask=torch.tensor(ids["attention_mask"]))
    target_mask = lab[:, 1:] != -100
    predicted = out.logits[:, :-1].argmax(-1)[target_mask]
    probe.requires_grad_(True)
    logits = probe(input_ids=inp, attention_mask=torch.tensor(ids["attention_mask"])).logits[:, :-1]
    torch.nn.functional.cross_entropy(logits[target_mask], lab[:, 1:][target_mask]).backward()
    dense = probe.get_output_embeddings().weight.grad
    expect = torch.zeros(v, dtype=torch.bool)
    expect[inp.flatten()] = True
    expect[lab[:, 1:][target_mask]] = True
    expect[predicted] = True
    expect &= trainable

    stage = SimpleNamespace(train="new_rows", weight_decay=0.0, row_spaces=["output"], head_rows="batch", map_lr=None)
    model, _, _, trained, gate, _ = prepare_stage(model, stage, masks)
    assert gate is not None
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=1,
                             learning_rate=1e-3, lr_scheduler_type="constant", report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True, seed=0, max_grad_norm=0.0)
    ds = Dataset.from_dict({**ids, "labels": labels})
    DistillTrainer(model=model, args=args, train_dataset=ds, loss="ce", trained_rows=trained, row_gate=gate,
                   fused_head=fused, loss_chunk=4).train()
    delta = model.get_output_embeddings().weight.detach() - head0
    moved = (delta != 0).any(1)
    assert torch.equal(moved, expect) and int(expect.sum()) > 5
    clear = dense[expect].abs() > 1e-6  # Adam's first step is lr * g / (|g| + eps): the sign of the gradient
    assert torch.equal(torch.sign(delta[expect])[clear], -torch.sign(dense[expect])[clear])

    # head_rows: all (the old behaviour): every trained row moves, the data shows its token or not
    model = build_tiny("qwen2", tok, seed=4)
    stage.head_rows = "all"
    model, _, _, trained, gate, _ = prepare_stage(model, stage, masks)
    assert gate is None
    DistillTrainer(model=model, args=args, train_dataset=ds, loss="ce", trained_rows=trained).train()
    moved = ((model.get_output_embeddings().weight.detach() - head0) != 0).any(1)
    assert torch.equal(moved, trainable)


def _touched_run(kind: str, steps: int, sparse: bool, fused: bool = False, wd: float = 0.1, resume_at: int | None = None):
    """A (40, 6) input embedding and a (40, 6) head trained on token batches that never hold tokens 30..39:
    ``kind`` "ref" is torch.optim.AdamW on dense gradients, "rows" TouchedRowAdamW (sparse gradients if asked).
    ``resume_at``: the run stops there and continues in a new optimizer loaded from the first one's state_dict."""
    from xtok.distill.row_adam import TouchedRowAdamW

    g = torch.Generator().manual_seed(1)
    emb = torch.nn.Embedding(40, 6, sparse=sparse)
    with torch.no_grad():
        emb.weight.copy_(torch.randn(40, 6, generator=g))
    head = torch.nn.Parameter(torch.randn(40, 6, generator=g))
    batches = torch.randint(0, 30, (steps, 12), generator=g)
    batches[0, :3] = torch.tensor([4, 4, 4])  # a row repeated within a batch sums its contributions

    def make():
        kw = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
        if kind == "ref":
            return torch.optim.AdamW([emb.weight, head], fused=fused, foreach=False if not fused else None, **kw)
        return TouchedRowAdamW([emb.weight, head], row_sparse=[emb.weight], fused=fused,
                               foreach=False if not fused else None, **kw)

    opt = make()
    for t in range(steps):
        if t == resume_at:
            saved = opt.state_dict()
            opt = make()
            opt.load_state_dict(saved)
        opt.zero_grad()
        logits = emb(batches[t]) @ head.T
        torch.nn.functional.cross_entropy(logits[:-1], batches[t][1:], reduction="sum").backward()
        opt.step()
    return emb.weight.detach().clone(), head.detach().clone(), opt, batches


@pytest.mark.parametrize("sparse,fused", [(True, False), (False, False), (True, True)])
def test_touched_row_adamw_matches_adamw(sparse, fused):
    ref_emb, ref_head, _, batches = _touched_run("ref", 6, sparse=False, fused=fused)
    emb, head, opt, _ = _touched_run("rows", 6, sparse=sparse, fused=fused)
    # the same float32 elementwise arithmetic; a gradient summed in another order differs by an ulp or so, and
    # Adam's normalized step (eps 1e-6, gradients ~1) carries that to the weights at about lr * 1e-7
    torch.testing.assert_close(emb, ref_emb, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(head, ref_head, rtol=1e-6, atol=1e-6)
    state = opt.state[opt.param_groups[0]["params"][0]]
    # a sparse gradient lists every input token; a dense one is zero for a batch's last token (it predicts nothing)
    seen = (batches if sparse else batches[:, :-1]).unique()
    assert sorted(state["rows"].tolist()) == seen.tolist() and state["exp_avg"].shape == (len(seen), 6)
    assert state["rows"].dtype == torch.long and int(state["step"]) == 6
    start = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    untouched = torch.arange(30, 40)  # moved by the decay alone, 6 times
    torch.testing.assert_close(emb[untouched], start[untouched] * (1 - 0.05 * 0.1) ** 6, rtol=1e-6, atol=0)


def test_touched_row_adamw_resumes_from_its_state_dict():
    whole, whole_head, _, _ = _touched_run("rows", 6, sparse=True)
    resumed, resumed_head, opt, _ = _touched_run("rows", 6, sparse=True, resume_at=3)
    assert torch.equal(resumed, whole) and torch.equal(resumed_head, whole_head)
    rows = next(s for s in opt.state.values() if "rows" in s)["rows"]
    assert rows.dtype == torch.long  # load_state_dict would have cast it to the parameter's dtype


def test_touched_row_adamw_bad_input():
    from xtok.distill.row_adam import TouchedRowAdamW

    w, v = torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="amsgrad"):
        TouchedRowAdamW([w], row_sparse=[w], amsgrad=True)
    with pytest.raises(ValueError, match=r"matrix among the optimizer's parameters, got shape \(3,\)"):
        TouchedRowAdamW([w, v], row_sparse=[v])
    with pytest.raises(ValueError, match=r"got shape \(3, 2\) \(not among them\)"):
        TouchedRowAdamW([v], row_sparse=[w])


def _trainer_run(real_tokenizer, tmp_path, row_sparse: bool, steps: int = 3):
    from datasets import Dataset
    from transformers import TrainingArguments

    from tests.conftest import build_tiny
    from xtok.distill.trainer import DistillTrainer

    tok = real_tokenizer("qwen2.5-coder-0.5b")
    student, teacher = build_tiny("qwen2", tok, seed=2), build_tiny("qwen2", tok, seed=1)  # qwen2: untied head
    ids = tok(["def f(x):\n    return x + 1\n", "for i in range(10):\n    print(i)\n", "import os, sys\n",
               "class A:\n    pass\n", "x = [1, 2, 3]\n", "while True:\n    break\n"], padding="max_length",
              max_length=12, truncation=True)
    labels = [[t if m else -100 for t, m in zip(r, a)] for r, a in zip(ids["input_ids"], ids["attention_mask"])]
    ds = Dataset.from_dict({**ids, "labels": labels})
    # clipping on (max_grad_norm far below the norm), weight decay on; eps 1e-3 keeps Adam's step linear in the
    # gradient, so two summation orders of a gradient differ in the weights by ~lr * ulp, not by a flipped sign
    args = TrainingArguments(output_dir=str(tmp_path / str(row_sparse)), per_device_train_batch_size=2, max_steps=steps,
                             learning_rate=1e-3, weight_decay=0.01, max_grad_norm=1e-3, adam_epsilon=1e-3,
                             lr_scheduler_type="constant", report_to=[], use_cpu=True, save_strategy="no",
                             logging_steps=1, disable_tqdm=True, seed=0, data_seed=0, optim="adamw_torch")
    trainer = DistillTrainer(model=student, args=args, train_dataset=ds, teacher=teacher, row_sparse_input=row_sparse)
    from torch.utils.data import SequentialSampler
    trainer._get_train_sampler = lambda *a, **k: SequentialSampler(ds)
    trainer.train()
    norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    return student, trainer, norms, torch.tensor(ids["input_ids"][:2 * steps])


def test_distill_trainer_row_sparse_input_equals_adamw(real_tokenizer, tmp_path):
    from xtok.distill.row_adam import TouchedRowAdamW

    ref, ref_trainer, ref_norms, _ = _trainer_run(real_tokenizer, tmp_path, row_sparse=False)
    got, trainer, norms, seen = _trainer_run(real_tokenizer, tmp_path, row_sparse=True)
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(opt, TouchedRowAdamW) and not isinstance(getattr(ref_trainer.optimizer, "optimizer", None),
                                                               TouchedRowAdamW)
    emb = got.get_input_embeddings()
    assert not emb.sparse  # switched on for the training only
    state = opt.state[emb.weight]
    seen = seen.unique()
    seen = seen[seen != emb.padding_idx]  # the padding row gets no gradient at all
    assert sorted(state["rows"].tolist()) == seen.tolist()  # the rows of tokens the batches held, no more
    assert state["exp_avg"].shape == (len(seen), emb.weight.shape[1]) and len(seen) < emb.num_embeddings
    # the gradient norm the Trainer logs (computed here with a sparse embedding gradient) is torch's, up to the
    # float32 summation order of a norm over every gradient element
    assert len(norms) == 3 and all(n > 1e-3 for n in norms)  # clipped at every step
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(ref_norms), rtol=1e-5, atol=0)
    for (name, a), b in zip(got.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(got.get_input_embeddings().weight, build_tiny_weight(real_tokenizer))


def build_tiny_weight(real_tokenizer):
    from tests.conftest import build_tiny

    return build_tiny("qwen2", real_tokenizer("qwen2.5-coder-0.5b"), seed=2).get_input_embeddings().weight.detach()
