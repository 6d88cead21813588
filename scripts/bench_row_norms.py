"""Benchmark ``row_norms`` (new input rows held to the student's own norm range), zero-shot.

    .venv/bin/python scripts/bench_row_norms.py --student gemma3-270m --teacher qwen2.5-coder-0.5b --transplanted DIR

1. The transplant: DIR (an `xtok transplant` output of the pair with ``row_norms: keep``), or one made here so.
2. Its new input rows (the teacher's tokens the student lacks) under each mode of ``xtok.transplant.norms`` (keep, cap,
   clamp), the range taken from the student's rows of the shared tokens exactly as the transplant takes it; the head
   stays the transplant's (subword-prior makes logit-calibrated rows, which the modes leave alone).
3. Validation (documents of ../shared/corpus/train not in bundled:train, as in bench_heal.py): every mode; the one with
   the lowest overall bits per byte is kept.
4. Eval (bundled:eval, the README's split): untouched student, keep, and the kept mode; bits per byte per domain with
   95% bootstrap intervals and the paired ratio to the untouched student.
Writes bench/results/row_norms-STUDENT-TEACHER.json (the default pair: row_norms.json). One heavy job at a time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_heal import overall, score, summary, transplant_for, zero_shot_setup  # noqa: E402

from xtok.models.load import load_model  # noqa: E402
from xtok.transplant.norms import ROW_NORMS, fit_row_norms, norm_range  # noqa: E402
from xtok.utils.io import write_json  # noqa: E402
from xtok.vocab.shared import build_token_map  # noqa: E402


def main() -> None:
    args, result, (ev_texts, ev_domains), (val_texts, val_domains) = zero_shot_setup(__doc__, "row_norms")
    path = transplant_for(args, result, "bench-row-norms-", row_norms="keep")
    student, s_tok = load_model(args.student)
    model, m_tok = load_model(str(path))
    tmap = build_token_map(m_tok, s_tok)
    low, high = norm_range(student.get_input_embeddings().weight.detach().norm(dim=1)[tmap.student_of[tmap.shared_teacher_ids]])
    emb = model.get_input_embeddings().weight
    made = emb.detach().clone()
    new = tmap.new_teacher_ids
    norms = made[new].norm(dim=1)
    result["range"] = {"low": round(low, 4), "high": round(high, 4), "new_rows": len(new),
                       "new_rows_above": int((norms > high).sum()), "new_rows_below": int((norms < low).sum()),
                       "new_row_norm_max": round(float(norms.max()), 3)}
    print(result["range"], flush=True)
    rows = {}
    for mode in ROW_NORMS:
        rows[mode], changed = fit_row_norms(made[new], low, high, mode)
        result["range"][f"changed_{mode}"] = changed

    def use(mode: str) -> None:
        with torch.no_grad():
            emb.copy_(made)
            emb[new] = rows[mode]

    val = {"untouched": score(student, s_tok, val_texts, val_domains)}
    for mode in ROW_NORMS:
        use(mode)
        val[mode] = score(model, m_tok, val_texts, val_domains, val["untouched"])
        print(mode, round(overall(val[mode]), 4), flush=True)
    result["validation"] = {k: summary(v) for k, v in val.items()}
    write_json(args.out, result)
    best = min(ROW_NORMS, key=lambda m: result["validation"][m]["overall"])
    result["chosen_on_validation"] = best
    evals = {"untouched": score(student, s_tok, ev_texts, ev_domains)}
    for mode in dict.fromkeys(("keep", best)):
        use(mode)
        evals[mode] = score(model, m_tok, ev_texts, ev_domains, evals["untouched"])
    result["eval"] = {k: summary(v) for k, v in evals.items()}
    write_json(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
