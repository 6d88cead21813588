import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from tests.conftest import build_tiny
from tests.distill.tolerance import assert_float32_close
from xtok.distill.stages import select_trainable
from xtok.distill.trainer import DistillTrainer
from xtok.losses.kd import distill_loss


@pytest.mark.parametrize("arch,name,tied", [("llama", "smollm2-135m", True), ("qwen2", "qwen2.5-coder-0.5b", False)])
def test_stage_one_trains_exactly_embeddings_and_head(real_tokenizer, arch, name, tied):
    tok = real_tokenizer(name)
    model = build_tiny(arch, tok, tie_word_embeddings=tied)
    names = select_trainable(model, "embeddings")
    expected = {n for n, p in model.named_parameters()
                if p is model.get_input_embeddings().weight or p is model.get_output_embeddings().weight}
    assert set(names) == expected and len(names) == (1 if tied else 2)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == len(names)
    assert model.get_output_embeddings().weight.requires_grad
    full = select_trainable(model, "full")
    assert len(full) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown stage"):
        select_trainable(model, "head")


def _data(tok, texts, length):
    enc = tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    return Dataset.from_dict({"input_ids": enc["input_ids"].tolist(), "attention_mask": enc["attention_mask"].tolist(),
                              "labels": labels.tolist()})


def _grads_after_one_step(student, teacher, ds, tmp_path, bs, accum, fused=False, path="counted"):
    """The summed gradient of one optimizer step (learning rate 0), through the Trainer's own training loop.

    ``path`` picks what reaches ``compute_loss``: "counted" (the model accepts loss kwargs, so the Trainer counts
    the accumulated tokens), "model-without-loss-kwargs" (a model the Trainer passes ``num_items_in_batch=None``
    for, like Qwen2.5-VL or Gemma-4) or "none-reaches-the-loss" (no count at all arrives in ``training_step``).
    """
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=bs, gradient_accumulation_steps=accum,
                             max_steps=1, learning_rate=0.0, report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", dataloader_drop_last=False, seed=0, data_seed=0)
    grads = {}
    trainer = DistillTrainer(model=student, args=args, train_dataset=ds, teacher=teacher, fused_head=fused)
    if path == "model-without-loss-kwargs":
        trainer.model_accepts_loss_kwargs = False
        labels = {"labels": torch.tensor(ds["labels"])}
        assert Trainer._get_num_items_in_batch(trainer, [labels], args.device) is None  # what transformers would pass
    elif path == "none-reaches-the-loss":
        trainer.get_batch_samples = lambda *a: (type(trainer).get_batch_samples(trainer, *a)[0], None)
    seen = []
    compute_loss = trainer.compute_loss
    trainer.compute_loss = lambda *a, **k: seen.append(k.get("num_items_in_batch")) or compute_loss(*a, **k)
    hook = [p.register_hook(lambda g, n=n: grads.__setitem__(n, grads.get(n, 0) + g.clone()))
            for n, p in student.named_parameters() if p.requires_grad]
    from torch.utils.data import SequentialSampler
    trainer._get_train_sampler = lambda *a, **k: SequentialSampler(ds)
    trainer.train()
    for h in hook:
        h.remove()
    assert len(seen) == accum and (path != "none-reaches-the-loss" or seen[0] is None)
    return grads


@pytest.mark.parametrize("path,fused,texts", [
    ("counted", False, "unequal"), ("counted", True, "unequal"),
    ("model-without-loss-kwargs", False, "unequal"), ("model-without-loss-kwargs", True, "unequal"),
    ("none-reaches-the-loss", False, "equal")])
def test_loss_is_correct_under_gradient_accumulation(real_tokenizer, tmp_path, path, fused, texts):
    """Two micro-batches accumulate to the gradient of the one full batch: exactly when their token counts differ
    and the Trainer counts them (or would pass None, and the trainer counts them itself); when no count reaches the
    loss at all, each micro-batch's mean is divided by the accumulation steps (exact for equal counts)."""
    tok = real_tokenizer("smollm2-135m")
    teacher = build_tiny("llama", tok, seed=1)
    long = ("a much longer second sentence with many more tokens in it, really, and then some more words, enough of "
            "them to fill every position of the block")
    ds = _data(tok, ["a short one", long] if texts == "unequal" else [long, long[::-1]], 24)
    counts = [sum(1 for x in row[1:] if x != -100) for row in ds["labels"]]
    assert (counts[0] != counts[1]) == (texts == "unequal"), counts
    g_full = _grads_after_one_step(build_tiny("llama", tok, seed=2), teacher, ds, tmp_path / "a", bs=2, accum=1)
    g_acc = _grads_after_one_step(build_tiny("llama", tok, seed=2), teacher, ds, tmp_path / "b", bs=1, accum=2, fused=fused,
                                  path=path)
    assert g_full.keys() == g_acc.keys()
    for n in g_full:
        assert_float32_close(g_acc[n], g_full[n], terms=len(tok), what=n)


@pytest.mark.parametrize("loss,beta", [("forward_kl", 0.0), ("reverse_kl", 1.0), ("jsd", 0.3)])
def test_compute_loss_equals_the_pure_loss(real_tokenizer, tmp_path, loss, beta):
    tok = real_tokenizer("smollm2-135m")
    student, teacher = build_tiny("llama", tok, seed=2), build_tiny("llama", tok, seed=1)
    ds = _data(tok, ["hello there world", "x"], 8)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = DistillTrainer(model=student, args=args, train_dataset=ds, teacher=teacher, loss=loss, beta=0.3)
    batch = {k: torch.tensor(ds[k]) for k in ds.column_names}
    got = trainer.compute_loss(student, batch)
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = batch["labels"][:, 1:] != -100
    ref, n = distill_loss(s, t, mask, beta=beta)
    assert_float32_close(got, ref / n, terms=len(tok), what=loss)


def test_clear_errors(real_tokenizer, tmp_path):
    tok = real_tokenizer("smollm2-135m")
    student = build_tiny("llama", tok)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    other = build_tiny("qwen2", real_tokenizer("qwen2.5-coder-0.5b"))
    with pytest.raises(ValueError, match="transplant the student"):
        DistillTrainer(model=student, args=args, teacher=other)
    ds = _data(tok, ["hello"], 4)
    trainer = DistillTrainer(model=student, args=args, train_dataset=ds, teacher=build_tiny("llama", tok, seed=1))
    batch = {k: torch.tensor(ds[k]) for k in ds.column_names}
    batch["labels"][:] = -100
    with pytest.raises(ValueError, match="step 0: the batch has no target tokens"):
        trainer.compute_loss(student, batch)


@pytest.mark.parametrize("arch,name,extra", [("llama", "smollm2-135m", {}),
                                             ("qwen2", "qwen2.5-coder-0.5b", {"tie_word_embeddings": False}),
                                             ("gemma3", "gemma3-270m", {"final_logit_softcapping": 3.0})])
@pytest.mark.parametrize("teacher_kind", ["online", "topk", "topk forward_kl", "none"])
def test_fused_head_gives_the_loss_and_gradients_of_the_full_logits(real_tokenizer, tmp_path, arch, name, extra,
                                                                     teacher_kind, monkeypatch):
    """The per-chunk checkpointed head (the default) against the model's own full logits: same loss, same gradients,
    with chunks that split the sequence unevenly and one chunk that is masked out entirely; tied and untied heads,
    and Gemma's logit soft-capping. "topk forward_kl" (plain forward KL on a cached teacher) takes the loss's
    closed-form gradient (``topk_forward_kl_grad``) instead of autograd in the fused head."""
    import xtok.distill.trainer as trainer_module
    from xtok.distill.teacher_cache import teacher_topk

    closed_form = []
    real_grad = trainer_module.topk_forward_kl_grad
    monkeypatch.setattr(trainer_module, "topk_forward_kl_grad", lambda *a, **kw: closed_form.append(1) or real_grad(*a, **kw))

    tok = real_tokenizer(name)
    teacher = build_tiny(arch, tok, seed=1)
    ds = _data(tok, ["hello there world, and more words to fill it", "x"], 11)
    batch = {k: torch.tensor(ds[k]) for k in ds.column_names}
    batch["labels"][:, 3:6] = -100
    if teacher_kind == "topk forward_kl":  # a peaked teacher: a KL of whole nats, not 1e-5 (two near-uniform tiny
        with torch.no_grad():  # models), whose float32 noise, eps x the log-probs' size, would swamp a tolerance
            teacher.get_output_embeddings().weight.mul_(30)  # scaled by the loss itself
    if teacher_kind.startswith("topk"):
        topk = teacher_topk(teacher, batch["input_ids"], 5, batch_size=2)
        batch |= {"teacher_topk_logprobs": topk.logprobs, "teacher_topk_ids": topk.ids.long(),
                  "teacher_topk_tail": topk.tail, "teacher_topk_temperature": torch.ones(2)}
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    results = []
    for fused in (True, False):
        student = build_tiny(arch, tok, seed=2, **extra)
        loss = {"none": "ce", "topk forward_kl": "forward_kl"}.get(teacher_kind, "jsd")
        trainer = DistillTrainer(model=student, args=args, train_dataset=ds, loss=loss,
                                 teacher=teacher if teacher_kind == "online" else None, beta=0.3,
                                 ce_weight=0.0 if loss == "forward_kl" else 0.25, loss_chunk=3, fused_head=fused)
        loss = trainer.compute_loss(student, dict(batch))
        loss.backward()
        assert trainer.fused_head is fused  # the check against the model's own logits passed
        results.append((loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters()}))
    assert bool(closed_form) is (teacher_kind == "topk forward_kl")  # chunks of the fused run, never the full logits
    (l_fused, g_fused), (l_full, g_full) = results
    vocab = student.config.vocab_size  # the longest float32 sum on the way to the loss and every gradient
    assert_float32_close(l_fused, l_full, terms=vocab, what="loss")
    assert g_fused.keys() == g_full.keys()
    for n in g_full:
        assert_float32_close(g_fused[n], g_full[n], terms=vocab, what=n)


class _ShiftedHead(torch.nn.Linear):
    """A head whose forward adds a term to ``x @ W^T`` (as a LoRA adapter on the head would)."""

    def forward(self, x):
        return super().forward(x) + 0.5 * x[..., :1]


def test_fused_head_falls_back_for_a_head_that_is_more_than_its_weight(real_tokenizer, tmp_path, caplog):
    """The fused head uses the head's weight alone; a head whose forward adds to it (its logits still the head applied to
    the last hidden state, so the logits check alone would pass) gets the full-logits loss and gradients instead."""
    tok = real_tokenizer("smollm2-135m")
    ds = _data(tok, ["hello there world, and more words", "x"], 9)
    batch = {k: torch.tensor(ds[k]) for k in ds.column_names}
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    results = []
    for fused in (True, False):
        student = build_tiny("llama", tok, seed=2, tie_word_embeddings=False)
        old = student.get_output_embeddings()
        head = _ShiftedHead(old.in_features, old.out_features, bias=False)
        head.weight = old.weight
        student.set_output_embeddings(head)
        trainer = DistillTrainer(model=student, args=args, train_dataset=ds, loss="ce", fused_head=fused, loss_chunk=3)
        loss = trainer.compute_loss(student, dict(batch))
        loss.backward()
        assert trainer.fused_head is False
        results.append((loss.detach(), student.get_output_embeddings().weight.grad.clone()))
    assert "a Linear without bias" in caplog.text
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)
