"""A transformers ``Trainer`` whose loss is token-level distillation from a teacher sharing the vocabulary.

Being a plain Trainer, checkpoints, resume, ``report_to``, gradient accumulation and
``accelerate launch`` work as they do for any Trainer. The loss is summed over target positions
and divided by the number of target positions of the *whole* accumulated batch
(``num_items_in_batch``), so accumulating 4 micro-batches equals one batch of 4 even when the
micro-batches hold different numbers of tokens.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from xtok.losses.kd import cross_entropy_sum, distill_loss


def check_same_vocab(student, teacher) -> None:
    s, t = student.config.vocab_size, teacher.config.vocab_size
    if s != t:
        raise ValueError(f"student vocab_size {s} != teacher vocab_size {t}: token-level distillation needs one "
                         "vocabulary; transplant the student to the teacher's tokenizer first (xtok transplant)")


class DistillTrainer(Trainer):
    def __init__(self, *args, teacher=None, beta: float = 0.0, temperature: float = 1.0, ce_weight: float = 0.0,
                 loss_chunk: int = 128, **kwargs):
        super().__init__(*args, **kwargs)
        if teacher is None:
            raise ValueError("DistillTrainer needs a teacher model")
        check_same_vocab(self.model, teacher)
        if not 0.0 <= ce_weight <= 1.0:
            raise ValueError(f"ce_weight={ce_weight} must lie in [0, 1]")
        self.teacher = teacher.eval().requires_grad_(False)
        self.beta, self.temperature, self.ce_weight, self.loss_chunk = beta, temperature, ce_weight, loss_chunk
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the accumulated token count itself

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]  # (B, T), -100 where nothing is predicted
        fwd = {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs}
        outputs = model(**fwd)
        with torch.no_grad():
            teacher_logits = self.teacher(**fwd).logits  # (B, T, V)
        mask = labels[:, 1:] != -100  # position t predicts token t+1
        s_logits = outputs.logits[:, :-1]  # (B, T-1, V)
        kd, count = distill_loss(s_logits, teacher_logits[:, :-1], mask, beta=self.beta,
                                 temperature=self.temperature, chunk=self.loss_chunk)
        total = kd
        if self.ce_weight:
            ce, _ = cross_entropy_sum(s_logits, labels[:, 1:].clamp_min(0), mask, chunk=self.loss_chunk)
            total = (1 - self.ce_weight) * kd + self.ce_weight * ce
        denom = num_items_in_batch if num_items_in_batch is not None else count
        step = self.state.global_step
        if int(denom) == 0:
            raise ValueError(f"step {step}: the batch has no target tokens (all positions masked or empty); "
                             "check the data and the prompt masking")
        loss = total / denom
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {step}: the distillation loss is {loss.item()}; lower the learning rate or check "
                               "the models for NaN/Inf weights")
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, outputs) if return_outputs else loss
