"""Benchmark subword-prior's context term (``head_context``) against the static subword-prior head, zero-shot.

    .venv/bin/python scripts/bench_head_context.py --transplanted DIR --tokens 2048 8192 --alphas 0 0.5 1 1.5

1. The transplant: DIR (an `xtok transplant` output of the pair with the default settings), or one made here with them.
2. For each --tokens N: the calibration with the context map (the teacher's final state from the student's, ridge,
   on the positions of N calibration tokens where both tokenizations end a token), then the head for each alpha; the
   input rows stay the transplant's. The context term is linear in alpha: the heads for alpha 0 and 1 give every other.
3. Validation (documents of ../shared/corpus/train not in bundled:train, as in bench_heal.py): every (N, alpha); the
   setting with the lowest overall bits per byte is kept.
4. Eval (bundled:eval, the README's split): untouched student, the transplant as made (labelled with the head its
   report says it got), the kept setting; bits per byte
   per domain with 95% bootstrap intervals and the paired ratio to the untouched student.
Writes bench/results/head_context.json (another pair: head_context-STUDENT-TEACHER.json). One heavy job at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_heal import score, summary, transplant_for, zero_shot_setup  # noqa: E402

from xtok.models.load import load_model  # noqa: E402
from xtok.transplant.apply import _matrix, head_matrix, plan_transplant, space_rows  # noqa: E402
from xtok.transplant.calibrate import calibrate, calibration_texts  # noqa: E402
from xtok.utils.io import write_json  # noqa: E402


def heads(student, s_tok, teacher, t_tok, tokens: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(head at alpha 0, the context term at alpha 1, the calibration's report) for ``tokens`` calibration positions."""
    t0 = time.perf_counter()
    cal = calibrate(student, s_tok, calibration_texts("bundled:train", tokens), tokens, teacher_model=teacher,
                    teacher_tok=t_tok, context=True)
    s_out = _matrix(student.get_output_embeddings(), "output", student)
    d_out = head_matrix(teacher)
    rows = {}
    for alpha in (0.0, 1.0):
        plan, _ = plan_transplant(s_tok, t_tok, method="omp", head_method="subword-prior", donor=True,
                                  student_rows=s_out.shape[0], donor_rows=d_out.shape[0],
                                  teacher_vocab_size=teacher.config.get_text_config().vocab_size, head_context=alpha)
        rows[alpha], _ = space_rows(plan, "output", s_out, d_out, cal)
    return rows[0.0], rows[1.0] - rows[0.0], {**cal.report(), "seconds_with_heads": round(time.perf_counter() - t0, 1)}


def made_with(folder: str | Path) -> str:
    """What head the transplant in ``folder`` was made with, from its report: "static subword-prior", or its context
    setting and calibration size."""
    report = json.loads((Path(folder) / "transplant_report.json").read_text())
    prior = report["spaces"]["output"].get("subword_prior")
    if prior is None:
        return f"head {report['spaces']['output']['method']}"
    alpha = prior.get("head_context", 0.0)
    return "static subword-prior" if not alpha else f"tokens {prior['tokens']['student']}, alpha {alpha:g}"


def main() -> None:
    def extra(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
        ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5])

    args, result, (ev_texts, ev_domains), (val_texts, val_domains) = zero_shot_setup(__doc__, "head_context", extra)
    path = transplant_for(args, result, "bench-head-context-")
    student, s_tok = load_model(args.student)
    teacher, t_tok = load_model(args.teacher)
    model, m_tok = load_model(str(path))
    head = model.get_output_embeddings().weight
    made = head.detach().clone()
    val = {"untouched": score(student, s_tok, val_texts, val_domains)}
    val["transplanted"] = score(model, m_tok, val_texts, val_domains, val["untouched"])
    result["validation"] = {k: summary(v) for k, v in val.items()}
    settings = {}
    for tokens in args.tokens:
        base, term, report = heads(student, s_tok, teacher, t_tok, tokens)
        result.setdefault("calibrations", {})[str(tokens)] = report
        for alpha in args.alphas:
            name = f"tokens {tokens}, alpha {alpha:g}"
            settings[name] = base + alpha * term
            with torch.no_grad():
                head.copy_(settings[name])
            entry = score(model, m_tok, val_texts, val_domains, val["untouched"])
            result["validation"][name] = summary(entry)
            print(name, result["validation"][name]["overall"], flush=True)
            write_json(args.out, result)
    best = min(settings, key=lambda n: result["validation"][n]["overall"])
    result["chosen_on_validation"] = best
    evals = {"untouched": score(student, s_tok, ev_texts, ev_domains)}
    with torch.no_grad():
        head.copy_(made)
    evals[f"transplanted as made ({made_with(path)})"] = score(model, m_tok, ev_texts, ev_domains, evals["untouched"])
    with torch.no_grad():
        head.copy_(settings[best])
    evals[f"transplanted, head_context ({best})"] = score(model, m_tok, ev_texts, ev_domains, evals["untouched"])
    result["eval"] = {k: summary(v) for k, v in evals.items()}
    write_json(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
