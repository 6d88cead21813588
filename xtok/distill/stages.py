"""Progressive fine-tuning: which parameters each stage trains.

Stage 1 trains only the input embeddings and the output head, found through
``get_input_embeddings()`` / ``get_output_embeddings()`` (never by parameter names: a substring
match is how TokAlign's stage 1 froze the Llama head by accident); tied weights count once.
Stage 2 trains everything, or LoRA adapters (peft) that are merged back when the stage ends.
"""

from __future__ import annotations

import torch

STAGES = ("embeddings", "full", "lora")


def embedding_parameters(model) -> list[torch.nn.Parameter]:
    params = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and all(out.weight is not p for p in params):
        params.append(out.weight)
    return params


def select_trainable(model, stage: str) -> list[str]:
    """Set ``requires_grad`` for ``stage`` (in place, that is the point) and return the trainable names.

    ``lora`` is not a selection of existing weights: use ``with_lora`` for it.
    """
    if stage not in ("embeddings", "full"):
        raise ValueError(f"unknown stage {stage!r} for select_trainable; use embeddings or full (lora: with_lora)")
    keep = {id(p) for p in embedding_parameters(model)} if stage == "embeddings" else None
    names = []
    for name, p in model.named_parameters():  # named_parameters lists a tied tensor once
        p.requires_grad_(keep is None or id(p) in keep)
        if p.requires_grad:
            names.append(name)
    return names


def with_lora(model, rank: int, alpha: int, targets: str | list[str]):
    """Wrap ``model`` in peft LoRA adapters (base weights frozen); ``merge_lora`` folds them back after training."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def merge_lora(model):
    """The plain model with trained adapters merged in; a model without adapters is returned as is."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def prepare_stage(model, stage) -> tuple[object, list[str]]:
    """The model to train in ``stage`` (a StageConfig) and the names of its trainable parameters."""
    if stage.train == "lora":
        model = with_lora(model, stage.lora_rank, stage.lora_alpha, stage.lora_targets)
        return model, [n for n, p in model.named_parameters() if p.requires_grad]
    return model, select_trainable(model, stage.train)
