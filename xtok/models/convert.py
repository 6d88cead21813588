"""GGUF → Hugging Face folder (safetensors, tokenizer, chat template, generation config), verified.

transformers dequantizes GGUF to float; a plain GGUF load cannot be saved, so the model is loaded
with ``GgufConfig(dequantize=True)``. The conversion is checked by reloading the written folder and
comparing its logits and tokenization with the GGUF-loaded model before the folder is renamed into
place, so a folder that exists is a folder that was verified.

The tokenizer's special tokens, BOS/EOS adding and chat template come from the GGUF metadata
(``gguf_tokenizer``), not from whatever the running transformers release defaults to. Every
folder records the versions that built it (``build_versions``); a cached folder built by other
versions is rebuilt (``stale_reason``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

import xtok
from xtok.models.gguf_tokenizer import ConversionError, GGUFTokenizerSpec, apply_tokenizer_spec, check_tokenizer_spec, read_tokenizer_spec
from xtok.utils.io import PROVENANCE_FILE, atomic_dir, package_versions, write_json, write_provenance

log = logging.getLogger(__name__)

__all__ = ["ConversionError", "build_versions", "check_gguf_readable", "compare_with_folder", "convert_gguf", "extract_tokenizer",
           "gguf_tokenizer", "load_gguf", "load_gguf_with_spec", "stale_reason"]

# Bump whenever what convert_gguf or extract_tokenizer writes changes: cached folders of another format are rebuilt.
# 2: special tokens, BOS/EOS adding and chat template set from the GGUF metadata; build versions recorded.
CONVERTER_FORMAT = 2
BUILD_PACKAGES = ("transformers", "tokenizers", "gguf")
MODEL_INFO_FILE = "xtok_model.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STORED_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}  # safetensors' names
PROBE_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife.\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n1234 + 5678 = 6912. Où est la gare?"
)


def build_versions() -> dict[str, Any]:
    """What a cached folder depends on: xtok, the converter's format and the packages that build tokenizers and models."""
    versions = package_versions(BUILD_PACKAGES)
    return {"xtok": xtok.__version__, "converter_format": CONVERTER_FORMAT, **{p: versions.get(p) for p in BUILD_PACKAGES}}


def stale_reason(folder: str | Path) -> str | None:
    """Why the cached ``folder`` must be rebuilt (other build versions, or none recorded), or None if it is current."""
    path = Path(folder) / PROVENANCE_FILE
    try:
        built = json.loads(path.read_text(encoding="utf-8")).get("build")
    except (OSError, ValueError, AttributeError):
        built = None
    if not isinstance(built, dict):
        return f"{path} records no build versions (made by an older xtok)"
    now = build_versions()
    diffs = [f"{k} {built.get(k)} (now {v})" for k, v in now.items() if built.get(k) != v]
    return "it was built with " + ", ".join(diffs) if diffs else None


def _record(spec: GGUFTokenizerSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    out = spec.to_json()
    if spec.chat_template is not None:
        out["chat_template"] = "sha256:" + hashlib.sha256(spec.chat_template.encode("utf-8")).hexdigest()
    return out


def check_gguf_readable(path: Path):
    """Fail early, with the path in the message, on a truncated or corrupt GGUF; return its open ``gguf.GGUFReader``."""
    import gguf

    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
        size = path.stat().st_size
        for tensor in reader.tensors:
            if int(tensor.data_offset) + int(tensor.n_bytes) > size:
                raise ValueError(f"tensor {tensor.name} ends past the end of the file")
    except Exception as exc:  # gguf raises ValueError, struct.error, IndexError, ... on bad files
        raise ConversionError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); it is corrupt or truncated: "
            "download or assemble it again"
        ) from exc
    return reader


def gguf_tokenizer(path: Path, reader=None) -> tuple[Any, GGUFTokenizerSpec]:
    """The tokenizer of a GGUF file, set to do what its metadata says, and that metadata."""
    from transformers import AutoTokenizer

    spec = read_tokenizer_spec(reader if reader is not None else check_gguf_readable(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    apply_tokenizer_spec(tokenizer, spec, path)
    return tokenizer, spec


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """Load tokenizer (set from the GGUF metadata) and dequantized model from a GGUF file with transformers."""
    tokenizer, model, _ = load_gguf_with_spec(path, dtype)
    return tokenizer, model


def load_gguf_with_spec(path: Path, dtype: torch.dtype = torch.float32):
    """Like load_gguf, and also the tokenizer behaviour the GGUF records: (tokenizer, model, spec)."""
    from transformers import AutoModelForCausalLM, GgufConfig

    reader = check_gguf_readable(path)
    t0 = time.perf_counter()
    tokenizer, spec = gguf_tokenizer(path, reader)
    del reader
    t_tok = time.perf_counter() - t0
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, quantization_config=GgufConfig(dequantize=True), dtype=dtype
    )
    model.eval()
    log.info("loaded %s (tokenizer %.1fs, model %.1fs)", path.name, t_tok, time.perf_counter() - t0 - t_tok)
    return tokenizer, model, spec


@torch.no_grad()
def probe_logits(model, tokenizer, text: str = PROBE_TEXT) -> tuple[list[int], torch.Tensor]:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    return ids[0].tolist(), model(input_ids=ids).logits[0].float()


def compare_tokenizer_with_folder(tokenizer, folder: Path, spec: GGUFTokenizerSpec | None = None):
    """Reload the tokenizer saved in ``folder``; raise ConversionError unless it behaves like ``tokenizer`` (and ``spec``)."""
    from transformers import AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(str(folder))
    ids, ids2 = tokenizer(PROBE_TEXT)["input_ids"], tok2(PROBE_TEXT)["input_ids"]
    if ids2 != ids:
        raise ConversionError(f"the tokenizer written to {folder} tokenizes the probe differently: {ids2[:20]} vs {ids[:20]}")
    for role in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if getattr(tok2, role) != getattr(tokenizer, role):
            raise ConversionError(f"{role} changed in conversion: {getattr(tok2, role)!r} vs {getattr(tokenizer, role)!r}")
    if (tok2.chat_template or None) != (tokenizer.chat_template or None):
        raise ConversionError(f"the tokenizer written to {folder} lost or changed its chat template")
    if spec is not None:
        check_tokenizer_spec(tok2, spec, folder)
    return tok2


def compare_with_folder(model, tokenizer, folder: Path, atol: float = 1e-4, spec: GGUFTokenizerSpec | None = None,
                        ref_logits: torch.Tensor | None = None) -> float:
    """Reload ``folder`` in float32 and check that it tokenizes and scores the probe like (model, tokenizer).

    ``ref_logits`` (the probe's float32 logits) stand in for running ``model`` where it is no longer in float32.
    Returns the largest absolute logit difference; raises ConversionError beyond ``atol``.
    """
    from transformers import AutoModelForCausalLM

    if ref_logits is None:
        _, ref_logits = probe_logits(model, tokenizer)
    tok2 = compare_tokenizer_with_folder(tokenizer, folder, spec)
    model2 = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    _, logits2 = probe_logits(model2, tok2)
    del model2
    diff = (logits2 - ref_logits).abs().max().item()
    if not diff <= atol:  # also catches NaN
        raise ConversionError(f"logits of the converted folder {folder} differ from the source model by {diff:.3g} (> {atol})")
    return diff


@torch.no_grad()
def round_to_storage(model, dtype: torch.dtype) -> None:
    """Round every floating parameter of a float32 ``model`` through ``dtype`` in place (it stays float32): the
    model that a folder stored in ``dtype`` and loaded in float32 holds."""
    for p in model.parameters():
        if p.is_floating_point():
            p.copy_(p.to(dtype))


def _stored_as(folder: Path, dtype: str) -> None:
    from safetensors import safe_open

    other = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                d = f.get_slice(name).get_dtype()
                if STORED_DTYPES.get(d, dtype) != dtype:
                    other[name] = d
    if other:
        raise ConversionError(f"{folder} stores {len(other)} tensors in another dtype than {dtype}, e.g. {next(iter(other.items()))}")


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, *, overwrite: bool = False, info: dict[str, Any] | None = None,
                 store_dtype: str = "float32") -> Path:
    """Convert one GGUF file into a verified Hugging Face folder at ``out_dir`` (atomically).

    The GGUF is dequantized to float32 and checked there. ``store_dtype="bfloat16"`` (or ``"float16"``) writes half
    the bytes: the weights are rounded once to that dtype, the reloaded folder must score the probe like the rounded
    model in float32 (the same check as a float32 folder), and what the rounding itself moved (largest logit change,
    top-1 agreement on the probe, against the unrounded model) is recorded.
    """
    if store_dtype not in DTYPES:
        raise ValueError(f"store_dtype {store_dtype!r} is not one of {', '.join(DTYPES)}")
    gguf_path = Path(gguf_path)
    t0 = time.perf_counter()
    tokenizer, model, spec = load_gguf_with_spec(gguf_path)
    t_load = time.perf_counter() - t0
    rounding: dict[str, Any] = {}
    ref_logits = None
    if store_dtype != "float32":
        _, exact = probe_logits(model, tokenizer)
        round_to_storage(model, DTYPES[store_dtype])
        _, ref_logits = probe_logits(model, tokenizer)
        rounding = {"rounding_max_abs_logit_change": (ref_logits - exact).abs().max().item(),
                    "rounding_top1_agreement": (ref_logits.argmax(-1) == exact.argmax(-1)).float().mean().item()}
        del exact
    record = {
        "source_gguf": str(gguf_path),
        "architecture": model.config.model_type,
        "vocab_size": model.config.vocab_size,
        "tokenizer_len": len(tokenizer),
        "tied_embeddings": bool(model.config.tie_word_embeddings),
        "parameters": sum(p.numel() for p in model.parameters()),
        "special_tokens": {r: getattr(tokenizer, r) for r in ("bos_token", "eos_token", "pad_token", "unk_token")},
        "stored_dtype": store_dtype,
    }
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if ref_logits is not None:
            model.to(DTYPES[store_dtype])  # in place: the float32 copy is freed before the folder is reloaded
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _stored_as(tmp, store_dtype)
        diff = compare_with_folder(model, tokenizer, tmp, spec=spec, ref_logits=ref_logits)
        record.update({
            "gguf_load_seconds": round(t_load, 2),
            "conversion_seconds": round(time.perf_counter() - t0, 2),
            "max_abs_logit_diff": diff,
            **rounding,
            **(info or {}),
        })
        write_json(tmp / MODEL_INFO_FILE, record)
        write_provenance(tmp, None, step="convert_gguf", build=build_versions(), gguf_tokenizer=_record(spec))
    log.info("converted %s -> %s in %.1fs (%s, max logit diff %.2g)", gguf_path.name, out_dir, record["conversion_seconds"],
             store_dtype, diff)
    return Path(out_dir)


def extract_tokenizer(gguf_path: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write only the tokenizer of a GGUF file as a verified Hugging Face tokenizer folder (fast to reload)."""
    gguf_path = Path(gguf_path)
    tokenizer, spec = gguf_tokenizer(gguf_path)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        tokenizer.save_pretrained(tmp)
        compare_tokenizer_with_folder(tokenizer, tmp, spec)
        write_provenance(tmp, None, step="extract_tokenizer", source_gguf=str(gguf_path), build=build_versions(),
                         gguf_tokenizer=_record(spec))
    log.info("extracted the tokenizer of %s -> %s", gguf_path.name, out_dir)
    return Path(out_dir)
