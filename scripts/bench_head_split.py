"""Where a new token's bits go: the transplant's cost of a new token split into its family's mass and its share of it.

    .venv/bin/python scripts/bench_head_split.py --transplanted DIR [DIR ...] --val-docs 8 --val-chars 6000

A new teacher token t whose bytes the student spells p1 p2 ... belongs to p1's *family* (the teacher tokens whose first
student piece is p1). A transplanted head gives t the probability P(family) × P(t | family). On the validation split
(documents of ../shared/corpus/train outside the bundled training text, never the eval split), at every chunk that is
one new token on the teacher's side (chunks end where both tokenizations end a token) this writes, in bits per chunk:

- each transplant: the whole cost, the family's cost (-log2 of the family's summed probability) and the share's;
- the untouched student on the same bytes: the whole cost, its first token's (p1, where its tokenization of the
  chunk starts with p1) and the rest;
- the teacher: the whole cost, and the same family / share split under its own distribution.

So the family cost against the untouched student's first-token cost says what the input side and the head's family
handling lose (``*_quiet``: the same over the chunks whose last 8 teacher tokens before are all shared, where the
input side read copied rows only), and the share cost against the teacher's share says what a better in-family term
could buy.
Writes bench/results/head_split.json (another pair: head_split-STUDENT-TEACHER.json).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_heal import validation_docs  # noqa: E402
from bench_transplant import DEFAULT_PAIR, pair_results  # noqa: E402

from xtok.models.load import load_model  # noqa: E402
from xtok.transplant.methods import first_piece_table  # noqa: E402
from xtok.utils.hardware import machine_info  # noqa: E402
from xtok.utils.io import command_line, package_versions, write_json  # noqa: E402
from xtok.vocab.chunks import paired_tokenization  # noqa: E402
from xtok.vocab.shared import build_token_map  # noqa: E402

LOG2 = math.log(2)
CONTEXT = 8  # "quiet" chunks: none of the teacher tokens of the last CONTEXT positions is new (the input side read
# only copied rows there), so their family cost is the head's alone, up to what older new tokens did to the state


def _logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """(T-1, V) log-probabilities of the next token at each position."""
    with torch.no_grad():
        return model(input_ids=ids[None]).logits[0, :-1].float().log_softmax(-1)


def family_split(logp: torch.Tensor, targets: torch.Tensor, fam_of: torch.Tensor, p1: torch.Tensor):
    """Per position: (-log2 P(target), -log2 P(its family)) with families given by ``fam_of`` (first piece per teacher
    id) and ``p1`` the target's first piece."""
    v = min(logp.shape[1], len(fam_of))
    total = -logp.gather(1, targets[:, None])[:, 0] / LOG2
    fam = torch.empty(len(targets))
    members: dict[int, torch.Tensor] = {}
    for i, p in enumerate(p1.tolist()):
        if p not in members:
            members[p] = torch.nonzero(fam_of[:v] == p).flatten()
        fam[i] = -torch.logsumexp(logp[i, members[p]], 0) / LOG2
    return total, fam


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default=DEFAULT_PAIR[0])
    ap.add_argument("--teacher", default=DEFAULT_PAIR[1])
    ap.add_argument("--transplanted", nargs="+", required=True, help="transplant folders of the pair to split")
    ap.add_argument("--val-docs", type=int, default=8)
    ap.add_argument("--val-chars", type=int, default=6000)
    ap.add_argument("--max-tokens", type=int, default=1023)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.out = args.out or pair_results("head_split", (args.student, args.teacher))
    texts, domains = validation_docs(args.val_docs, args.val_chars)
    student, s_tok = load_model(args.student)
    teacher, t_tok = load_model(args.teacher)
    fam_of = first_piece_table(t_tok, s_tok, student.get_output_embeddings().weight.shape[0])
    new = build_token_map(t_tok, s_tok).student_of < 0
    models = {"teacher": teacher, **{d: load_model(d)[0] for d in args.transplanted}}
    start = t_tok.bos_token_id if t_tok.bos_token_id is not None else t_tok.eos_token_id
    rows: dict[str, dict[str, list[float]]] = {}
    for text, dom in zip(texts, domains):
        a = torch.tensor([[start] + t_tok(text, add_special_tokens=False)["input_ids"][: args.max_tokens]])
        pair = paired_tokenization(t_tok, s_tok, a)
        b = pair.ids[0][pair.mask[0].bool()]
        ca, cb = pair.a_chunk[0, 1:], pair.b_chunk[0, 1 : len(b)]
        targets_a, targets_b = a[0, 1:], b[1:]
        # chunks that are one new teacher token whose student spelling starts with its first piece
        picked = []
        for c in torch.unique(ca[ca >= 0]).tolist():
            ia, ib = torch.nonzero(ca == c).flatten(), torch.nonzero(cb == c).flatten()
            t = int(targets_a[ia[0]])
            if len(ia) == 1 and len(ib) >= 1 and new[t] and fam_of[t] >= 0 and int(targets_b[ib[0]]) == int(fam_of[t]):
                picked.append((int(ia[0]), ib.tolist()))
        if not picked:
            continue
        pos_a = torch.tensor([p for p, _ in picked])
        is_new = new[targets_a].tolist()
        quiet = [not any(is_new[max(0, p - CONTEXT):p]) for p in pos_a.tolist()]  # no new token among the last few read
        t_ids, p1 = targets_a[pos_a], fam_of[targets_a[pos_a]]
        lb = _logprobs(student, b).gather(1, targets_b[:, None])[:, 0] / LOG2
        r = rows.setdefault(dom, {})
        r.setdefault("untouched_total", []).extend(float(-lb[ib].sum()) for _, ib in picked)
        r.setdefault("untouched_first", []).extend(float(-lb[ib[0]]) for _, ib in picked)
        for name, model in models.items():
            lp = _logprobs(model, a[0])[pos_a]
            total, fam = family_split(lp, t_ids, fam_of, p1)
            r.setdefault(f"{name}_total", []).extend(total.tolist())
            r.setdefault(f"{name}_family", []).extend(fam.tolist())
            r.setdefault(f"{name}_family_quiet", []).extend(f for f, q in zip(fam.tolist(), quiet) if q)
        r.setdefault("untouched_first_quiet", []).extend(float(-lb[ib[0]]) for (_, ib), q in zip(picked, quiet) if q)
    result = {"machine": machine_info(), "packages": package_versions(), "command": command_line(),
              "student": args.student, "teacher": args.teacher, "transplanted": args.transplanted,
              "data": {"validation_docs": len(texts), "chars": sum(map(len, texts))}, "domains": {}}
    for dom, r in sorted(rows.items()):
        mean = {k: round(sum(v) / len(v), 3) for k, v in r.items()}
        out = {"chunks": len(r["untouched_total"]), "quiet_chunks": len(r["untouched_first_quiet"]),
               "untouched": {"total": mean["untouched_total"], "first_piece": mean["untouched_first"],
                             "rest": round(mean["untouched_total"] - mean["untouched_first"], 3),
                             "first_piece_quiet": mean.get("untouched_first_quiet")}}
        for name in models:
            out[name] = {"total": mean[f"{name}_total"], "family": mean[f"{name}_family"],
                         "share": round(mean[f"{name}_total"] - mean[f"{name}_family"], 3),
                         "family_quiet": mean.get(f"{name}_family_quiet")}
        result["domains"][dom] = out
        print(dom, out)
    write_json(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
