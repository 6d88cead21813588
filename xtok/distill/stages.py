"""Progressive fine-tuning: which parameters each stage trains.

Stage 1 trains only the input embeddings and the output head, found through
``get_input_embeddings()`` / ``get_output_embeddings()`` (never by parameter names: a substring
match is how TokAlign's stage 1 froze the Llama head by accident); tied weights count once.
Stage 2 trains everything, or LoRA adapters (peft) that are merged back when the stage ends.
A ``new_rows`` stage (healing a transplant) trains only the rows the transplant made, of the input
embeddings (default) and/or the head (``row_spaces``): the rows of tokens the original model lacks, and the
shared rows it changed; the other rows' gradients are zeroed and ``RowAdam`` keeps moments for the trained rows
only, so the other rows stay exactly as they are (its weight decay must be 0). Where the head's rows train, by
default (``head_rows: batch``) a step moves only those of tokens its batch holds or the model predicts first: the
softmax gradient reaches every row, and Adam would move each new row by about the learning rate per step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from xtok.distill.row_map import DonorMap, donor_maps

STAGES = ("embeddings", "new_rows", "full", "lora")
SPACES = (("input", "get_input_embeddings"), ("output", "get_output_embeddings"))  # a space, its accessor


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


def changed_rows(model, original, tmap) -> dict[str, torch.Tensor]:
    """Per space ("input", "output"), a bool mask over ``model``'s rows: the tokens of its tokenizer that the
    original's lacks (``tmap``: ``build_token_map(model's tokenizer, original's)``, byte-canonical), and the shared
    tokens whose row differs from the original's. Rows past the tokenizer (padding) stay False."""
    out = {}
    for space, get in SPACES:
        mine, theirs = getattr(model, get)(), getattr(original, get)()
        if mine is None or theirs is None:
            continue
        w, w0 = mine.weight.detach(), theirs.weight.detach()
        mask = torch.zeros(w.shape[0], dtype=torch.bool)
        new = tmap.new_teacher_ids
        mask[new[new < w.shape[0]]] = True
        shared = tmap.shared_teacher_ids
        shared = shared[shared < w.shape[0]]
        mask[shared] = (w[shared].float() != w0[tmap.student_of[shared]].float()).any(1)
        out[space] = mask
    return out


class BatchRows:
    """The head rows one micro-batch may move (``head_rows: batch``): the tokens it holds (inputs and targets) and
    the model's first choices at its target positions. ``record`` is called in the loss, before the backward that
    reads ``mask`` in the head's gradient hook; each micro-batch's gradient is gated by its own rows."""

    def __init__(self, vocab: int):
        self.vocab, self.mask = vocab, None

    def record(self, input_ids: torch.Tensor, targets: torch.Tensor, predicted: torch.Tensor | None = None) -> None:
        """``targets`` and ``predicted``: the ids at the positions that count (flat or any shape)."""
        mask = torch.zeros(self.vocab, dtype=torch.bool, device=input_ids.device)
        for ids in (input_ids, targets, predicted):
            if ids is not None:
                ids = ids.reshape(-1)
                mask[ids[(ids >= 0) & (ids < self.vocab)]] = True
        self.mask = mask

    def gate(self, g: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            raise RuntimeError("head_rows: batch needs the loss to record the batch's rows before backward "
                               "(DistillTrainer with row_gate)")
        return g * self.mask[:, None].to(g.device, g.dtype)


def restrict_rows(model, rows: dict[str, torch.Tensor],
                  gate: BatchRows | None = None) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Zero the gradient of every embedding and head row not in ``rows`` (masks from ``changed_rows``); a tied
    matrix trains the union of its two masks (the gradient norm, and so clipping, sees only the trained rows).
    With ``gate``, the head's matrix (tied or not) is also gated by the rows its micro-batch recorded.
    Returns each matrix with the ids of its rows that train, for ``RowAdam``."""
    masks = _row_masks(model, rows)
    head = model.get_output_embeddings()
    for p, mask in masks.values():
        keep = mask[:, None]
        if gate is not None and head is not None and head.weight is p:
            p.register_hook(lambda g, keep=keep: gate.gate(g * keep.to(g.device, g.dtype)))
        else:
            p.register_hook(lambda g, keep=keep: g * keep.to(g.device, g.dtype))  # the Trainer moves the model later
    return [(p, mask.nonzero()[:, 0]) for p, mask in masks.values()]


def _row_masks(model, rows: dict[str, torch.Tensor]) -> dict[int, tuple[torch.nn.Parameter, torch.Tensor]]:
    """One row mask per distinct embedding matrix (a tied one gets the union of its spaces' masks)."""
    masks: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
    for space, get in SPACES:
        module = getattr(model, get)()
        if module is None or space not in rows:
            continue
        p = module.weight
        if rows[space].shape[0] != p.shape[0]:
            raise ValueError(f"a {space} row mask of {rows[space].shape[0]} rows for a matrix of {p.shape[0]}; give the "
                             "model the masks were computed for (changed_rows of this student and its original)")
        prev = masks.get(id(p), (p, torch.zeros_like(rows[space])))[1]
        masks[id(p)] = (p, prev | rows[space])
    return masks


class StageSetup(NamedTuple):
    """What ``prepare_stage`` sets up: the model to train, the names of its trainable parameters, how many parameters
    train (a ``new_rows`` stage: its rows' entries, and its maps'), and for a ``new_rows`` stage each matrix with its
    trained row ids (for ``RowAdam``), the ``BatchRows`` gate the loss must feed where head rows train under
    ``head_rows: batch``, and the ``DonorMap``s of ``map_lr`` (None, None, [] for the other stages)."""

    model: object
    names: list[str]
    parameters: int
    trained_rows: list | None
    gate: BatchRows | None
    maps: list[DonorMap]


def prepare_stage(model, stage, rows: dict[str, torch.Tensor] | None = None,
                  donor: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None) -> StageSetup:
    """Set ``model`` up for ``stage`` (a StageConfig). A ``new_rows`` stage needs the ``rows`` masks from
    ``changed_rows``, and with ``map_lr`` the ``donor``: the new tokens' ids and the donor's rows of them by space
    (``xtok.distill.run.donor_rows``)."""
    if stage.train == "new_rows":
        if rows is None:
            raise ValueError("a new_rows stage trains the rows a transplant made: set original (the model it was "
                             "transplanted from) so they can be found")
        if stage.weight_decay:
            raise ValueError(f"weight_decay={stage.weight_decay} would move the frozen rows of a new_rows stage; set 0")
        names = select_trainable(model, "embeddings")
        maps = []
        if stage.map_lr is not None:  # the maps' hooks see each matrix's gradient before restrict_rows' hooks
            if donor is None:
                raise ValueError("map_lr needs the donor's rows of the new tokens: set donor (the model whose "
                                 "tokenizer the transplant gave)")
            ids, matrices = donor
            spaces = [(getattr(model, get)(), space) for space, get in SPACES if space in stage.row_spaces]
            maps = donor_maps([(m.weight, space) for m, space in spaces if m is not None], ids, matrices)
        # a tied matrix is both spaces: it trains the rows of the spaces asked for
        keep = {space: (mask if space in stage.row_spaces else torch.zeros_like(mask)) for space, mask in rows.items()}
        head = model.get_output_embeddings()
        heads_train = head is not None and any(head.weight is p and mask.any() for p, mask in _row_masks(model, keep).values())
        gate = BatchRows(head.weight.shape[0]) if heads_train and stage.head_rows == "batch" else None
        trained = [(p, ids) for p, ids in restrict_rows(model, keep, gate) if len(ids)]
        if not trained:
            raise ValueError(f"the new_rows stage has no row to train in {list(stage.row_spaces)}: the model's rows "
                             "there equal its original's; train another space (row_spaces) or use another stage")
        for p in embedding_parameters(model):
            if all(p is not q for q, _ in trained):  # a matrix none of whose rows train: frozen, no gradient at all
                p.requires_grad_(False)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        n_train = sum(len(ids) * p.shape[1] for p, ids in trained) + sum(m.param.numel() for m in maps)
        return StageSetup(model, names, n_train, trained, gate, maps)
    if stage.train == "lora":
        model = with_lora(model, stage.lora_rank, stage.lora_alpha, stage.lora_targets)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
    else:
        names = select_trainable(model, stage.train)
    return StageSetup(model, names, sum(p.numel() for p in model.parameters() if p.requires_grad), None, None, [])
