"""Resolve any model spec (catalogue name, local HF folder, GGUF path, hub id) and load it."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch

from xtok.models import catalogue as cat
from xtok.models.convert import DTYPES, MODEL_INFO_FILE, STORED_DTYPES, convert_gguf, extract_tokenizer, stale_reason

log = logging.getLogger(__name__)

LOCKS_DIR = ".locks"  # in a cache folder: the build locks of its entries
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else cat.default_cache_dir()


def catalogue_model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    return _cache(cache_dir) / "models" / name


def _current(folder: Path, marker: str, say_why: bool = True) -> bool:
    """Whether the cached ``folder`` is complete (has ``marker``) and was built by the running versions."""
    if not (folder / marker).is_file():
        return False
    why = stale_reason(folder)
    if why and say_why:
        log.info("rebuilding %s: %s", folder, why)
    return why is None


def _build_once(out: Path, is_current: Callable[[], bool], build: Callable[[bool], object]) -> Path:
    """The cached folder ``out``, built by ``build(overwrite)`` unless ``is_current()``; one process at a time (a file
    lock in ``.locks`` beside it, kept: removing a lock file while another process waits on it breaks the lock), so
    a process that waited for another's build finds that folder current and reuses it."""
    from filelock import FileLock

    if is_current():
        return out
    locks = out.parent / LOCKS_DIR
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{out.name}.lock")):
        if not is_current():
            build(out.exists())
    return out


def _stored_dtype_differs(folder: Path, entry: cat.CatalogueModel, say_why: bool = True) -> bool:
    try:
        stored = json.loads((folder / MODEL_INFO_FILE).read_text(encoding="utf-8")).get("stored_dtype", "float32")
    except (OSError, ValueError, AttributeError):
        stored = None
    if stored != entry.store_dtype and say_why:
        log.info("rebuilding %s: it stores %s, the catalogue asks for %s", folder, stored, entry.store_dtype)
    return stored != entry.store_dtype


def is_prepared(name: str, cache_dir: str | Path | None = None) -> bool:
    """Whether catalogue model ``name`` has a converted folder in the cache that the running versions built."""
    folder = catalogue_model_dir(name, cache_dir)
    return _current(folder, "config.json", say_why=False) and not _stored_dtype_differs(folder, cat.get_entry(name), False)


def prepare(name: str, cache_dir: str | Path | None = None, *, force: bool = False) -> Path:
    """Convert catalogue model ``name`` into a verified HF folder in the cache, once (again when the build versions change)."""
    entry = cat.get_entry(name)
    out = catalogue_model_dir(name, cache_dir)
    def current() -> bool:  # forced: never, so the build runs once under the lock
        return not force and _current(out, "config.json") and not _stored_dtype_differs(out, entry)

    def build(exists: bool) -> None:
        gguf = cat.gguf_file(entry, _cache(cache_dir))
        log.info("converting catalogue model %s (later runs reuse %s)", name, out)
        convert_gguf(gguf, out, overwrite=exists, info={"catalogue_name": name, "sha256": entry.sha256},
                     store_dtype=entry.store_dtype)

    return _build_once(out, current, build)


def _check_folder(path: Path, need_model: bool) -> None:
    if need_model and not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: it is not a Hugging Face model folder")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(
            f"{path} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); save one there with "
            "tokenizer.save_pretrained(path) or pass a folder that has it"
        )


def _gguf_dir(path: Path, cache_dir: str | Path | None) -> Path:
    st = path.stat()
    return _cache(cache_dir) / "models" / f"gguf-{path.stem}-{st.st_size:x}-{int(st.st_mtime):x}"


def resolve_model(spec: str | Path, cache_dir: str | Path | None = None) -> str:
    """Return what ``from_pretrained`` should load for ``spec`` (a folder path, or a hub id).

    Catalogue names and GGUF files are converted into the cache on first use.
    """
    spec_s = str(spec)
    if spec_s in cat.CATALOGUE:
        return str(prepare(spec_s, cache_dir))
    path = Path(spec_s).expanduser()
    if path.is_dir():
        _check_folder(path, need_model=True)
        return str(path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        out = _gguf_dir(path, cache_dir)
        return str(_build_once(out, lambda: _current(out, "config.json"),
                               lambda exists: convert_gguf(path, out, overwrite=exists)))
    if path.exists():
        raise ValueError(f"{path} is neither a model folder nor a .gguf file")
    if spec_s.count("/") == 1 and not spec_s.startswith((".", "/", "~")):
        return spec_s  # a hub id: transformers loads it where a network or a local hub cache exists
    raise ValueError(
        f"unknown model {spec_s!r}: not a catalogue name ({', '.join(cat.CATALOGUE)}), an existing folder, "
        "a .gguf file or a hub id (org/name)"
    )


def resolve_tokenizer(spec: str | Path, cache_dir: str | Path | None = None) -> str:
    """Like resolve_model, but a catalogue model needs only its tokenizer extracted, not a conversion."""
    spec_s = str(spec)
    if spec_s in cat.CATALOGUE:
        if is_prepared(spec_s, cache_dir):
            return str(catalogue_model_dir(spec_s, cache_dir))
        out = _cache(cache_dir) / "tokenizers" / spec_s
        return str(_build_once(out, lambda: _current(out, "tokenizer_config.json"), lambda exists: extract_tokenizer(
            cat.gguf_file(cat.get_entry(spec_s), _cache(cache_dir)), out, overwrite=exists)))
    path = Path(spec_s).expanduser()
    if path.is_dir():
        _check_folder(path, need_model=False)
        return str(path)
    if path.suffix == ".gguf" and path.is_file():
        out = _gguf_dir(path, cache_dir)
        if _current(out, "config.json", say_why=False):
            return str(out)
        tok_out = out.with_name(out.name + "-tokenizer")
        return str(_build_once(tok_out, lambda: _current(tok_out, "tokenizer_config.json"),
                               lambda exists: extract_tokenizer(path, tok_out, overwrite=exists)))
    return resolve_model(spec_s, cache_dir)


def load_tokenizer(spec: str | Path, cache_dir: str | Path | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_tokenizer(spec, cache_dir))


def load_causal_lm(spec: str | Path, cache_dir: str | Path | None = None, dtype: str = "float32"):
    """Load a model alone, in eval mode, from any spec."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model(spec, cache_dir), dtype=torch_dtype(dtype)).eval()


def load_model(spec: str | Path, cache_dir: str | Path | None = None, dtype: str = "float32"):
    """Load (model, tokenizer) in eval mode from any spec."""
    from transformers import AutoTokenizer

    where = resolve_model(spec, cache_dir)
    return load_causal_lm(where, dtype=dtype), AutoTokenizer.from_pretrained(where)


SAFETENSORS_DTYPES = STORED_DTYPES


def stored_tensors(folder: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (safetensors dtype, shape)} of a model folder's safetensors files, from their headers (nothing loaded)."""
    from safetensors import safe_open

    out = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                s = f.get_slice(name)
                out[name] = (s.get_dtype(), tuple(s.get_shape()))
    return out


def folder_parameters(folder: str | Path) -> int:
    """Parameters stored in a model folder's safetensors files (headers only)."""
    return sum(math.prod(shape) for _, shape in stored_tensors(folder).values())


def stored_dtype(spec: str | Path, cache_dir: str | Path | None = None) -> str:
    """The floating dtype holding most of a model's stored parameters ("float32", "bfloat16", "float16"): what a
    transplant writes by default. A catalogue model is stored in float32 (converted from GGUF); a folder without
    safetensors files (a .bin checkpoint) counts as float32."""
    counts: dict[str, int] = {}
    for dtype, shape in stored_tensors(resolve_model(spec, cache_dir)).values():
        if dtype in SAFETENSORS_DTYPES:
            name = SAFETENSORS_DTYPES[dtype]
            counts[name] = counts.get(name, 0) + math.prod(shape)
    return max(counts, key=counts.get) if counts else "float32"
