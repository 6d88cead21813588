"""The alignment result: a target-to-source token map with the co-occurrence vectors it came from."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from xtok.align.mapping import ALIGNED, NO_VECTOR, SHARED, Side
from xtok.vocab.identity import vocab_fingerprint

MAP_FILE = "token_map.json"
VECTORS_FILE = "vectors.safetensors"
REPORT_FILE = "align_report.json"


@dataclass
class Alignment:
    """For each target (teacher) token id: the source (student) token whose row it takes, or -1."""

    source_of: torch.Tensor  # (V_t,) long, -1 where the token got no vector and is not shared
    how: list[str]  # per target id: "shared" (byte-canonical or special), "aligned", "no_vector"
    score: torch.Tensor  # (V_t,) float: cosine of relative representations (NaN unless aligned)
    target: Side
    source: Side
    target_fingerprint: str = ""
    source_fingerprint: str = ""
    fallback: str = "subword"  # init method for "no_vector" tokens

    def counts(self) -> dict[str, int]:
        c = Counter(self.how)
        return {"target_vocab": len(self.how), SHARED: c[SHARED], ALIGNED: c[ALIGNED], NO_VECTOR: c[NO_VECTOR]}

    def target_vectors(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask of ``ids`` that have a co-occurrence vector, their vectors (m, d))."""
        rows = self.target.row_of()[ids]
        has = rows >= 0
        return has, self.target.vectors[rows[has]]

    def check_tokenizers(self, teacher_tok, student_tok) -> None:
        """Refuse to apply the map to tokenizers other than the ones it was made from."""
        for role, tok, size, fp in (("target", teacher_tok, len(self.how), self.target_fingerprint),
                                    ("source", student_tok, self.source.vocab_size, self.source_fingerprint)):
            got = vocab_fingerprint(tok)
            if len(tok) != size or got != fp:
                raise ValueError(
                    f"the alignment was made for a {role} tokenizer of {size} tokens (fingerprint {fp}), but the given "
                    f"one has {len(tok)} tokens (fingerprint {got}); run xtok align again with these tokenizers"
                )


def save_alignment(al: Alignment, folder: Path) -> None:
    from safetensors.torch import save_file

    from xtok.utils.io import write_json

    write_json(folder / MAP_FILE, {
        "target_vocab_size": len(al.how), "source_vocab_size": al.source.vocab_size,
        "target_fingerprint": al.target_fingerprint, "source_fingerprint": al.source_fingerprint,
        "fallback": al.fallback, "counts": al.counts(),
        "source_of": al.source_of.tolist(), "how": al.how,
        "score": [None if s != s else round(s, 4) for s in al.score.tolist()],
    })
    save_file({f"{name}_{key}": getattr(side, key).contiguous() for name, side in (("target", al.target), ("source", al.source))
               for key in ("ids", "vectors", "counts")}, str(folder / VECTORS_FILE))


def load_alignment(folder: str | Path) -> Alignment:
    """Read an ``xtok align`` output folder."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    if not (folder / MAP_FILE).is_file() or not (folder / VECTORS_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not an xtok align output (no {MAP_FILE} / {VECTORS_FILE}); run xtok align first")
    meta = json.loads((folder / MAP_FILE).read_text(encoding="utf-8"))
    t = load_file(str(folder / VECTORS_FILE))
    sides = {name: Side(t[f"{name}_ids"], t[f"{name}_vectors"], t[f"{name}_counts"], meta[f"{name}_vocab_size"])
             for name in ("target", "source")}
    score = torch.tensor([float("nan") if s is None else s for s in meta["score"]])
    return Alignment(torch.tensor(meta["source_of"], dtype=torch.long), meta["how"], score, sides["target"], sides["source"],
                     meta["target_fingerprint"], meta["source_fingerprint"], meta["fallback"])
