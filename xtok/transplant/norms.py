"""New rows' norms held to the range of the student's own rows (``row_norms``).

An OMP code is fitted in the donor's space and applied to the student's anchor rows. Where the chosen anchors cancel
each other in the donor's space (a large coefficient norm), the same coefficients need not cancel on the student's
rows, and the row comes out far longer than any row the student has. Gemma-3-270M's input embeddings all have norms
between 1.028 and 1.035; given Qwen2.5's tokenizer with OMP (k=8) in Qwen's space, 10% of its new rows came out
longer than 1.78 and 0.1% longer than 44 (its layers scale the embedding by sqrt(640) before anything normalises
it). The modes:

- ``keep``: rows as the method made them;
- ``cap``: a row longer than the student's shared rows' ``NORM_QUANTILES[1]`` quantile is scaled down to it;
- ``clamp``: also a row shorter than their ``NORM_QUANTILES[0]`` quantile is scaled up to it.

Only a row's length changes, never its direction; a zero row stays zero.
"""

from __future__ import annotations

import torch

ROW_NORMS = ("keep", "cap", "clamp")
NORM_QUANTILES = (0.001, 0.999)  # of the shared rows' norms: the range a new row is held to


def check_row_norms(mode: str) -> str:
    if mode not in ROW_NORMS:
        raise ValueError(f"row_norms={mode!r} is not one of {', '.join(ROW_NORMS)}: keep leaves the rows as made, cap "
                         "shortens rows longer than the student's own, clamp also lengthens rows shorter than them")
    return mode


def norm_range(shared_norms: torch.Tensor) -> tuple[float, float]:
    """(low, high): the ``NORM_QUANTILES`` of ``shared_norms`` (n,), the norms of the student's rows of shared tokens."""
    if len(shared_norms) == 0:
        raise ValueError("row_norms needs the student's rows of shared tokens to set the range; there are none")
    lo, hi = torch.quantile(shared_norms.double(), torch.tensor(NORM_QUANTILES, dtype=torch.float64)).tolist()
    return lo, hi


def fit_row_norms(rows: torch.Tensor, low: float, high: float, mode: str) -> tuple[torch.Tensor, int]:
    """(rows with their norms held to ``[low, high]`` as ``mode`` says, how many rows changed)."""
    if check_row_norms(mode) == "keep":
        return rows, 0
    norms = rows.norm(dim=1, keepdim=True)
    target = norms.clamp(max=high) if mode == "cap" else norms.clamp(min=low, max=high)
    target = torch.where(norms > 0, target, norms)  # a zero row has no direction to lengthen
    changed = int((target != norms).sum())
    return rows * (target / norms.clamp_min(1e-30)), changed
