"""The schemas of the training recipes: progressive stages, distillation and heal."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from xtok.config.common import DataConfig, LossName, Precision, Strict
from xtok.registry import LOSSES

LOSS_CHUNK = 16  # positions per chunk of the loss (distill and heal, and DistillTrainer's default)

DONOR_HELP = ("new_rows stages with map_lr: the model whose tokenizer the transplant gave (its embedding and head rows "
              "of the new tokens feed the map); default: the donor or teacher named in the student's xtok_provenance.json")
PRECISION_HELP = ("float32, or bf16 (autocast: products in bf16, the teacher's generations and top-k cache included; "
                  "weights, optimizer, softmax and losses in float32; fast on a GPU "
                  "and on CPUs with AMX or avx512_bf16, ~300x slower than float32 on AVX2-only CPUs), or auto (bf16 where it is fast)")


class StageConfig(Strict):
    """One stage of progressive fine-tuning."""

    train: Literal["embeddings", "new_rows", "full", "lora"] = Field(
        description="embeddings = input embeddings and head only; new_rows = only their rows a transplant made (needs "
                    "original); full = every weight; lora = peft adapters")
    steps: int = Field(ge=1, description="optimizer steps")
    learning_rate: float = Field(gt=0)
    scheduler: str = Field("cosine", description="a transformers lr_scheduler_type")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    row_spaces: list[Literal["input", "output"]] = Field(
        ["input", "output"], min_length=1, description="new_rows only: whose rows train (input embedding, head). "
        "Chosen on validation (bench/results/heal_head_rows.json, 36 ce steps): input and head rows 1.833 -> 1.769 "
        "bits per byte, input rows alone 1.833 -> 1.807; with head_rows all the head made every domain worse")
    head_rows: Literal["batch", "all"] = Field(
        "batch", description="new_rows only, where the head's rows train (row_spaces has output, or the head is tied "
        "to the input embedding): batch = a step moves only the head rows of tokens its batch holds (inputs and "
        "targets) or the model predicts first somewhere in it, with the gradient those rows get; their Adam moments "
        "move only then (lazy Adam), so a token the data never shows keeps its row; all = every trained row takes "
        "its softmax gradient at every step")
    map_lr: float | None = Field(None, gt=0, description="new_rows only: also train one linear map shared by every new "
                                 "row, from the donor's rows of the new tokens (row += donor row x map; "
                                 "xtok.distill.row_map), at this learning rate, so the rows of tokens the data never "
                                 "shows move too; null = off. The heal's default, 3e-4, was chosen on validation "
                                 "(bench/results/heal_map.json: 36 steps, overall 1.689 -> 1.595 with it, 1.647 without)")
    lora_rank: int = Field(16, ge=1, description="lora only")
    lora_alpha: int = Field(32, ge=1, description="lora only")
    lora_targets: str | list[str] = Field("all-linear", description="lora only: peft target_modules")

    @model_validator(mode="after")
    def _map_on_new_rows(self) -> StageConfig:
        if self.map_lr is not None and self.train != "new_rows":
            raise ValueError(f"map_lr trains a map of a transplant's new rows; a {self.train} stage has none: set it on "
                             "a new_rows stage, or remove it")
        return self


class TeacherCacheConfig(Strict):
    """Run the teacher once over the training sequences and keep its top-k log-probs (safetensors shards)."""

    top_k: int | None = Field(64, ge=1, description="None = run the teacher online at every step, full vocabulary")
    batch_size: int = Field(4, ge=1)


class GenerationsConfig(Strict):
    """Train on the teacher's own greedy continuations (on-policy data of the target, for a drafter): each packed block
    keeps its first ``prompt_tokens`` corpus tokens and the teacher writes the rest greedily (generated once, kept in
    the run folder)."""

    prompt_tokens: int = Field(64, ge=1, description="corpus tokens at the start of each block; the teacher continues "
                               "them to seq_len")
    batch_size: int = Field(8, ge=1, description="blocks the teacher continues per generate call")


class OnPolicyConfig(Strict):
    """GKD's on-policy mixing: with probability lmbda a batch is replaced by the student's own samples."""

    lmbda: float = Field(0.0, ge=0, le=1, description="probability of an on-policy batch (0 = off)")
    prompt_tokens: int = Field(64, ge=1, description="tokens of each sequence kept as the prompt")
    temperature: float = Field(1.0, gt=0, description="the student's sampling temperature")


class DistillConfig(Strict):
    """Token-level distillation of ``teacher`` into ``student`` (same vocabulary), in progressive stages."""

    recipe: Literal["distill"] = "distill"
    student: str = Field(description="a student that already has the teacher's tokenizer (xtok transplant)")
    teacher: str | None = Field(None, description="not needed for loss: ce")
    original: str | None = Field(None, description="the model the student was transplanted from: new_rows stages "
                                 "train the rows it lacks or the transplant changed")
    donor: str | None = Field(None, description=DONOR_HELP)
    out: str
    data: DataConfig = DataConfig(spec="bundled:train")
    seq_len: int = Field(256, ge=8, description="tokens per packed training sequence")
    max_sequences: int | None = Field(None, ge=1, description="use only the first N packed sequences")
    batch_size: int = Field(2, ge=1, description="sequences per device per micro-batch")
    grad_accum: int = Field(1, ge=1)
    loss: LossName = Field("forward_kl", description="a registered loss (xtok ls): forward_kl, reverse_kl, jsd, ce")
    beta: float = Field(0.5, ge=0, le=1, description="jsd only")
    temperature: float = Field(1.0, gt=0)
    ce_weight: float = Field(0.0, ge=0, le=1, description="mix of plain cross-entropy into the distillation loss")
    teacher_cache: TeacherCacheConfig = TeacherCacheConfig()
    on_policy: OnPolicyConfig = OnPolicyConfig()
    generations: GenerationsConfig | None = Field(None, description="train on the teacher's greedy continuations of "
                                                  "the data instead of the data itself (a drafter for that teacher)")
    stages: list[StageConfig] = Field(min_length=1)
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget of the run's training: a stage "
                                      "stops at it (its model is kept) and later stages are skipped; per "
                                      "invocation (a resumed run gets it again)")
    seed: int = 0
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps inside a stage (resume point)")
    report_to: list[str] = Field(default_factory=list, description="Trainer report_to, e.g. [tensorboard]")
    loss_chunk: int = Field(LOSS_CHUNK, ge=1, description="positions per chunk of the loss: its float32 copies are batch x "
                            "loss_chunk x vocab; about 32 rows (16 at batch 2) keep them in a CPU's cache, 2-3x faster "
                            "than 64 rows here")
    fused_head: bool = Field(True, description="apply the output head per loss chunk, taking the chunk's gradients "
                             "in the forward pass, so the (B, T, V) logits, their log-softmax and their gradient never "
                             "exist; nothing is recomputed (off: the model's own full logits; uld and alm always)")
    gradient_checkpointing: bool = Field(False, description="recompute each layer's activations in backward instead "
                                         "of keeping them (less memory, one more forward of the layers)")
    precision: Precision = Field("float32", description=PRECISION_HELP)
    overwrite: bool = False

    @model_validator(mode="after")
    def _teacher_given(self) -> DistillConfig:
        if LOSSES.meta(self.loss).get("needs_teacher", True) and not self.teacher:
            raise ValueError(f"loss {self.loss!r} needs a teacher; set teacher (or use loss: ce for plain cross-entropy)")
        if self.on_policy.lmbda and self.teacher_cache.top_k is not None:
            raise ValueError("on_policy.lmbda > 0 scores the student's samples with the teacher online; "
                             "set teacher_cache.top_k: null")
        if any(s.train == "new_rows" for s in self.stages) and not self.original:
            raise ValueError("a new_rows stage trains the rows a transplant made; set original (the model the student "
                             "was transplanted from)")
        if self.generations is not None:
            meta = LOSSES.meta(self.loss)
            if not meta.get("needs_teacher", True) or not meta.get("same_vocab", True):
                raise ValueError(f"generations are the teacher's continuations in the shared vocabulary; loss "
                                 f"{self.loss!r} has no such teacher: use forward_kl, reverse_kl or jsd")
            if self.generations.prompt_tokens >= self.seq_len:
                raise ValueError(f"generations.prompt_tokens={self.generations.prompt_tokens} leaves the teacher nothing "
                                 f"to write in blocks of seq_len={self.seq_len}; make it smaller than seq_len")
        if self.on_policy.lmbda and not LOSSES.meta(self.loss).get("same_vocab", True):
            raise ValueError(f"on-policy batches are not supported with loss {self.loss!r}; set on_policy.lmbda: 0")
        return self


class HealConfig(Strict):
    """Heal a transplant: ``original`` (the student with its own tokenizer) teaches its transplanted copy ``model``
    across the two tokenizations of the same text (``alm``), or the copy learns the text itself (``ce``)."""

    recipe: Literal["heal"] = "heal"
    model: str = Field(description="the transplanted model (xtok transplant's output)")
    original: str = Field(description="the model it was transplanted from, with its own tokenizer")
    donor: str | None = Field(None, description=DONOR_HELP)
    out: str
    data: DataConfig = DataConfig(spec="bundled:train")
    loss: LossName = Field("ce", description="ce (next-token cross-entropy on the text, TokAlign's stage 1) or alm "
                           "(the original's chunk likelihoods); ce was chosen on validation text "
                           "(bench/results/heal.json: level with alm within noise, 10% faster)")
    temperature: float = Field(1.0, gt=0, description="alm: divides the chunk log-probabilities")
    ce_weight: float = Field(0.0, ge=0, le=1, description="alm: mix of plain cross-entropy into the loss")
    seq_len: int = Field(256, ge=8)
    max_sequences: int | None = Field(None, ge=1)
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(2, ge=1)
    stages: list[StageConfig] = Field(default_factory=lambda: [StageConfig(
        train="new_rows", steps=200, learning_rate=1e-3, scheduler="constant_with_warmup", warmup_ratio=0.05,
        map_lr=3e-4)], min_length=1)
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget of the training")
    curve_data: DataConfig | None = Field(None, description="held-out text scored (bits per byte per domain) at the "
                                          "start and every curve_steps steps: the curve in heal_curve.json")
    curve_steps: int = Field(50, ge=1)
    seed: int = 0
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(50, ge=1)
    loss_chunk: int = Field(LOSS_CHUNK, ge=1)
    fused_head: bool = Field(True, description="ce: the head per loss chunk (less memory); off: the full logits, "
                             "faster under bf16 on an AMX CPU (README, Distillation: precision)")
    precision: Precision = Field("float32", description=PRECISION_HELP)
    overwrite: bool = False

    @model_validator(mode="after")
    def _loss_reads_two_tokenizations(self) -> HealConfig:
        meta = LOSSES.meta(self.loss)
        if meta.get("needs_teacher", True) and meta.get("same_vocab", True):
            raise ValueError(f"loss {self.loss!r} needs a teacher with the model's vocabulary; the original has its "
                             "own tokenizer: use loss alm (or ce, which needs no teacher)")
        return self

    def distill_config(self) -> DistillConfig:
        """The distill job that runs this heal."""
        teacher = self.original if LOSSES.meta(self.loss).get("needs_teacher", True) else None
        return DistillConfig(student=self.model, teacher=teacher, original=self.original, donor=self.donor, out=self.out,
                             data=self.data,
                             seq_len=self.seq_len, max_sequences=self.max_sequences, batch_size=self.batch_size,
                             grad_accum=self.grad_accum, loss=self.loss, temperature=self.temperature,
                             ce_weight=self.ce_weight, teacher_cache=TeacherCacheConfig(top_k=None), stages=self.stages,
                             max_minutes=self.max_minutes, seed=self.seed, logging_steps=self.logging_steps,
                             save_steps=self.save_steps, loss_chunk=self.loss_chunk, fused_head=self.fused_head,
                             precision=self.precision, overwrite=self.overwrite)
