"""Resumable pipelines: a stage is skipped when its recorded inputs equal the current ones.

Each finished stage leaves ``<run>/stages.json`` an entry {key, result}; ``key`` is a hash of the
stage's settings and the keys of the stages it consumes, so changing a setting reruns that stage and
every stage downstream of it, and nothing else. A stage run from a config is keyed by ``config_key``:
the full resolved config (defaults included) and the xtok version, so a release that changes a default
or the code reruns what it changes instead of reusing an output the current code would not make.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from xtok.utils.io import write_json

log = logging.getLogger(__name__)

LEDGER = "stages.json"


def stage_key(settings: Any, *upstream: str) -> str:
    blob = json.dumps([settings, list(upstream)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_key(config: BaseModel, *upstream: str, exclude: Iterable[str] = ("out", "overwrite")) -> str:
    """The key of a stage that runs ``config``: every resolved field (defaults too) but ``exclude`` (where it writes,
    not what it computes), the xtok version, and the keys of the stages it consumes."""
    import xtok

    settings = config.model_dump(mode="json", exclude=set(exclude))
    return stage_key({"config": settings, "xtok": xtok.__version__}, *upstream)


class Pipeline:
    def __init__(self, run: Path):
        self.run = run
        self.path = run / LEDGER
        self.ledger: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.ran: list[str] = []

    def stage(self, name: str, key: str, fn: Callable[[], dict], outputs: tuple[Path, ...] = ()) -> dict:
        """``fn()``'s result, recomputed only when ``key`` changed or one of ``outputs`` is missing."""
        entry = self.ledger.get(name)
        if entry and entry["key"] == key and all(p.exists() for p in outputs):
            log.info("stage %s: unchanged, skipped", name)
            return entry["result"]
        log.info("stage %s: running", name)
        t0 = time.perf_counter()
        result = fn()
        self.ledger[name] = {"key": key, "seconds": round(time.perf_counter() - t0, 1), "result": result}
        self.ran.append(name)
        write_json(self.path, self.ledger)
        return result

    def seconds(self) -> dict[str, float]:
        return {name: e["seconds"] for name, e in self.ledger.items()}
