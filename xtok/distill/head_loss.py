"""The output head and a loss applied chunk by chunk of positions, their gradients taken in the forward pass.

The fused linear-cross-entropy pattern (Liger-Kernel, Apple's Cut Cross-Entropy), for any loss of ``xtok.losses``:
each chunk's logits exist only while its loss and d loss / d logits are computed, and that gradient turns at once
into the chunk's gradient with respect to the hidden states (``dz @ W``) and a running gradient of the head's
weight (``dz^T h``). So the (B, T, V) logits, their log-softmax and their gradient never exist (V is 151,936 for
the Qwen vocabulary), and nothing is recomputed: the head's three products are those of an unfused backward.
Backward only scales the two stored gradients by the incoming one. (Products over blocks of several chunks, which
read the head fewer times, were within this CPU's noise in speed and cost 0.1-0.2 GB more.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def capped(z: torch.Tensor, cap: float | None) -> torch.Tensor:
    return z if not cap else torch.tanh(z / cap) * cap  # Gemma's final_logit_softcapping


def product_weight(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in the dtype autocast gives matrix products on ``hidden``'s device here (bf16 under a bf16 run), cast
    once: autocast itself would cast the head twice per chunk (a 152k-row head: ~1 s a step). As is where it is off."""
    device = hidden.device.type
    return weight.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else weight


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, chunk_loss, chunks, cap, chunk_grad):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(weight.dtype, torch.float32)  # the head's gradient sums chunks in float32 at least
        grad_h = torch.zeros_like(hidden) if want_h else None  # (B, T, H)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None  # (V, H)
        total = hidden.new_zeros((), dtype=acc)
        w = product_weight(hidden, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            for pos in chunks:
                h = hidden[:, pos]  # (B, c, H)
                z = torch.matmul(h.to(w.dtype), w.t())  # (B, c, V)
                if chunk_grad is not None:  # the loss's own closed-form gradient (it makes its own float32 copy)
                    zc = capped(z.to(acc), cap) if cap else z
                    loss, dz = chunk_grad(pos, zc)
                    if cap:
                        dz.mul_(1 - (zc / cap) ** 2)  # d cap·tanh(z / cap) / dz
                    del zc
                else:
                    z.requires_grad_(True)
                    with torch.enable_grad():
                        loss = chunk_loss(pos, capped(z, cap))
                    (dz,) = torch.autograd.grad(loss, z)  # (B, c, V)
                total += loss.detach().to(acc)
                del z, loss
                if want_h:
                    grad_h[:, pos] = torch.matmul(dz.to(w.dtype), w)
                if want_w:
                    grad_w.addmm_(dz.flatten(0, 1).t().to(acc), h.flatten(0, 1).to(acc))
        ctx.grads, ctx.weight_dtype = (grad_h, grad_w), weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w = ctx.grads
        del ctx.grads
        if grad_h is not None:
            grad_h.mul_(grad_total.to(grad_h.dtype))
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_total.to(grad_w.dtype)).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None


def chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor,
                      chunk_loss: Callable[[slice, torch.Tensor], torch.Tensor], chunks: Iterable[slice],
                      cap: float | None = None,
                      chunk_grad: Callable[[slice, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                      ) -> torch.Tensor:
    """The sum over ``chunks`` (increasing slices of T) of ``chunk_loss(pos, logits)``, logits = cap(hidden[:, pos] @
    weight^T) (B, c, V); differentiable in ``hidden`` (B, T, H) and ``weight`` (V, H), with the gradients of a head
    applied to the whole sequence at once. A chunk not listed contributes nothing (for fully masked chunks). Under
    autocast (a bf16 run) the head's products run in its dtype, the losses and the weight's gradient in float32.
    ``chunk_grad(pos, logits)``, where the loss has one, returns the chunk's loss and its gradient with respect to
    the logits (in the products' dtype: bf16 under a bf16 run) in closed form, as a new float32 tensor at least, and
    must not modify ``logits``; autograd through ``chunk_loss`` is used otherwise."""
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden states of width {hidden.shape[-1]} and a head of shape {tuple(weight.shape)} differ")
    chunks = [slice(*pos.indices(hidden.shape[1])[:2]) for pos in chunks]
    if any(a.stop > b.start for a, b in zip(chunks, chunks[1:])):
        raise ValueError(f"chunks {chunks} must be increasing slices of the positions that do not overlap")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedHeadLoss.apply(hidden, weight, chunk_loss, chunks, cap, chunk_grad)
    acc = torch.promote_types(weight.dtype, torch.float32)
    total = hidden.new_zeros((), dtype=acc)
    w = product_weight(hidden, weight)
    with torch.autocast(hidden.device.type, enabled=False):
        for pos in chunks:  # no gradient wanted (evaluation): the loss alone
            total += chunk_loss(pos, capped(torch.matmul(hidden[:, pos].to(w.dtype), w.t()), cap)).to(acc)
    return total
