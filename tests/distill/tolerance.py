"""How far two float32 computations of one quantity in different summation orders may differ.

Rounding each addition of a float32 sum of n terms errs by at most eps/2 of the partial sum; the errors
have random signs, so over n additions they grow like sqrt(n) * eps * (the size of the terms) (Higham's
probabilistic bound, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 2.8; the worst case,
n * eps, is never approached by blocked or pairwise sums). In the distillation tests the longest sum
on the path to every loss and gradient element is the one over the vocabulary (the log-softmax
normalizer, and the head's backward d hidden = sum_v d logit_v * W_v), so n = V; the size of the terms
is bounded by the scale of the result, its largest absolute element (|d logit| sums to at most 2 per
position, so the head's terms are at most max|W|, and the layers below scale them like the gradient
itself). ``SAFETY`` covers the few such sums chained through the layers of the backward pass.

A real defect (a missing chunk, a wrong normalizer, a gradient off by a factor) moves elements by a
fraction of that scale, orders of magnitude above this bound: at V = 262,144 the tolerance is
4 * 512 * 1.2e-7 = 2.4e-4 of the largest element.
"""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps
SAFETY = 4.0


def float32_atol(ref: torch.Tensor, terms: int) -> float:
    """The absolute tolerance for ``ref`` recomputed in another summation order over ``terms`` addends."""
    return SAFETY * math.sqrt(terms) * EPS32 * float(ref.detach().abs().max())


def assert_float32_close(got: torch.Tensor, ref: torch.Tensor, terms: int, what: str = "") -> None:
    """``got`` equals ``ref`` up to float32 summation-order noise over ``terms`` addends (see the module docstring)."""
    atol = float32_atol(ref, terms)
    torch.testing.assert_close(got, ref, rtol=0.0, atol=atol,
                               msg=lambda m: f"{what}: {m}\n(tolerance {atol:.3g} = {SAFETY} * sqrt({terms}) * eps32 * "
                                             f"max|ref| {float(ref.detach().abs().max()):.3g})")
