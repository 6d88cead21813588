"""Greedy agreement with the original: how many bytes of a model's greedy continuation match the original's.

Likelihood is not generation: a unified student can score text almost as well as the original and still
continue a prompt differently. Each model reads the prompt in its own tokenizer and continues it greedily
for ``max_new_tokens``; the continuations are compared as UTF-8 bytes from their first byte, up to the
shorter one. A continuation that stops at EOS is compared as far as it goes.

For a model with another tokenizer than the original, the share of its generated tokens that the original's
tokenizer lacks ("new") is set beside the share its own tokenizer gives the same text: a head that never lets a
new token win generates far fewer new tokens than its tokenizer would spell the text with.
"""

from __future__ import annotations

import torch

from xtok.vocab.shared import build_token_map


@torch.no_grad()
def greedy_continuations(model, tok, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Each prompt's greedy continuation (new token ids, EOS excluded)."""
    out = []
    eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else tok.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos]) - {None}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for prompt in prompts:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)[0, ids.shape[1]:].tolist()
        cut = next((j for j, t in enumerate(gen) if t in stop), len(gen))
        out.append(gen[:cut])
    return out


def common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def greedy_agreement(model, tok, original, original_tok, prompts: list[str], max_new_tokens: int = 32) -> dict:
    """Bytes of agreement between the greedy continuations of ``model`` and ``original`` on ``prompts``."""
    if not prompts:
        raise ValueError("no prompts for the greedy agreement; give data with at least one document")
    mine = greedy_continuations(model, tok, prompts, max_new_tokens)
    theirs = greedy_continuations(original, original_tok, prompts, max_new_tokens)
    agreed = compared = 0
    rows = []
    for ids_a, ids_b in zip(mine, theirs):
        a = tok.decode(ids_a, skip_special_tokens=True).encode("utf-8")
        b = original_tok.decode(ids_b, skip_special_tokens=True).encode("utf-8")
        n = common_prefix(a, b)
        agreed, compared = agreed + n, compared + min(len(a), len(b))
        rows.append({"agreed_bytes": n, "bytes": len(a), "original_bytes": len(b)})
    out = {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "mean_agreed_bytes": agreed / len(prompts),
           "agreed_share": agreed / compared if compared else None, "per_prompt": rows}
    tmap = build_token_map(tok, original_tok)
    is_new = tmap.student_of < 0
    generated = [t for ids in mine for t in ids if t < len(is_new)]
    if generated and is_new.any():  # another tokenizer than the original's
        texts = [tok.decode(ids, skip_special_tokens=True) for ids in mine]
        again = [t for ids in tok(texts, add_special_tokens=False)["input_ids"] for t in ids]
        out["new_token_share"] = {"generated": float(is_new[generated].float().mean()),
                                  "tokenizer_on_same_text": float(is_new[again].float().mean()) if again else None}
    return out
