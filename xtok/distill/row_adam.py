"""Adam whose moments exist only for the embedding rows a ``new_rows`` stage trains.

A ``new_rows`` stage (healing a transplant) trains the rows of the input embeddings and/or head that the transplant
made; the others get zero gradients. ``torch.optim.AdamW`` would still keep two full (V, d) moment tensors per matrix:
for a 152k-token vocabulary at width 576 that is 0.7 GB per matrix, most of it for rows that never move. ``RowAdam``
keeps (R, d) moments for the R trained rows of each matrix and updates only those rows, with the arithmetic of
``torch.optim.Adam`` (no weight decay: a ``new_rows`` stage refuses it), so a run matches AdamW's to float32 rounding
(tested). A checkpoint holds the moments; the rows are the stage's, computed again on resume.
"""

from __future__ import annotations

import math

import torch


class RowAdam(torch.optim.Optimizer):
    def __init__(self, params_and_rows: list[tuple[torch.nn.Parameter, torch.Tensor]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        """``params_and_rows``: each trained matrix with the (R,) long ids of its rows that train."""
        if lr < 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"RowAdam lr={lr}, betas={betas}, eps={eps}: need lr >= 0, eps >= 0, betas in [0, 1)")
        params = [p for p, _ in params_and_rows]
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self._rows = {}  # not in the state: load_state_dict would cast it to the parameter's dtype; a resumed run
        for p, rows in params_and_rows:  # computes the same rows
            if p.ndim != 2:
                raise ValueError(f"RowAdam trains rows of matrices, got a parameter of shape {tuple(p.shape)}")
            self._rows[p] = torch.as_tensor(rows, dtype=torch.long, device=p.device).unique()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state, rows = self.state[p], self._rows[p]
                if "exp_avg" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros((len(rows), p.shape[1]), dtype=p.dtype, device=p.device)
                    state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
                state["step"] += 1
                g = p.grad.index_select(0, rows)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bias1, bias2 = 1 - b1 ** state["step"], 1 - b2 ** state["step"]
                denom = (v.sqrt() / math.sqrt(bias2)).add_(group["eps"])
                p.index_copy_(0, rows, p.index_select(0, rows).addcdiv_(m, denom, value=-group["lr"] / bias1))
        return loss
