"""Tokenizer identity: whether two tokenizers are one vocabulary, and the token a document starts with.

Every layer that compares tokenizers (distill, ensemble, align) or starts documents (eval, distill)
uses these, so "same vocabulary" and "a document's first token" mean one thing everywhere.
"""

from __future__ import annotations

import hashlib
import json

SPECIAL_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")


def vocab_fingerprint(tokenizer) -> str:
    """A short hash of the token -> id table and the special tokens: equal for one tokenizer saved twice,
    different when a token, an id or a special-token role differs."""
    table = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])  # pieces in id order
    specials = {role: str(getattr(tokenizer, role, None)) for role in SPECIAL_ROLES}
    text = json.dumps([table, specials], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]  # some vocabularies hold lone surrogates


def start_token_id(tokenizer) -> int:
    """The token every document starts with: the tokenizer's BOS, else its EOS."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start documents with; set tokenizer.bos_token")
