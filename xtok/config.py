"""The pydantic schema of every recipe config (extra="forbid").

Every YAML names its recipe (``recipe: eval``); ``xtok.configfile.load_config`` validates it into that
recipe's model, so a typo in a key is an error, not a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from xtok import registry as registries  # imports nothing else of xtok: the modules filling it load on first use
from xtok.registry import LOSSES, check_methods

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"  # package data: shipped in the wheel
DType = Literal["float32", "bfloat16"]


def _registered(registry: str) -> AfterValidator:
    """A field holding a name from one of ``xtok.registry``'s registries (checked on validation, loaded lazily)."""

    def check(v: str | None) -> str | None:
        if v is not None:
            getattr(registries, registry).get(v)
        return v

    return AfterValidator(check)


InitMethod = Annotated[str, _registered("INIT_METHODS")]
LossName = Annotated[str, _registered("LOSSES")]
DraftBackend = Annotated[str, _registered("DRAFT_BACKENDS")]
EnsembleMode = Annotated[str, _registered("ENSEMBLE_MODES")]
Embedder = Annotated[str, _registered("EMBEDDERS")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    """Which documents: bundled:eval, bundled:train, a jsonl/txt file or folder, or a hub dataset."""

    spec: str = "bundled:eval"
    domains: list[str] | None = None
    max_docs_per_domain: int | None = Field(None, ge=1)
    max_chars_per_doc: int | None = Field(None, ge=1)


class EvalSettings(Strict):
    window: int = Field(1024, ge=2, description="positions per forward window")
    overlap: int = Field(256, ge=0, description="context carried between windows of a long document")
    batch_tokens: int | None = Field(None, ge=2, description="padded tokens per forward batch (default: 8192, or one "
                                     "window where the window is longer)")
    dtype: DType = "float32"
    numbers: bool = Field(True, description="add digit-splitting diagnostics")

    @model_validator(mode="after")
    def _overlap_fits(self) -> EvalSettings:
        if self.overlap >= self.window:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than window ({self.window})")
        if self.batch_tokens is not None and self.batch_tokens < self.window:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must be at least the window ({self.window}); raise "
                             "it (--batch-tokens), or leave it out to follow the window")
        return self

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_tokens or max(8192, self.window)


class AgreementSettings(Strict):
    """Greedy agreement with ``against``: prompts from the eval data's documents, continued by both models."""

    prompts: int = Field(8, ge=1, description="documents whose beginnings are the prompts, domains in turn")
    prompt_chars: int = Field(256, ge=1)
    max_new_tokens: int = Field(32, ge=1)


class EvalConfig(Strict):
    recipe: Literal["eval"] = "eval"
    models: list[str] = Field(min_length=1)
    data: DataConfig = DataConfig()
    eval: EvalSettings = EvalSettings()
    against: str | None = Field(None, description="also compare each model's greedy continuations with this "
                                "model's (the original), in bytes")
    agreement: AgreementSettings = AgreementSettings()


class TransplantConfig(Strict):
    """Give ``student`` the tokenizer of ``teacher``; new tokens by ``method`` (see ``xtok ls``)."""

    recipe: Literal["transplant"] = "transplant"
    student: str
    teacher: str
    out: str | None = None
    method: InitMethod = "omp"
    head_method: InitMethod | None = Field("subword-prior", description="init of the output head (None = method); a "
                                           "tied student whose two methods differ is untied")
    # Defaults from bench/results/transplant.json (holdout rebuild of hidden shared tokens and bits per byte on
    # SmolLM2 <- Qwen2.5): k=8 beats k=64, which overfits; 128 candidates lose nothing there and run ~4x faster.
    k: int = Field(8, ge=1, description="OMP sparsity: anchors per new token")
    candidates: int | None = Field(128, ge=1, description="OMP: search only each token's m most correlated anchors")
    exact: bool = Field(False, description="OMP over all anchors (ignores candidates)")
    chunk: int = Field(1024, ge=1, description="new tokens per OMP step; bounds peak memory")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    teacher_tokenizer_only: bool = Field(False, description="use only the teacher's tokenizer, not its embeddings")
    alignment: str | None = Field(None, description="an xtok align output folder, for tokalign / tokalign+omp")
    calibration_data: str = Field("bundled:train", description="text run through both models by methods that "
                                  "calibrate (subword-prior)")
    calibration_tokens: int = Field(2048, ge=1, description="positions of calibration text per model")
    head_fit_tokens: int = Field(0, ge=0, description="positions of calibration_data the head is fitted on (0: off)")
    head_fit_l2: float = Field(0.1, gt=0, description="head fit: pull of each fitted row to its transplanted row")
    head_fit_iterations: int = Field(30, ge=1, description="head fit: L-BFGS iterations")
    overwrite: bool = False

    @model_validator(mode="after")
    def _methods_fit(self) -> TransplantConfig:
        check_methods(self.method, self.head_method, teacher_model=not self.teacher_tokenizer_only,
                      alignment=self.alignment is not None)  # the alignment's fallback is checked once it is loaded
        return self


class DraftCheckConfig(Strict):
    """How good a drafter ``drafter`` is for ``target``: acceptance, speed-up, losslessness."""

    recipe: Literal["draft_check"] = "draft_check"
    target: str
    drafter: str
    prompts: str = Field("bundled:eval", description="documents whose beginnings are the prompts (held-out eval by default)")
    num_prompts: int = Field(8, ge=1)
    prompt_chars: int = Field(256, ge=1, description="characters of each document used as its prompt")
    k: int = Field(4, ge=1, description="draft tokens per round")
    max_new_tokens: int = Field(64, ge=1)
    backend: DraftBackend = Field("hf", description="hf (transformers assisted generation) or vllm (needs the vllm extra)")
    cross_tokenizer: bool = Field(False, description="baseline: the drafter keeps its own tokenizer (hf: Universal "
                                  "Assisted Generation, vllm: use_heterogeneous_vocab)")
    draft_vocab: int = Field(0, ge=0, description="hf: score only the N tokens most frequent in draft_vocab_corpus; 0 = all")
    draft_vocab_corpus: str = "bundled:train"
    dtype: DType = "float32"
    out: str | None = None

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
        ["input"], min_length=1, description="new_rows only: whose rows train. The head's rows take a softmax gradient "
        "at every position, so under Adam each new token's head row moves by about the learning rate per step even "
        "where the data never shows the token: measured, healing the head too made every domain worse")
    lora_rank: int = Field(16, ge=1, description="lora only")
    lora_alpha: int = Field(32, ge=1, description="lora only")
    lora_targets: str | list[str] = Field("all-linear", description="lora only: peft target_modules")


class TeacherCacheConfig(Strict):
    """Run the teacher once over the training sequences and keep its top-k log-probs (safetensors shards)."""

    top_k: int | None = Field(64, ge=1, description="None = run the teacher online at every step, full vocabulary")
    batch_size: int = Field(4, ge=1)


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
    stages: list[StageConfig] = Field(min_length=1)
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget of the run's training: a stage "
                                      "stops at it (its model is kept) and later stages are skipped; per "
                                      "invocation (a resumed run gets it again)")
    seed: int = 0
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps inside a stage (resume point)")
    report_to: list[str] = Field(default_factory=list, description="Trainer report_to, e.g. [tensorboard]")
    loss_chunk: int = Field(128, ge=1, description="positions per chunk of the loss (bounds the float32 copies)")
    fused_head: bool = Field(False, description="apply the output head per loss chunk, recomputed in backward, so "
                             "the (B, T, V) logits never exist (for large batch x sequence x vocab; one more head pass; "
                             "not for uld)")
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
        if self.on_policy.lmbda and not LOSSES.meta(self.loss).get("same_vocab", True):
            raise ValueError(f"on-policy batches are not supported with loss {self.loss!r}; set on_policy.lmbda: 0")
        return self


class HealConfig(Strict):
    """Heal a transplant: ``original`` (the student with its own tokenizer) teaches its transplanted copy ``model``
    across the two tokenizations of the same text (``alm``), or the copy learns the text itself (``ce``)."""

    recipe: Literal["heal"] = "heal"
    model: str = Field(description="the transplanted model (xtok transplant's output)")
    original: str = Field(description="the model it was transplanted from, with its own tokenizer")
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
        train="new_rows", steps=200, learning_rate=1e-3, scheduler="constant_with_warmup", warmup_ratio=0.05)],
        min_length=1)
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget of the training")
    curve_data: DataConfig | None = Field(None, description="held-out text scored (bits per byte per domain) at the "
                                          "start and every curve_steps steps: the curve in heal_curve.json")
    curve_steps: int = Field(50, ge=1)
    seed: int = 0
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(50, ge=1)
    loss_chunk: int = Field(128, ge=1)
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
        return DistillConfig(student=self.model, teacher=teacher, original=self.original, out=self.out, data=self.data,
                             seq_len=self.seq_len, max_sequences=self.max_sequences, batch_size=self.batch_size,
                             grad_accum=self.grad_accum, loss=self.loss, temperature=self.temperature,
                             ce_weight=self.ce_weight, teacher_cache=TeacherCacheConfig(top_k=None), stages=self.stages,
                             max_minutes=self.max_minutes, seed=self.seed, logging_steps=self.logging_steps,
                             save_steps=self.save_steps, loss_chunk=self.loss_chunk, overwrite=self.overwrite)


class EnsembleConfig(Strict):
    """Score (and sample from) a mixture of models that share one vocabulary, against each member."""

    recipe: Literal["ensemble"] = "ensemble"
    models: list[str] = Field(min_length=2)
    weights: list[float] | None = Field(None, description="one per model (normalized); default equal")
    mode: EnsembleMode = Field("prob", description="prob (mixture of probabilities) or logprob (product of experts)")
    data: DataConfig = DataConfig()
    eval: EvalSettings = EvalSettings()
    prompt: str | None = Field(None, description="also generate greedily from this prompt")
    max_new_tokens: int = Field(48, ge=1)
    out: str | None = None

    @model_validator(mode="after")
    def _one_weight_each(self) -> EnsembleConfig:
        from xtok.ensemble.mix import normalized_weights

        normalized_weights(self.weights, len(self.models))
        return self


class EndToEndDraftCheck(Strict):
    """The drafter checks of an end-to-end run: every drafter at every k, on each backend (vllm where installed)."""

    k: list[int] = Field([2, 4], min_length=1)
    num_prompts: int = Field(4, ge=1)
    prompt_chars: int = Field(256, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    backends: list[DraftBackend] = Field(["hf"], min_length=1)
    cross_tokenizer_baseline: bool = Field(True, description="also the untouched student drafting across tokenizers")


class EndToEndConfig(Strict):
    """Transplant -> eval -> [heal -> eval] -> progressive distillation -> eval -> drafter check -> report.md,
    resumable stage by stage.

    ``transplant``, ``heal`` and ``distill`` hold the settings of those recipes' configs without student, teacher,
    model, original and out, which the run fills in; they are validated by those recipes' schemas.
    """

    recipe: Literal["end_to_end"] = "end_to_end"
    student: str
    teacher: str
    out: str
    transplant: dict[str, Any] = Field(default_factory=dict)
    heal: dict[str, Any] | None = Field(None, description="heal settings (a heal config without model, original, "
                                        "out): the transplant is healed before it is distilled; None = no heal")
    distill: dict[str, Any]
    eval_data: DataConfig = DataConfig(max_docs_per_domain=3, max_chars_per_doc=3000)
    eval: EvalSettings = EvalSettings()
    draft_check: EndToEndDraftCheck = EndToEndDraftCheck()

    def transplant_config(self, out: str) -> TransplantConfig:
        return TransplantConfig.model_validate({**self.transplant, "student": self.student, "teacher": self.teacher,
                                                "out": out, "overwrite": True})

    def heal_config(self, model: str, out: str) -> HealConfig:
        return HealConfig.model_validate({**(self.heal or {}), "model": model, "original": self.student, "out": out})

    def distill_config(self, student: str, out: str) -> DistillConfig:
        return DistillConfig.model_validate({**self.distill, "student": student, "teacher": self.teacher, "out": out})

    @model_validator(mode="after")
    def _sections_valid(self) -> EndToEndConfig:
        for key in ("student", "teacher", "out", "recipe", "model", "original"):
            for name, section in (("transplant", self.transplant), ("heal", self.heal or {}), ("distill", self.distill)):
                if key in section:
                    raise ValueError(f"{name}.{key} is set by the end-to-end run; remove it from the {name} section")
        builds = [("transplant", lambda: self.transplant_config("<out>/transplant")),
                  ("distill", lambda: self.distill_config("<out>/transplant", "<out>/distill"))]
        if self.heal is not None:
            builds.append(("heal", lambda: self.heal_config("<out>/transplant", "<out>/heal")))
        for name, build in builds:
            try:
                build()
            except ValidationError as exc:
                raise ValueError(f"the {name} section is not a valid {name} config: {exc}") from None
        return self


class AlignConfig(Strict):
    """TokAlign: map every ``target`` token to a ``source`` token from co-occurrence vectors on ``data``."""

    recipe: Literal["align"] = "align"
    source: str = Field(description="the model (or tokenizer) whose rows are rearranged: the student")
    target: str = Field(description="the tokenizer (or model) to align to: the teacher")
    data: DataConfig = DataConfig(spec="bundled:train")
    out: str | None = None
    # GloVe's window/min count/dims as TokAlign runs them; the rest measured in bench/results/align.json (holdout).
    embedding: Embedder = Field("ppmi-svd", description="co-occurrence embedding (xtok ls): ppmi-svd or glove")
    dims: int = Field(300, ge=2, description="vector dimensions")
    window: int = Field(15, ge=1, description="co-occurrence window (tokens each side, weight 1/distance)")
    min_count: int = Field(5, ge=1, description="tokens seen fewer times get no vector (and the fallback init)")
    pivots: int | None = Field(None, ge=1, description="most frequent shared tokens used as pivots (at least dims; "
                               "None = every shared token with a vector)")
    svd_power: float = Field(0.0, description="ppmi-svd vectors are U * S^svd_power (0 mapped best)")
    holdout: float = Field(0.1, ge=0, lt=1, description="share of shared tokens hidden from the pivots in the quality report")
    glove_iters: int = Field(15, ge=1)
    glove_x_max: float = Field(10.0, gt=0)
    glove_lr: float = Field(0.05, gt=0)
    chunk: int = Field(1024, ge=1, description="target tokens per mapping step; bounds peak memory")
    fallback: InitMethod = Field("subword", description="init of target tokens with no vector (not tokalign*)")
    apply: bool = Field(False, description="also write the source model speaking the target tokenizer into out/model")
    method: InitMethod = Field("tokalign", description="init of new input rows when applying")
    head_method: InitMethod | None = Field("subword-prior", description="init of new head rows when applying (None = "
                                           "method); subword-prior takes its prior from the alignment's corpus counts")
    k: int = Field(8, ge=1, description="OMP sparsity for tokalign+omp / omp")
    candidates: int | None = Field(128, ge=1)
    seed: int = 0
    overwrite: bool = False

    @model_validator(mode="after")
    def _pivots_cover_dims(self) -> AlignConfig:
        if self.pivots is not None and self.pivots < self.dims:
            raise ValueError(f"pivots ({self.pivots}) must be at least dims ({self.dims}); raise pivots or lower dims")
        check_methods(self.method, self.head_method, alignment=True, fallback=self.fallback)
        return self


RECIPE_SCHEMAS: dict[str, type[Strict]] = {"eval": EvalConfig, "transplant": TransplantConfig, "draft_check": DraftCheckConfig,
                                           "distill": DistillConfig, "ensemble": EnsembleConfig, "end_to_end": EndToEndConfig,
                                           "align": AlignConfig, "heal": HealConfig}
