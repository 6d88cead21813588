"""The drafter's head seen through the target's vocabulary: padding, and a reduced draft vocabulary (FR-Spec).

A drafter's head over a 151,936-token vocabulary costs about as much per token as a 135M body. FR-Spec (Zhao et
al. 2025) lets the drafter score only the most frequent tokens of a corpus; proposals are target ids, and the target
still verifies against its full vocabulary, so greedy output is unchanged (lossless) and only acceptance can drop,
at positions where the target's choice is outside the kept set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


CROSS_TOKENIZER = ("a reduced draft vocabulary needs the drafter on the target's tokenizer; drop --draft-vocab or "
                   "--cross-tokenizer")


def check_draft_vocab(keep: torch.Tensor | None, size: int, cross_tokenizer: bool = False) -> None:
    """A reduced draft vocabulary ``keep`` must be target ids in [0, ``size``), at least one, with the drafter on the
    target's tokenizer."""
    if keep is None:
        return
    if cross_tokenizer:
        raise ValueError(CROSS_TOKENIZER)
    if keep.numel() == 0 or int(keep.min()) < 0 or int(keep.max()) >= size:
        raise ValueError(f"draft vocabulary ids must lie in [0, {size}) (got {keep.numel()} ids"
                         f"{f' in [{int(keep.min())}, {int(keep.max())}]' if keep.numel() else ''}); count them with "
                         "frequent_tokens on the target's tokenizer")


def frequent_tokens(tokenizer, texts: list[str], n: int) -> torch.Tensor:
    """The ``n`` ids of ``tokenizer`` most frequent in ``texts`` (ties and unseen tokens in id order), special tokens
    always among them; sorted ascending."""
    size = len(tokenizer)
    if not 1 <= n < size:
        raise ValueError(f"a draft vocabulary of {n} tokens is not a reduction of the {size}-token vocabulary; give "
                         f"1 <= --draft-vocab < {size}, or 0 for the full head")
    if not texts:
        raise ValueError("no text to count token frequencies on: give a corpus with at least one document")
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    freq = torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=size)[:size].double()
    special = sorted({int(i) for i in tokenizer.all_special_ids if 0 <= i < size})
    freq[special] = float("inf")
    order = torch.sort(-freq, stable=True).indices
    return order[:n].sort().values


class DraftHead(torch.nn.Module):
    """Logits over ``size`` target ids from the drafter's head rows: all rows up to ``size`` (padding: missing rows
    never win, extra rows are dropped), or only the rows of ``keep`` (a reduced draft vocabulary). Ids without a
    row get the lowest finite logit, so greedy drafting never proposes them."""

    def __init__(self, head: torch.nn.Module, size: int, keep: torch.Tensor | None = None):
        super().__init__()
        weight, bias = head.weight.detach(), getattr(head, "bias", None)
        self.size = size
        if keep is None:
            rows = min(size, weight.shape[0])
            self.register_buffer("keep", None)
            self.weight, self.bias = weight[:rows], None if bias is None else bias.detach()[:rows]
        else:
            if keep.numel() == 0 or int(keep.max()) >= min(size, weight.shape[0]) or int(keep.min()) < 0:
                raise ValueError(f"draft vocabulary ids must lie in [0, {min(size, weight.shape[0])})")
            self.register_buffer("keep", keep.to(torch.long))
            self.weight = weight[self.keep].contiguous()  # (N, d)
            self.bias = None if bias is None else bias.detach()[self.keep]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, size)
        logits = F.linear(hidden, self.weight.to(hidden.dtype), None if self.bias is None else self.bias.to(hidden.dtype))
        out = hidden.new_full((*hidden.shape[:-1], self.size), torch.finfo(hidden.dtype).min)
        if self.keep is None:
            out[..., : logits.shape[-1]] = logits
        else:
            out.index_copy_(out.dim() - 1, self.keep, logits)
        return out


@contextlib.contextmanager
def head_view(drafter, size: int, keep: torch.Tensor | None = None) -> Iterator[None]:
    """For the duration: ``drafter`` answers with a DraftHead of ``size`` logits and its config says ``size``; both
    restored on exit."""
    head, cfg = drafter.get_output_embeddings(), drafter.config.get_text_config()
    old = cfg.vocab_size
    drafter.set_output_embeddings(DraftHead(head, size, keep))
    cfg.vocab_size = size
    try:
        yield
    finally:
        drafter.set_output_embeddings(head)
        cfg.vocab_size = old


def padded_copy(drafter_dir: str, size: int, out_dir: Path) -> str:
    """A copy of the model folder ``drafter_dir`` with ``size`` embedding and head rows (vLLM's draft_model needs the
    target's vocab_size): rows past the tokenizer dropped or added as zeros (a zero head row scores 0, so it wins only
    where every real token scores below 0, and the target rejects it). Returns the copy's path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(drafter_dir, dtype="auto")
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        if size > old:
            for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
                emb.weight[old:] = 0
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(drafter_dir).save_pretrained(out_dir)
    log.info("drafter padded from %d to %d rows for vLLM: %s", old, size, out_dir)
    return str(out_dir)
