"""Init methods that read a token alignment (``Space.alignment``, an ``xtok.align`` Alignment), registered in INIT_METHODS.

``tokalign`` copies, for each new target token, the student row of the source token it was
aligned to (TokAlign's rearrangement of embedding and head rows). ``tokalign+omp`` uses the
target side's co-occurrence vectors as OMP's donor space, so a teacher that is only a tokenizer
still gets OMP-style sparse mixtures of shared anchors. Tokens without a co-occurrence vector go to
the alignment's fallback method (subword by default), never to an arbitrary source id.

They read the Alignment object they are given (``source_of``, ``target_vectors``, ``fallback``) and import
nothing from ``xtok.align``: align is the layer below transplant.
"""

from __future__ import annotations

import torch

from xtok.registry import INIT_METHODS, MethodSpec
from xtok.transplant.methods import Space, omp_rows


def _fallback(space: Space, method: str, new_ids: torch.Tensor, missing: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Fill rows ``missing`` (bool mask over ``new_ids``) with the alignment's fallback method; record how many.

    ``check_methods`` has checked the fallback (it needs no alignment, and a donor only where one is given)."""
    al = space.alignment
    n = int(missing.sum())
    space.details[f"{method}_fallback"] = {"method": al.fallback, "tokens": n}
    if n:
        out[missing] = INIT_METHODS.get(al.fallback)(space, new_ids[missing]).float()
    return out


@INIT_METHODS.register("tokalign", help="TokAlign: the student row of the aligned source token (xtok align)",
                       spec=MethodSpec(needs_alignment=True))
def tokalign_init(space: Space, new_ids: torch.Tensor) -> torch.Tensor:
    al = space.need_alignment("tokalign")
    src = al.source_of[new_ids]
    ok = (src >= 0) & (src < space.student.shape[0])
    out = torch.empty((len(new_ids), space.student.shape[1]))
    out[ok] = space.student[src[ok]]
    space.details["tokalign_copied"] = int(ok.sum())
    return _fallback(space, "tokalign", new_ids, ~ok, out)


@INIT_METHODS.register("tokalign+omp", help="OMP over shared anchors in the co-occurrence space (xtok align; no teacher "
                       "model needed)", spec=MethodSpec(needs_alignment=True, uses_k=True))
def tokalign_omp_init(space: Space, new_ids: torch.Tensor) -> torch.Tensor:
    al = space.need_alignment("tokalign+omp")
    has, x = al.target_vectors(new_ids)
    a_has, atoms = al.target_vectors(space.anchor_teacher)
    if len(atoms) < space.k:
        raise ValueError(f"only {len(atoms)} shared anchors have a co-occurrence vector, fewer than k={space.k}; "
                         "lower --k or align on a larger corpus")
    out = torch.empty((len(new_ids), space.student.shape[1]))
    if has.any():
        out[has] = omp_rows(space, x, atoms, space.anchor_student[a_has], new_ids[has])
    space.details["tokalign+omp_approximated"] = int(has.sum())
    return _fallback(space, "tokalign+omp", new_ids, ~has, out)
