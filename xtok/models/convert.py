"""GGUF → Hugging Face folder (safetensors, tokenizer, chat template, generation config), verified.

transformers dequantizes GGUF to float; a plain GGUF load cannot be saved, so the model is loaded
with ``GgufConfig(dequantize=True)``. The conversion is checked by reloading the written folder and
comparing its logits and tokenization with the GGUF-loaded model before the folder is renamed into
place, so a folder that exists is a folder that was verified.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from xtok.utils.io import atomic_dir, write_json, write_provenance

log = logging.getLogger(__name__)

MODEL_INFO_FILE = "xtok_model.json"
PROBE_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife.\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n1234 + 5678 = 6912. Où est la gare?"
)


class ConversionError(RuntimeError):
    pass


def check_gguf_readable(path: Path) -> None:
    """Fail early, with the path in the message, on a truncated or corrupt GGUF."""
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


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """Load tokenizer and dequantized model from a GGUF file with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    check_gguf_readable(path)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    t_tok = time.perf_counter() - t0
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, quantization_config=GgufConfig(dequantize=True), dtype=dtype
    )
    model.eval()
    log.info("loaded %s (tokenizer %.1fs, model %.1fs)", path.name, t_tok, time.perf_counter() - t0 - t_tok)
    return tokenizer, model


@torch.no_grad()
def probe_logits(model, tokenizer, text: str = PROBE_TEXT) -> tuple[list[int], torch.Tensor]:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    return ids[0].tolist(), model(input_ids=ids).logits[0].float()


def compare_with_folder(model, tokenizer, folder: Path, atol: float = 1e-4) -> float:
    """Reload ``folder`` and check that it tokenizes and scores the probe like (model, tokenizer).

    Returns the largest absolute logit difference; raises ConversionError beyond ``atol``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref_ids, ref_logits = probe_logits(model, tokenizer)
    tok2 = AutoTokenizer.from_pretrained(str(folder))
    ids2 = tok2(PROBE_TEXT)["input_ids"]
    if ids2 != ref_ids:
        raise ConversionError(f"the tokenizer written to {folder} tokenizes the probe differently: {ids2[:20]} vs {ref_ids[:20]}")
    for role in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if getattr(tok2, role) != getattr(tokenizer, role):
            raise ConversionError(f"{role} changed in conversion: {getattr(tok2, role)!r} vs {getattr(tokenizer, role)!r}")
    model2 = AutoModelForCausalLM.from_pretrained(str(folder), dtype=ref_logits.dtype).eval()
    _, logits2 = probe_logits(model2, tok2)
    diff = (logits2 - ref_logits).abs().max().item()
    if not diff <= atol:  # also catches NaN
        raise ConversionError(f"logits of the converted folder {folder} differ from the source model by {diff:.3g} (> {atol})")
    return diff


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, *, overwrite: bool = False, info: dict[str, Any] | None = None) -> Path:
    """Convert one GGUF file into a verified Hugging Face folder at ``out_dir`` (atomically)."""
    gguf_path = Path(gguf_path)
    t0 = time.perf_counter()
    tokenizer, model = load_gguf(gguf_path)
    t_load = time.perf_counter() - t0
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        diff = compare_with_folder(model, tokenizer, tmp)
        record = {
            "source_gguf": str(gguf_path),
            "architecture": model.config.model_type,
            "vocab_size": model.config.vocab_size,
            "tokenizer_len": len(tokenizer),
            "tied_embeddings": bool(model.config.tie_word_embeddings),
            "parameters": sum(p.numel() for p in model.parameters()),
            "special_tokens": {r: getattr(tokenizer, r) for r in ("bos_token", "eos_token", "pad_token", "unk_token")},
            "gguf_load_seconds": round(t_load, 2),
            "conversion_seconds": round(time.perf_counter() - t0, 2),
            "max_abs_logit_diff": diff,
            **(info or {}),
        }
        write_json(tmp / MODEL_INFO_FILE, record)
        write_provenance(tmp, None, step="convert_gguf")
    log.info("converted %s -> %s in %.1fs (max logit diff %.2g)", gguf_path.name, out_dir, record["conversion_seconds"], diff)
    return Path(out_dir)


def extract_tokenizer(gguf_path: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write only the tokenizer of a GGUF file as a Hugging Face tokenizer folder (fast to reload)."""
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path)
    check_gguf_readable(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
