"""What a GGUF file says its tokenizer does, and making the transformers tokenizer built from it do exactly that.

transformers builds a tokenizer from the GGUF's vocabulary, but whether it adds ``<bos>``/``<eos>``,
which tokens hold the special roles and which chat template it carries have changed between
transformers releases (Gemma-3 adds no ``<bos>`` under 5.19.0 and does under 5.23.0). The GGUF
metadata is the model's own answer, so xtok reads it (``tokenizer.ggml.add_bos_token`` and friends)
and sets the tokenizer from it, then checks the result by tokenizing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROLE_KEYS = {  # tokenizer attribute -> GGUF metadata key holding its id
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
}
# llama.cpp's defaults when a GGUF does not say: SentencePiece ("llama") vocabularies add <bos>, BPE ("gpt2") ones do not.
ADD_BOS_DEFAULT = {"llama": True}
CHECK_TEXT = "Hello world"


class ConversionError(RuntimeError):
    """A GGUF file could not be turned into a Hugging Face folder that behaves like it."""


class TokenizerSpecError(ConversionError):
    """The tokenizer built from a GGUF does not do what the GGUF's metadata says."""


@dataclass(frozen=True)
class GGUFTokenizerSpec:
    """The tokenizer behaviour a GGUF file records; ``None`` where it records nothing."""

    model: str | None  # tokenizer.ggml.model: "llama" (SentencePiece), "gpt2" (byte-level BPE), ...
    token_ids: dict[str, int]  # role (bos_token, eos_token, pad_token, unk_token) -> id, for the roles it names
    add_bos: bool
    add_eos: bool
    chat_template: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _field(reader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def read_tokenizer_spec(reader) -> GGUFTokenizerSpec:
    """The tokenizer behaviour recorded in an open ``gguf.GGUFReader``."""
    model = _field(reader, "tokenizer.ggml.model")
    ids = {role: int(v) for role, key in ROLE_KEYS.items() if (v := _field(reader, key)) is not None}
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token")
    add_eos = _field(reader, "tokenizer.ggml.add_eos_token")
    template = _field(reader, "tokenizer.chat_template")
    return GGUFTokenizerSpec(
        model=model,
        token_ids=ids,
        add_bos=bool(ADD_BOS_DEFAULT.get(model, False) if add_bos is None else add_bos),
        add_eos=bool(add_eos) if add_eos is not None else False,
        chat_template=template or None,
    )


def apply_tokenizer_spec(tokenizer, spec: GGUFTokenizerSpec, source: str | Path) -> None:
    """Set the special tokens, BOS/EOS adding and chat template of ``tokenizer`` (modified in place) from ``spec``."""
    n = len(tokenizer)
    for role, token_id in spec.token_ids.items():
        if not 0 <= token_id < n:
            raise TokenizerSpecError(
                f"{source} names token id {token_id} as {role}, but its tokenizer has only {n} tokens: the GGUF metadata "
                "is inconsistent; use another GGUF file"
            )
        token = tokenizer.convert_ids_to_tokens(token_id)
        if getattr(tokenizer, role) != token:
            log.debug("%s: %s %r -> %r (GGUF metadata)", source, role, getattr(tokenizer, role), token)
            setattr(tokenizer, role, token)
    if not hasattr(tokenizer, "update_post_processor"):
        raise TokenizerSpecError(
            f"the tokenizer transformers built from {source} is a {type(tokenizer).__name__}, not a fast (tokenizers) "
            "tokenizer, so xtok cannot set its BOS/EOS adding; install the `tokenizers` package"
        )
    # Each setter rebuilds the post-processor from the (now final) bos/eos tokens.
    tokenizer.add_bos_token = spec.add_bos
    tokenizer.add_eos_token = spec.add_eos
    tokenizer.chat_template = spec.chat_template
    check_tokenizer_spec(tokenizer, spec, source)


def check_tokenizer_spec(tokenizer, spec: GGUFTokenizerSpec, where: str | Path) -> None:
    """Raise TokenizerSpecError unless ``tokenizer`` does what ``spec`` says: roles, BOS/EOS adding, chat template."""
    problems = []
    for role, token_id in spec.token_ids.items():
        if getattr(tokenizer, f"{role}_id") != token_id:
            problems.append(f"{role} id is {getattr(tokenizer, f'{role}_id')}, the GGUF says {token_id}")
    plain = tokenizer(CHECK_TEXT, add_special_tokens=False)["input_ids"]
    full = tokenizer(CHECK_TEXT)["input_ids"]
    bos, eos = spec.token_ids.get("bos_token", tokenizer.bos_token_id), spec.token_ids.get("eos_token", tokenizer.eos_token_id)
    if (spec.add_bos and bos is None) or (spec.add_eos and eos is None):
        raise TokenizerSpecError(f"{where}: the GGUF asks to add a BOS/EOS token but names none (add_bos={spec.add_bos}, "
                                 f"add_eos={spec.add_eos}); use another GGUF file")
    expected = ([bos] if spec.add_bos else []) + plain + ([eos] if spec.add_eos else [])
    if full != expected:
        problems.append(f"{CHECK_TEXT!r} tokenizes to {full}, expected {expected} (add_bos={spec.add_bos}, add_eos={spec.add_eos})")
    if (tokenizer.chat_template or None) != spec.chat_template:
        problems.append("its chat template differs from the GGUF's")
    if problems:
        raise TokenizerSpecError(f"the tokenizer at {where} does not do what its GGUF says: " + "; ".join(problems))
