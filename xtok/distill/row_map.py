"""A map shared by a transplant's new rows, so a heal moves the rows of tokens its text never shows too.

A ``new_rows`` stage trains each new row from the steps whose batch holds (or predicts) its token. The default pair
has 112,699 new tokens, far more than a CPU heal's text shows: the rows it never shows keep their zero-shot values,
and the trained rows of their family take share from them. ``map_lr`` adds one linear map ``A`` (donor width x model
width) that every new row shares: ``row_t += D_t A``, ``D_t`` the donor's row of token t (the input embedding or head
row of the model whose tokenizer the transplant gave, scaled so that the new tokens' rows have mean norm 1). ``A``
trains by Adam on the chain rule, ``dL/dA = D^T dL/dW[new]``, where ``dL/dW`` is the matrix's gradient before any row
restriction or batch gate (every new row's softmax gradient reaches the map), and each step adds ``D dA`` to every new
row. Only new rows move; every row the original has stays as it is.

The map lives in the rows: a checkpoint holds the rows and the map's Adam moments, not ``A`` itself, which is all a
resumed run needs. Its gradient is not clipped with the model's (Adam's update hardly depends on its scale).
"""

from __future__ import annotations

import torch


class DonorMap:
    """One matrix's map: ``weight`` (V, d) the embedding or head, ``ids`` (n,) the new tokens' rows, ``donor`` (n, e)
    the donor's rows of the same tokens. ``param`` (e, d) carries the map's gradient (summed over micro-batches by
    ``record``, the hook on ``weight``) into ``RowAdam``, which calls ``apply`` with the update."""

    def __init__(self, weight: torch.nn.Parameter, ids: torch.Tensor, donor: torch.Tensor):
        if weight.ndim != 2 or donor.ndim != 2 or donor.shape[0] != len(ids):
            raise ValueError(f"a donor map needs one donor row per new row: {len(ids)} new rows of a matrix of shape "
                             f"{tuple(weight.shape)}, donor rows of shape {tuple(donor.shape)}")
        if not torch.isfinite(donor).all():
            raise ValueError("NaN or Inf in the donor's rows of the new tokens; the donor's weights are broken")
        self.weight, self.ids = weight, ids.to(torch.long)
        features = donor.float()
        scale = features.norm(dim=1).mean()
        if scale == 0:
            raise ValueError("the donor's rows of the new tokens are all zero: they cannot carry a map; "
                             "set map_lr: null")
        self.features = (features / scale).to(weight.device).contiguous()
        self.param = torch.nn.Parameter(torch.zeros(features.shape[1], weight.shape[1], device=weight.device),
                                        requires_grad=False)

    def _follow(self, device: torch.device) -> None:
        """Move to the matrix's device: the Trainer moves the model (to a GPU) after the maps are made."""
        if self.features.device != device:
            self.features, self.ids = self.features.to(device), self.ids.to(device)
            self.param.data = self.param.data.to(device)

    def record(self, grad: torch.Tensor) -> None:
        """Add ``D^T grad[new]`` to the map's gradient; the matrix's gradient passes on unchanged."""
        self._follow(grad.device)
        rows = grad.index_select(0, self.ids).float()
        hit = rows.any(1).nonzero()[:, 0]
        if 2 * len(hit) < len(self.ids):  # an input embedding: only the batch's rows have a gradient
            g = self.features.index_select(0, hit).t() @ rows.index_select(0, hit)
        else:
            g = self.features.t() @ rows
        self.param.grad = g if self.param.grad is None else self.param.grad.add_(g)

    @torch.no_grad()
    def apply(self, delta: torch.Tensor) -> None:
        """The map moved by ``delta`` (e, d): every new row moves by its donor row times it."""
        self._follow(self.weight.device)
        self.weight.index_add_(0, self.ids, (self.features @ delta.to(self.weight.device)).to(self.weight.dtype))


def donor_maps(matrices: list[tuple[torch.nn.Parameter, str]], ids: torch.Tensor,
               donor: dict[str, torch.Tensor]) -> list[DonorMap]:
    """A ``DonorMap`` for each ``(matrix, space)`` ("input" or "output"; a tied matrix once, by its first space), from
    ``donor[space]``: the donor's rows of the new tokens ``ids`` (n, e), in that order; each map's hook is registered on
    its matrix. Register them before any hook that restricts or gates the matrix's gradient."""
    maps, seen = [], set()
    for weight, space in matrices:
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        inside = ids < weight.shape[0]  # ids past a matrix's rows (a tokenizer longer than the matrix) have no row
        if donor[space].shape[0] != len(ids):
            raise ValueError(f"{donor[space].shape[0]} donor rows for {len(ids)} new tokens: give the donor's rows of "
                             "the new tokens, in their order")
        m = DonorMap(weight, ids[inside], donor[space][inside])
        weight.register_hook(m.record)
        maps.append(m)
    return maps
