"""The schemas of the other recipes: eval, transplant, draft check, ensemble, align and the end-to-end run."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from xtok.config.common import (
    AgreementSettings,
    DataConfig,
    DraftBackend,
    DType,
    Embedder,
    EnsembleMode,
    EvalSettings,
    InitMethod,
    Precision,
    Strict,
)
from xtok.config.training import PRECISION_HELP, DistillConfig, HealConfig
from xtok.registry import check_methods


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
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "OMP correlation product dtype. Candidate search: bf16 screens, float32 rescores 64 more atoms (the float32 "
        "screen's candidates for all but 12 of the default pair's 112,699 tokens); auto takes bf16 where it is fast. "
        "Exact OMP: auto is float32; bfloat16 approximates its choices"))
    out_dtype: Literal["source", "float32", "bfloat16", "float16"] = Field(
        "source", description="dtype the transplant is written in (source: the student's stored dtype)")
    teacher_tokenizer_only: bool = Field(False, description="use only the teacher's tokenizer, not its embeddings")
    alignment: str | None = Field(None, description="an xtok align output folder, for tokalign / tokalign+omp")
    calibration_data: str = Field("bundled:train", description="text run through both models by methods that "
                                  "calibrate (subword-prior)")
    calibration_tokens: int = Field(2048, ge=1, description="positions of calibration text per model")
    calibration_precision: Precision = Field("float32", description="the calibration's forward passes: " + PRECISION_HELP)
    head_context: float = Field(0.0, ge=0, description="subword-prior: weight of the context term, the teacher's "
                                "in-family preference at each position read through a linear map of the student's "
                                "hidden state (0: off; 1: its first-order value)")
    # cap, chosen on validation (bench/results/row_norms*.json): on Gemma-3 <- Qwen2.5 it gains 0.4% overall (eval
    # multilingual x2.48 -> x1.96); on SmolLM2 <- Qwen2.5 it moves 3 rows; clamp's extra 0.2% there is not on eval.
    row_norms: Literal["keep", "cap", "clamp"] = Field(
        "cap", description="new rows' norms held to the student's own range (xtok.transplant.norms): keep, cap (shorten "
        "rows longer than the shared rows' 99.9% quantile), clamp (also lengthen those shorter than the 0.1% one)")
    head_fit_tokens: int = Field(0, ge=0, description="positions of calibration_data the head is fitted on (0: off)")
    head_fit_l2: float = Field(0.1, gt=0, description="head fit: pull of each fitted row to its transplanted row")
    head_fit_iterations: int = Field(30, ge=1, description="head fit: L-BFGS iterations")
    head_fit_teacher_weight: float = Field(0.0, ge=0, le=1, description="head fit: the teacher's share of the targets "
                                           "(its top-k next-token distribution; 0: the text's next tokens only)")
    head_fit_top_k: int = Field(8, ge=1, description="head fit: the teacher's tokens per position in the targets")
    head_fit_share_map: Literal["off", "seen", "all"] = Field(
        "off", description="head fit: first fit one map from the teacher's head rows to in-family shares (the "
        "teacher's), moving every member's row of the families the fit text reaches (seen) or of every family (all)")
    safety_z: float = Field(15.0, gt=0, description="safety scan: robust z-score against shared tokens past which a "
                            "new OMP row is flagged as a possibly planted code")
    max_coef_norm: float | None = Field(None, ge=1, description="refuse the transplant if a new row's OMP coefficient "
                                        "norm (sum |c_i| |a_i| / |x|, 1 = no cancellation) exceeds this")
    overwrite: bool = False

    @model_validator(mode="after")
    def _methods_fit(self) -> TransplantConfig:
        check_methods(self.method, self.head_method, teacher_model=not self.teacher_tokenizer_only,
                      alignment=self.alignment is not None)  # the alignment's fallback is checked once it is loaded
        if self.head_fit_teacher_weight > 0 and (self.teacher_tokenizer_only or not self.head_fit_tokens):
            raise ValueError(f"head_fit_teacher_weight={self.head_fit_teacher_weight} needs a head fit "
                             f"(head_fit_tokens > 0, given {self.head_fit_tokens}) and the teacher model "
                             f"(teacher_tokenizer_only is {self.teacher_tokenizer_only}); set both or leave it at 0")
        if self.head_fit_share_map != "off" and (self.teacher_tokenizer_only or not self.head_fit_tokens):
            raise ValueError(f"head_fit_share_map needs a head fit (head_fit_tokens > 0, given {self.head_fit_tokens}) "
                             f"and the teacher model (teacher_tokenizer_only is {self.teacher_tokenizer_only}); set "
                             "both or leave it off")
        if self.head_context > 0 and (self.teacher_tokenizer_only or (self.head_method or self.method) != "subword-prior"):
            raise ValueError(f"head_context={self.head_context} is a term of the subword-prior head and reads the teacher "
                             f"model's head (head method {self.head_method or self.method!r}, teacher_tokenizer_only "
                             f"{self.teacher_tokenizer_only}); use --head-method subword-prior with a teacher model, or "
                             "leave head_context at 0")
        return self


class DraftCheckConfig(Strict):
    """How good a drafter ``drafter`` is for ``target``: acceptance, speed-up, losslessness."""

    recipe: Literal["draft_check"] = "draft_check"
    target: str
    drafter: str
    prompts: str = Field("bundled:eval", description="documents whose beginnings are the prompts (held-out eval by default)")
    prompt_domains: list[str] | None = Field(None, description="only documents of these domains (e.g. [code]); all by default")
    num_prompts: int = Field(8, ge=1)
    prompt_chars: int = Field(256, ge=1, description="characters of each document used as its prompt")
    k: int = Field(4, ge=1, description="draft tokens per round")
    max_new_tokens: int = Field(64, ge=1)
    backend: DraftBackend = Field("hf", description="hf (transformers assisted generation) or vllm (needs the vllm extra)")
    cross_tokenizer: bool = Field(False, description="baseline: the drafter keeps its own tokenizer (hf: Universal "
                                  "Assisted Generation, vllm: use_heterogeneous_vocab)")
    draft_vocab: int = Field(0, ge=0, description="the drafter scores only the N target tokens most frequent in "
                             "draft_vocab_corpus (FR-Spec; both backends, not with cross_tokenizer); 0 = its full head")
    draft_vocab_corpus: str = "bundled:train"
    dtype: DType = "float32"
    out: str | None = None

    @model_validator(mode="after")
    def _draft_vocab_backend(self) -> DraftCheckConfig:
        if self.draft_vocab and self.cross_tokenizer:
            raise ValueError(f"draft_vocab={self.draft_vocab} needs the drafter on the target's tokenizer, and "
                             "cross_tokenizer is set; set draft_vocab to 0 or cross_tokenizer to false")
        return self


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
        return HealConfig.model_validate({"donor": self.teacher, **(self.heal or {}), "model": model,
                                          "original": self.student, "out": out})

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
