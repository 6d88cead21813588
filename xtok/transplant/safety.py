"""Safety scan of a transplant's OMP rows: codes that look planted ("breaker tokens", arXiv 2601.00065).

A donor can carry an embedding x built as a code over shared anchors, x = Σ c_i a_i, that looks unremarkable in
the donor's space while the same coefficients on the student's anchor rows, Σ c_i s_i, rebuild a vector the donor
chose. To look inert in the donor's space while pointing anywhere in the student's, such a code needs anchors that
cancel each other (large coefficients on near-collinear atoms), and it is reproduced exactly, where a natural
embedding is not. So each new row gets three statistics:

- **coefficient norm** Σ_i |c_i| ‖a_i‖ / ‖x‖: 1 when the chosen anchors add up without cancelling, large when they
  cancel (scale-free, so one threshold serves every donor);
- **row norm** ‖Σ c_i s_i‖ of the row written into the student (its scale at least ``ROW_NORM_FLOOR`` of the shared
  rows' median norm: on a student whose rows all have one norm, a row 10% longer is no outlier; at z_max 15, one
  over 1.75× the median is);
- **residual** ‖x − Σ c_i a_i‖ / ‖x‖ of the donor vector (k anchors leave most of a natural embedding unexplained:
  about 0.8 on Qwen2.5's space at k=8).

Each is compared with the same statistic on shared tokens by a robust z-score (median, 1.4826 × MAD): for the
coefficient norm and the residual, shared anchors hidden from the dictionary and rebuilt by the same OMP; for the
row norm, the student's own rows of the shared tokens. A row is flagged when its coefficient norm or row norm is
``z_max`` robust deviations above the shared tokens', or when it is rebuilt ``z_max`` deviations more exactly than
they are from two or more anchors (a donor vector copied from a single anchor is an exact, harmless code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

REFERENCE_ANCHORS = 1024  # shared anchors hidden and rebuilt for the reference statistics
LISTED = 20  # flagged rows named in the report


@dataclass
class CodeStats:
    """The statistics of one batch of OMP codes (rows of ``ids``) and of the shared-anchor reference."""

    ids: torch.Tensor  # (N,) teacher ids
    coef_norm: torch.Tensor  # (N,)
    residual: torch.Tensor  # (N,)
    atoms_used: torch.Tensor  # (N,) anchors carrying a coefficient above 1% of ‖x‖
    reference: dict[str, torch.Tensor]  # "coef_norm", "residual" on hidden shared anchors


def code_stats(x: torch.Tensor, atoms: torch.Tensor, idx: torch.Tensor, coef: torch.Tensor,
               chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(coefficient norm, residual, anchors used) of codes ``x[i] ≈ coef[i] @ atoms[idx[i]]``."""
    norms = atoms.norm(dim=1)
    cn, res, used = [], [], []
    for s in range(0, len(x), chunk):
        xs, i, c = x[s:s + chunk].float(), idx[s:s + chunk], coef[s:s + chunk]
        xn = xs.norm(dim=1).clamp_min(1e-12)
        weight = c.abs() * norms[i]  # (B, k) what each anchor contributes
        cn.append(weight.sum(1) / xn)
        res.append((xs - torch.einsum("bk,bkd->bd", c, atoms[i])).norm(dim=1) / xn)
        used.append((weight > 0.01 * xn[:, None]).sum(1))
    return torch.cat(cn), torch.cat(res), torch.cat(used)


def reference_stats(atoms: torch.Tensor, omp, seed: int = 0) -> dict[str, torch.Tensor]:
    """Coefficient norms and residuals of up to ``REFERENCE_ANCHORS`` anchors rebuilt by ``omp(x, dictionary)`` from
    the other anchors: what the statistics look like on tokens both models know."""
    n = len(atoms)
    hidden = min(REFERENCE_ANCHORS, n // 4)
    if hidden < 8:
        return {}
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, rest = order[:hidden], order[hidden:]
    idx, coef = omp(atoms[held], atoms[rest])
    cn, res, _ = code_stats(atoms[held], atoms[rest], idx, coef)
    return {"coef_norm": cn, "residual": res}


SPREAD_FLOOR = 1e-6  # a robust scale is at least this share of the median: a reference without spread
ROW_NORM_FLOOR = 0.05  # the row norm's robust scale is at least this share of the shared rows' median norm


def robust_z(values: torch.Tensor, reference: torch.Tensor,
             floor: float = SPREAD_FLOOR) -> tuple[torch.Tensor, float, float]:
    """(z-scores of ``values``, median, scale) against ``reference``: (v − median) / (1.4826 · MAD), the scale at
    least ``floor`` × |median| (1e-6: a reference without spread makes any departure extreme)."""
    ref = reference.double()
    med = float(ref.median())
    scale = 1.4826 * float((ref - med).abs().median())
    scale = max(scale, floor * max(abs(med), 1e-12))
    return (values.double() - med) / scale, med, scale


def _token(teacher_bytes: list[bytes | None], tid: int) -> str:
    b = teacher_bytes[tid]
    return b.decode("utf-8", errors="replace") if b else f"<id {tid}>"


def row_norms(rows: torch.Tensor, ids: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Float32 norms of ``rows[ids]``, a slice at a time (no copy of the rows)."""
    return torch.cat([rows[ids[s:s + chunk]].float().norm(dim=1) for s in range(0, len(ids), chunk)])


def scan(codes: list[CodeStats], rows: torch.Tensor, shared_norms: torch.Tensor, teacher_bytes: list[bytes | None],
         z_max: float) -> dict:
    """The scan of one space: ``rows`` (V, d) the space's new matrix, ``shared_norms`` the norms of the student's rows
    of its shared tokens. Returns the reference medians and scales, how many rows were flagged, and the first
    ``LISTED`` of them (highest coefficient norm first)."""
    ids = torch.cat([c.ids for c in codes])
    stats = {"coef_norm": torch.cat([c.coef_norm for c in codes]), "residual": torch.cat([c.residual for c in codes]),
             "row_norm": row_norms(rows, ids)}
    used = torch.cat([c.atoms_used for c in codes])
    refs = {**codes[0].reference, "row_norm": shared_norms}
    z, summary = {}, {}
    for name, values in stats.items():
        if name in refs and len(refs[name]):
            # a student whose rows all have one norm (Gemma-3's: 1.028 to 1.035) would flag a row 4% longer
            z[name], med, scale = robust_z(values, refs[name], ROW_NORM_FLOOR if name == "row_norm" else SPREAD_FLOOR)
            summary[name] = {"shared_median": round(med, 4), "shared_scale": round(scale, 4),
                             "new_max": round(float(values.max()), 4) if len(values) else None}
    flags = torch.zeros(len(ids), dtype=torch.bool)
    why: dict[str, torch.Tensor] = {}
    if "coef_norm" in z:
        why["coefficient norm"] = z["coef_norm"] > z_max
    if "row_norm" in z:
        why["row norm"] = z["row_norm"] > z_max
    if "residual" in z:
        why["exact multi-anchor code"] = (z["residual"] < -z_max) & (used >= 2)
    for mask in why.values():
        flags |= mask
    listed = []
    for r in sorted(torch.nonzero(flags).flatten().tolist(), key=lambda r: -float(stats["coef_norm"][r]))[:LISTED]:
        tid = int(ids[r])
        listed.append({"id": tid, "token": _token(teacher_bytes, tid),
                       **{name: round(float(v[r]), 4) for name, v in stats.items()},
                       "why": [reason for reason, mask in why.items() if mask[r]]})
    return {"z_max": z_max, "rows_scanned": len(ids), "flagged": int(flags.sum()), "statistics": summary,
            "flagged_by": {reason: int(mask.sum()) for reason, mask in why.items()}, "flagged_rows": listed}


def check_coef_norm(codes: list[CodeStats], limit: float, teacher_bytes: list[bytes | None], space: str) -> None:
    """Refuse a transplant where any new row's coefficient norm exceeds ``limit`` (``--max-coef-norm``)."""
    ids, cn = torch.cat([c.ids for c in codes]), torch.cat([c.coef_norm for c in codes])
    over = torch.nonzero(cn > limit).flatten()
    if len(over):
        worst = sorted(over.tolist(), key=lambda r: -float(cn[r]))[:5]
        names = ", ".join(f"{_token(teacher_bytes, int(ids[r]))!r} (id {int(ids[r])}, {float(cn[r]):.2f})" for r in worst)
        raise ValueError(f"{len(over)} new {space} rows have an OMP coefficient norm above max_coef_norm={limit}: {names}; "
                         "their codes cancel anchors against each other, as planted (breaker) tokens do. Check the "
                         "donor model, or raise --max-coef-norm if these tokens are expected")
