"""Adam whose moments exist only for the embedding rows that train: ``RowAdam`` (a ``new_rows`` stage's fixed rows) and
``TouchedRowAdamW`` (the other stages: an input embedding's rows that have had a gradient).

A ``new_rows`` stage (healing a transplant) trains the rows of the input embeddings and/or head that the transplant
made; the others get zero gradients. ``torch.optim.AdamW`` would still keep two full (V, d) moment tensors per matrix:
for a 152k-token vocabulary at width 576 that is 0.7 GB per matrix, most of it for rows that never move. ``RowAdam``
keeps (R, d) moments for the R trained rows of each matrix and updates only those rows, with the arithmetic of
``torch.optim.Adam`` (no weight decay: a ``new_rows`` stage refuses it), so a run matches AdamW's to float32 rounding
(tested). A checkpoint holds the moments; the rows are the stage's, computed again on resume. ``maps`` (a ``new_rows``
stage with ``map_lr``, ``xtok.distill.row_map``) adds each map's Adam step, at its own learning rate, applied to every
new row.
"""

from __future__ import annotations

import math

import torch


class RowAdam(torch.optim.Optimizer):
    def __init__(self, params_and_rows: list[tuple[torch.nn.Parameter, torch.Tensor]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, lazy: list[torch.nn.Parameter] = (),
                 maps: list = (), map_lr: float | None = None):
        """``params_and_rows``: each trained matrix with the (R,) long ids of its rows that train. ``lazy``: matrices
        of those whose rows move, and whose moments change, only at the steps where the row has a nonzero gradient
        (TF's LazyAdam, torch's SparseAdam; the head under ``head_rows: batch``); the others are plain Adam, where a
        zero gradient still decays the moments and the momentum still moves the row. ``maps``: ``DonorMap``s, each a
        parameter group of its own at ``map_lr`` (a scheduler scales it as it scales ``lr``)."""
        if lr < 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"RowAdam lr={lr}, betas={betas}, eps={eps}: need lr >= 0, eps >= 0, betas in [0, 1)")
        params = [p for p, _ in params_and_rows]
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self._rows = {}  # not in the state: load_state_dict would cast it to the parameter's dtype; a resumed run
        for p, rows in params_and_rows:  # computes the same rows
            if p.ndim != 2:
                raise ValueError(f"RowAdam trains rows of matrices, got a parameter of shape {tuple(p.shape)}")
            self._rows[p] = torch.as_tensor(rows, dtype=torch.long, device=p.device).unique()
        self._lazy = {id(p) for p in lazy}
        if any(all(p is not q for q in params) for p in lazy):
            raise ValueError("RowAdam lazy: every lazy matrix must be one of the trained ones")
        if maps and not (map_lr and map_lr > 0):
            raise ValueError(f"RowAdam maps need map_lr > 0, got {map_lr}")
        self._maps = {}
        for m in maps:
            self._maps[m.param] = m
            self.add_param_group({"params": [m.param], "lr": map_lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p in self._maps:
                    self._map_step(p, group)
                    continue
                state, rows = self.state[p], self._rows[p]
                if "exp_avg" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros((len(rows), p.shape[1]), dtype=p.dtype, device=p.device)
                    state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
                state["step"] += 1
                g = p.grad.index_select(0, rows)
                if id(p) in self._lazy:
                    _lazy_adam_rows(p, rows, g, state, state["step"], group)
                else:
                    _adam_rows(p, rows, g, state, state["step"], group)
        return loss

    def _map_step(self, p, group: dict) -> None:
        """Adam's step on a map's gradient (``p.grad``, summed by its hook), applied to its rows; the gradient is
        cleared here (the map is no model parameter: the Trainer's ``zero_grad`` does not reach it)."""
        state = self.state[p]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        for key in ("exp_avg", "exp_avg_sq"):  # a resumed state loads where the map was before it followed its matrix
            state[key] = state[key].to(p.device)
        state["step"] += 1
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # each process's hook saw its own gradient (DDP averages the model's, not this): average it, or the
            # processes' maps, and so their rows, would part
            dist.all_reduce(p.grad)
            p.grad.div_(dist.get_world_size())
        m, denom, size = _adam_moments(p.grad, state, state["step"], group)
        self._maps[p].apply(m / denom * -size)
        p.grad = None


def _closure_loss(closure):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _adam_moments(g: torch.Tensor, state: dict, step: int, group: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``torch.optim.Adam``'s single-tensor arithmetic: the moments ``state["exp_avg"]``, ``state["exp_avg_sq"]`` moved
    by the gradient ``g`` (in place), and the update's parts at step ``step``: ``-size * m / denom``, as
    ``(m, denom, size)``."""
    (b1, b2), m, v = group["betas"], state["exp_avg"], state["exp_avg_sq"]
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (v.sqrt() / math.sqrt(1 - b2 ** step)).add_(group["eps"])
    return m, denom, group["lr"] / (1 - b1 ** step)


def _adam_rows(p, rows: torch.Tensor, g: torch.Tensor, state: dict, step: int, group: dict) -> None:
    """Adam's update of the rows ``rows`` of ``p`` from their gradient ``g`` and moments ``state["exp_avg"]``,
    ``state["exp_avg_sq"]`` (R, d), at step ``step``."""
    m, denom, size = _adam_moments(g, state, step, group)
    p.index_copy_(0, rows, p.index_select(0, rows).addcdiv_(m, denom, value=-size))


def _lazy_adam_rows(p, rows: torch.Tensor, g: torch.Tensor, state: dict, step: int, group: dict) -> None:
    """``_adam_rows`` for the rows whose gradient is not all zero; the others and their moments stay as they are."""
    hit = (g != 0).any(1).nonzero()[:, 0]
    if not len(hit):
        return
    sub = {"exp_avg": state["exp_avg"].index_select(0, hit), "exp_avg_sq": state["exp_avg_sq"].index_select(0, hit)}
    _adam_rows(p, rows.index_select(0, hit), g.index_select(0, hit), sub, step, group)
    state["exp_avg"].index_copy_(0, hit, sub["exp_avg"])
    state["exp_avg_sq"].index_copy_(0, hit, sub["exp_avg_sq"])


class TouchedRowAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose ``row_sparse`` matrices (an untied input embedding) keep moments only for the rows
    that have had a gradient.

    A row whose gradient has always been zero has zero moments, so AdamW moves it by weight decay alone: its moments
    need not exist. An embedding's gradient reaches only the rows of the tokens in the batch, so over a run the rows
    with moments are the tokens seen so far (a few thousand of a 152k-token vocabulary in a short run): each step
    applies AdamW's arithmetic to them, with the global step count in the bias corrections, and the decay to every
    row, as ``AdamW`` does; the other parameters go through ``AdamW.step`` itself (fused where asked). The gradient
    of a row-sparse matrix may be a sparse COO tensor (``nn.Embedding(sparse=True)``) or dense.
    """

    def __init__(self, params, row_sparse: list[torch.nn.Parameter], **kwargs):
        if kwargs.get("amsgrad") or kwargs.get("maximize"):
            raise ValueError("TouchedRowAdamW supports neither amsgrad nor maximize; use torch.optim.AdamW")
        super().__init__(params, **kwargs)
        known = {id(p) for group in self.param_groups for p in group["params"]}
        for p in row_sparse:
            if p.ndim != 2 or id(p) not in known:
                raise ValueError(f"a row-sparse parameter must be a matrix among the optimizer's parameters, got shape "
                                 f"{tuple(p.shape)}{'' if id(p) in known else ' (not among them)'}")
        self._row_sparse = {id(p) for p in row_sparse}
        self._slots: dict[int, torch.Tensor] = {}  # id(p) -> (V,) long: each row's slot in the moments, -1 if none

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        held = {}  # AdamW.step skips a parameter without a gradient
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) in self._row_sparse and p.grad is not None:
                    held[id(p)] = (p, p.grad, group)
                    p.grad = None
        try:
            super().step()
        finally:
            for p, grad, _ in held.values():
                p.grad = grad
        for p, grad, group in held.values():
            self._row_step(p, grad, group)
        return loss

    def _slot_map(self, p, rows: torch.Tensor) -> torch.Tensor:
        slots = self._slots.get(id(p))
        if slots is None:
            slots = torch.full((p.shape[0],), -1, dtype=torch.long, device=p.device)
            slots[rows] = torch.arange(len(rows), device=p.device)
            self._slots[id(p)] = slots
        return slots

    def _row_step(self, p, grad: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["rows"] = torch.zeros(0, dtype=torch.long, device=p.device)
            state["exp_avg"] = p.new_zeros((0, p.shape[1]))
            state["exp_avg_sq"] = p.new_zeros((0, p.shape[1]))
        if grad.is_sparse:
            grad = grad.coalesce()
            ids, values = grad.indices()[0], grad.values()
        else:
            ids = (grad != 0).any(1).nonzero()[:, 0]
            values = grad.index_select(0, ids)
        slots = self._slot_map(p, state["rows"])
        new = ids[slots[ids] < 0]
        if len(new):  # first gradient of these rows: zero moments, as AdamW's would be
            slots[new] = torch.arange(len(state["rows"]), len(state["rows"]) + len(new), device=p.device)
            state["rows"] = torch.cat([state["rows"], new])
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = torch.cat([state[key], state[key].new_zeros((len(new), p.shape[1]))])
        g = state["exp_avg"].new_zeros(state["exp_avg"].shape).index_add_(0, slots[ids], values.to(p.dtype))
        state["step"] += 1
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])  # every row, as AdamW decays them
        _adam_rows(p, state["rows"], g, state, int(state["step"].item()), group)

    def load_state_dict(self, state_dict):
        """As ``Optimizer.load_state_dict``, which casts every tensor of a parameter's state to its dtype: the row ids
        are set aside and put back as they were."""
        rows, state = {}, {}
        for key, entry in state_dict["state"].items():
            if "rows" in entry:
                rows[key] = entry["rows"]
                entry = {k: v for k, v in entry.items() if k != "rows"}
            state[key] = entry
        super().load_state_dict({**state_dict, "state": state})
        params = [p for group in self.param_groups for p in group["params"]]
        for key, ids in rows.items():
            self.state[params[key]]["rows"] = ids.to(device=params[key].device, dtype=torch.long)
        self._slots.clear()
