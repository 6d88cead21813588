"""A transformers ``Trainer`` whose loss is token-level distillation from a teacher sharing the vocabulary.

Being a plain Trainer, checkpoints, resume, ``report_to``, gradient accumulation and
``accelerate launch`` work as they do for any Trainer. The loss is summed over target positions
and divided by the number of target positions of the *whole* accumulated batch
(``num_items_in_batch``, counted by this trainer for every model, also those transformers passes
``None`` for), so accumulating 4 micro-batches equals one batch of 4 even when the micro-batches
hold different numbers of tokens.

With ``fused_head`` the model's forward returns only its final hidden states and the output head is applied
chunk by chunk over the sequence, each chunk's loss and gradients taken at once (``xtok.distill.head_loss``): the
student's (B, T, V) logits, their log-softmax and their gradient never exist in memory (V is 151,936 for the Qwen
vocabulary), and nothing is recomputed.
"""

from __future__ import annotations

import logging

import torch
from transformers import Trainer

from xtok.config.training import LOSS_CHUNK
from xtok.distill.head_loss import capped, chunked_head_loss
from xtok.losses.alm import TeacherChunks, token_logprobs
from xtok.losses.kd import TeacherOtherVocab, TeacherTopK, cross_entropy_sum, topk_forward_kl_grad
from xtok.registry import LOSSES

log = logging.getLogger(__name__)


def check_same_vocab(student, teacher) -> None:
    """Models or their configs."""
    s, t = getattr(student, "config", student).vocab_size, getattr(teacher, "config", teacher).vocab_size
    if s != t:
        raise ValueError(f"student vocab_size {s} != teacher vocab_size {t}: token-level distillation needs one "
                         "vocabulary; transplant the student to the teacher's tokenizer first (xtok transplant)")


class DistillTrainer(Trainer):
    """``loss`` names a registered loss (``xtok.losses``); the teacher is a model run online, or absent when the
    batches carry a cached top-k teacher (``BlockDataset`` with a ``TeacherTopK``: ``teacher_topk_logprobs``/``_ids``
    (B, T, K), ``_tail`` (B, T), ``_temperature`` (B,)) or the loss needs no teacher (``ce``)."""

    def __init__(self, *args, teacher=None, loss: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0,
                 ce_weight: float = 0.0, loss_chunk: int = LOSS_CHUNK, on_policy: float = 0.0, prompt_tokens: int = 64,
                 sample_temperature: float = 1.0, fused_head: bool = True,
                 trained_rows: list[tuple[torch.nn.Parameter, torch.Tensor]] | None = None,
                 row_gate=None, maps=(), map_lr: float | None = None, row_sparse_input: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.trained_rows = trained_rows  # a new_rows stage: RowAdam over these rows replaces the Trainer's optimizer
        self.row_gate = row_gate  # a BatchRows (head_rows: batch): each training micro-batch records its head rows
        self.maps, self.map_lr = list(maps), map_lr  # DonorMaps of a new_rows stage with map_lr, stepped by RowAdam
        self.row_sparse_input = row_sparse_input
        self._sparse_embedding = None  # the nn.Embedding switched to sparse gradients for this training, if any
        if not 0.0 <= on_policy <= 1.0:
            raise ValueError(f"on_policy={on_policy} is a probability (GKD's lambda); use a value in [0, 1]")
        if on_policy and teacher is None:
            raise ValueError("on-policy batches need the teacher online to score the student's samples; "
                             "set teacher_cache.top_k: null (no cache) or on_policy.lmbda: 0")
        self.on_policy, self.prompt_tokens, self.sample_temperature = on_policy, prompt_tokens, sample_temperature
        self.loss_fn = LOSSES.get(loss)
        self.needs_teacher = LOSSES.meta(loss).get("needs_teacher", True)
        if teacher is not None:
            if LOSSES.meta(loss).get("same_vocab", True):
                check_same_vocab(self.model, teacher)
            teacher = teacher.eval().requires_grad_(False).to(self.args.device)
        if not 0.0 <= ce_weight <= 1.0:
            raise ValueError(f"ce_weight={ce_weight} must lie in [0, 1]")
        self.teacher, self.loss_name = teacher, loss
        self.beta, self.temperature, self.ce_weight, self.loss_chunk = beta, temperature, ce_weight, loss_chunk
        # Whether compute_loss divided by the accumulated token count (True) or by the micro-batch's own (False,
        # then training_step divides by the accumulation steps); set per micro-batch in training_step.
        self.loss_is_scaled_for_ga = True
        # uld aligns whole sequences of two tokenizations: it takes the full logits
        self.fused_head = fused_head and LOSSES.meta(loss).get("same_vocab", True)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, except where the embedding rows allow less state: in a ``new_rows`` stage
        ``RowAdam`` (moments for the trained rows only; ``args.optim`` does not apply there); where an untied input
        embedding trains under the default AdamW (``args.optim`` adamw_torch or adamw_torch_fused) and
        ``row_sparse_input`` holds, ``TouchedRowAdamW``: the same AdamW, with the Trainer's weight-decay groups, whose
        input embedding keeps moments only for the rows of tokens seen so far and, in a single process, gets sparse
        gradients (no dense (V, d) gradient either)."""
        if self.optimizer is not None:
            return self.optimizer
        if self.trained_rows is not None:
            from xtok.distill.row_adam import RowAdam

            head = self.model.get_output_embeddings() if self.row_gate is not None else None
            lazy = [p for p, _ in self.trained_rows if head is not None and p is head.weight]
            self.optimizer = RowAdam(self.trained_rows, lr=self.args.learning_rate,
                                     betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon,
                                     lazy=lazy, maps=self.maps, map_lr=self.map_lr)
            return self.optimizer
        model = self.model if model is None else model
        embedding = self._row_sparse_embedding(model)
        if embedding is None:
            return super().create_optimizer(model)
        from xtok.distill.row_adam import TouchedRowAdamW

        decay = set(self.get_decay_parameter_names(model))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
                  {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
        self.optimizer = TouchedRowAdamW([g for g in groups if g["params"]], row_sparse=[embedding.weight],
                                         lr=self.args.learning_rate, betas=(self.args.adam_beta1, self.args.adam_beta2),
                                         eps=self.args.adam_epsilon, fused=self.args.optim == "adamw_torch_fused")
        # DDP's all-reduce takes dense gradients, and clipping sparse ones needs this class's _clip_grad_norm and
        # _get_grad_norm to be the Trainer's hooks: otherwise the gradient stays dense (the moments stay row-sparse)
        if (self.args.world_size == 1 and isinstance(embedding, torch.nn.Embedding) and not embedding.sparse
                and all(hasattr(Trainer, name) for name in ("_clip_grad_norm", "_get_grad_norm"))):
            embedding.sparse = True
            self._sparse_embedding = embedding
        return self.optimizer

    def _row_sparse_embedding(self, model):
        """The input embedding module whose rows ``TouchedRowAdamW`` tracks, or None where it does not apply."""
        if not self.row_sparse_input or self.args.optim not in ("adamw_torch", "adamw_torch_fused"):
            return None
        get = getattr(model, "get_input_embeddings", None)
        embedding = get() if get is not None else None
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        weight = getattr(embedding, "weight", None)
        if weight is None or not weight.requires_grad or weight.ndim != 2 or (head is not None and head.weight is weight):
            return None  # frozen, or tied to the head (whose gradient reaches every row)
        return embedding

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._sparse_embedding is not None:  # the model leaves as it came
                self._sparse_embedding.sparse = False
                self._sparse_embedding = None

    def _grad_norm(self, model, max_norm: float) -> torch.Tensor:
        """``clip_grad_norm_`` for gradients of which some are sparse (torch's takes dense ones only): the norm of
        all gradients as one vector, and each scaled by ``max_norm / (norm + 1e-6)`` where that is below 1."""
        self.accelerator.unscale_gradients()
        params = [p for p in model.parameters() if p.grad is not None]
        for p in params:
            if p.grad.is_sparse:
                p.grad = p.grad.coalesce()  # a repeated row sums first: its norm is that of the sum
        parts = [p.grad.values() if p.grad.is_sparse else p.grad for p in params]
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in parts]))
        if max_norm != float("inf"):
            coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
            for g in parts:
                g.mul_(coef.to(g.dtype))
        return total

    def _clip_grad_norm(self, model):
        if self._sparse_embedding is None:
            return super()._clip_grad_norm(model)
        return self._grad_norm(model, self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None and self._sparse_embedding is not None:
            grad_norm = self._grad_norm(model, float("inf"))
        return super()._get_grad_norm(model, grad_norm)

    def _coin(self) -> bool:
        """Whether this optimizer step is on-policy; a function of (seed, step), so a resumed run draws the same."""
        g = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.state.global_step)
        return bool(torch.rand((), generator=g) < self.on_policy)

    @torch.no_grad()
    def _student_samples(self, model, inputs):
        """GKD's on-policy batch: keep each row's first ``prompt_tokens`` and let the student sample the rest.

        The row keeps its length and every position stays a target (the prompt is real text the teacher
        scores too), so the accumulated token count the Trainer computed still holds.
        """
        ids = inputs["input_ids"]
        keep = min(self.prompt_tokens, ids.shape[1] - 1)
        new = ids.shape[1] - keep
        gen = self.accelerator.unwrap_model(model).generate(
            input_ids=ids[:, :keep], attention_mask=inputs["attention_mask"][:, :keep], do_sample=True,
            temperature=self.sample_temperature, top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
            pad_token_id=self.model.config.eos_token_id)
        return {**inputs, "input_ids": gen, "labels": gen, "attention_mask": torch.ones_like(gen)}

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimizer step and their target-token count, counted here for every model.

        transformers counts only for models that accept loss kwargs (others get ``None``: Qwen2.5-VL, Gemma-4,
        ...) and counts ``labels[..., 1:]`` only for its own causal-LM loss types; this loss predicts from every
        position whose next label is not -100, whatever the model, so the count is taken here the same way.
        """
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches or any("labels" not in b for b in batches):
            return batches, None
        count = sum((b["labels"][:, 1:] != -100).sum() for b in batches).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()  # compute_loss multiplies back by the process count
        return batches, count

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.on_policy and self._coin():
            inputs = self._student_samples(model, inputs)
        # Without the accumulated count the loss is this micro-batch's mean: let the Trainer divide it by the steps.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        return super().training_step(model, inputs, num_items_in_batch)

    def _teacher_view(self, inputs, fwd):
        """What the loss compares the student with at positions 0..T-2: logits, a TeacherTopK, or None."""
        if not self.needs_teacher:
            return None
        if "teacher_topk_ids" in inputs:
            temps = inputs["teacher_topk_temperature"].flatten().tolist()  # (B,): one per cached sequence
            if max(temps) - min(temps) > 1e-6 * max(temps):
                raise ValueError(f"one batch mixes teacher caches of temperatures {sorted(set(temps))}; rebuild the cache")
            top = TeacherTopK(inputs["teacher_topk_logprobs"], inputs["teacher_topk_ids"], inputs["teacher_topk_tail"],
                              temps[0])
            return top.positions(slice(None, -1))
        if self.teacher is None:
            raise ValueError(f"loss {self.loss_name!r} needs a teacher: give a teacher model or batches with a cached top-k")
        if "teacher_input_ids" in inputs:  # the teacher's own tokenization of the same text (uld, alm)
            t_ids, t_att = inputs["teacher_input_ids"], inputs["teacher_attention_mask"]
            with torch.no_grad(), self.accelerator.autocast():  # bf16 where the run's precision is (the teacher too)
                logits = self.teacher(input_ids=t_ids, attention_mask=t_att).logits[:, :-1]  # (B, Tt-1, Vt)
                if "teacher_chunk" in inputs:
                    lp = token_logprobs(logits, t_ids[:, 1:], self.loss_chunk)  # (B, Tt-1)
                    lp = torch.cat([lp.new_zeros((lp.shape[0], 1)), lp], 1)  # position 0: not predicted
                    return TeacherChunks(lp, inputs["teacher_chunk"], inputs["student_chunk"])
            return TeacherOtherVocab(logits, t_att[:, 1:].bool())
        with torch.no_grad(), self.accelerator.autocast():
            return self.teacher(**fwd).logits[:, :-1]  # (B, T-1, V)

    def _loss(self, s_logits, teacher, mask, targets):
        """(summed loss, counted positions) of student logits (B, t, V) against the teacher's view of them."""
        total, count = self.loss_fn(s_logits, teacher, mask, labels=targets, beta=self.beta,
                                    temperature=self.temperature, chunk=self.loss_chunk)
        if self.ce_weight and self.needs_teacher:
            ce, _ = cross_entropy_sum(s_logits, targets, mask, chunk=self.loss_chunk)
            total = (1 - self.ce_weight) * total + self.ce_weight * ce
        return total, count

    def _fused_loss(self, model, inputs, fwd, mask, targets):
        """The loss with the head applied per chunk of positions (``chunked_head_loss``); None when the model's logits
        are not its head applied to its last hidden state (then the caller takes the model's own logits)."""
        outputs = model(**fwd, output_hidden_states=True, logits_to_keep=1)
        hidden = outputs.hidden_states[-1]  # (B, T, H), after the final norm
        unwrapped = self.accelerator.unwrap_model(model)
        linear, cap = unwrapped.get_output_embeddings(), getattr(unwrapped.config, "final_logit_softcapping", None)
        # the head is used as its weight alone: a plain Linear without bias (a LoRA-wrapped or otherwise overridden
        # head would lose its extra term), and the model's own last-position logits check that it is what it computes
        plain = type(linear).forward is torch.nn.Linear.forward and getattr(linear, "bias", None) is None
        # the head runs under the forward's autocast (bf16 precision: accelerate wraps only model.forward in it), so its
        # products are the forward's and the check below compares like with like
        with torch.no_grad(), self.accelerator.autocast():
            same = plain and torch.allclose(capped(linear(hidden[:, -1:]), cap).float(), outputs.logits[:, -1:].float(),
                                            rtol=1e-4, atol=1e-4)
        if not same:
            log.warning("%s's logits are not its output head (a Linear without bias) applied to its last hidden state; "
                        "computing the loss from the full logits instead (more memory)", type(unwrapped).__name__)
            self.fused_head = False
            return None
        teacher, hidden = self._teacher_view(inputs, fwd), hidden[:, :-1]

        predicted = []  # the model's first choices at the counted positions, for a row gate

        def chunk_loss(pos, logits):
            part = teacher if teacher is None else (teacher.positions(pos) if isinstance(teacher, TeacherTopK)
                                                     else teacher[:, pos])
            if self.row_gate is not None:
                predicted.append(logits.detach().argmax(-1)[mask[:, pos]])
            return self._loss(logits, part, mask[:, pos], targets[:, pos])[0]

        chunk_grad = None
        if isinstance(teacher, TeacherTopK) and self.loss_name == "forward_kl" and not self.ce_weight:
            def chunk_grad(pos, logits):  # the top-k forward KL's closed-form gradient (chunk_loss's value)
                if self.row_gate is not None:
                    predicted.append(logits.argmax(-1)[mask[:, pos]])
                return topk_forward_kl_grad(logits, teacher.positions(pos), mask[:, pos], temperature=self.temperature)

        chunks = [p for p in (slice(s, s + self.loss_chunk) for s in range(0, hidden.shape[1], self.loss_chunk))
                  if mask[:, p].any()]
        with self.accelerator.autocast():
            total = chunked_head_loss(hidden, linear.weight, chunk_loss, chunks, cap, chunk_grad)
        return total, mask.sum(), outputs, torch.cat(predicted) if predicted else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]  # (B, T), -100 where nothing is predicted
        fwd = {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs}
        mask = labels[:, 1:] != -100  # position t predicts token t+1
        targets = labels[:, 1:].clamp_min(0)
        fused = self._fused_loss(model, inputs, fwd, mask, targets) if self.fused_head and not return_outputs else None
        if fused is not None:
            total, count, outputs, predicted = fused
        else:
            outputs = model(**fwd)
            total, count = self._loss(outputs.logits[:, :-1], self._teacher_view(inputs, fwd), mask, targets)
            predicted = outputs.logits[:, :-1].detach().argmax(-1)[mask] if self.row_gate is not None else None
        if self.row_gate is not None and model.training:
            self.row_gate.record(fwd["input_ids"], targets[mask], predicted)
        denom = num_items_in_batch if num_items_in_batch is not None else count
        step = self.state.global_step
        if int(denom) == 0:
            raise ValueError(f"step {step}: the batch has no target tokens (all positions masked or empty); "
                             "check the data and the prompt masking")
        loss = total / denom
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {step}: the {self.loss_name} loss is {loss.item()}; lower the learning rate or check "
                               "the models for NaN/Inf weights")
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, outputs) if return_outputs else loss
