"""Progressive fine-tuning: which parameters each stage trains.

Stage 1 trains only the input embeddings and the output head, found through
``get_input_embeddings()`` / ``get_output_embeddings()`` (never by parameter names: a substring
match is how TokAlign's stage 1 froze the Llama head by accident); tied weights count once.
Stage 2 trains everything.
"""

from __future__ import annotations

import torch

STAGES = ("embeddings", "full")


def embedding_parameters(model) -> list[torch.nn.Parameter]:
    params = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and all(out.weight is not p for p in params):
        params.append(out.weight)
    return params


def select_trainable(model, stage: str) -> list[str]:
    """Set ``requires_grad`` for ``stage`` (in place, that is the point) and return the trainable names."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    keep = {id(p) for p in embedding_parameters(model)} if stage == "embeddings" else None
    names = []
    for name, p in model.named_parameters():  # named_parameters lists a tied tensor once
        p.requires_grad_(keep is None or id(p) in keep)
        if p.requires_grad:
            names.append(name)
    return names
