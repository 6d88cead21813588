"""One small registry class and the project's registries.

A new init method, loss or drafter backend is one function and one decorator::

    @INIT_METHODS.register("mean", help="mean of the anchor rows")
    def mean_init(...): ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    """A named collection of callables, filled by decorators at import time of their module."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._modules = modules  # modules whose import fills this registry
        self._items: dict[str, Callable[..., Any]] = {}
        self._help: dict[str, str] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, *, help: str = "", **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator; ``meta`` holds facts callers check before use (e.g. ``needs_donor=True``)."""

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items and self._items[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is registered twice; pick another name")
            self._items[name] = fn
            self._help[name] = help or (fn.__doc__ or "").strip().split("\n")[0]
            self._meta[name] = meta
            return fn

        return decorator

    def _load(self) -> None:
        for module in self._modules:
            importlib.import_module(module)

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}")
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def help(self, name: str) -> str:
        self._load()
        return self._help[name]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# Every registry of the project, with the modules that fill it (imported on first use).
INIT_METHODS = Registry("init method", modules=("xtok.transplant.methods", "xtok.align.methods"))
LOSSES = Registry("loss", modules=("xtok.losses.kd",))
DRAFT_BACKENDS = Registry("drafter backend", modules=("xtok.speculative.hf", "xtok.speculative.vllm_backend"))
ENSEMBLE_MODES = Registry("ensemble mode", modules=("xtok.ensemble.mix",))
EMBEDDERS = Registry("co-occurrence embedding", modules=("xtok.align.embed",))

ALL_REGISTRIES: dict[str, Registry] = {
    "init methods": INIT_METHODS,
    "losses": LOSSES,
    "drafter backends": DRAFT_BACKENDS,
    "ensemble modes": ENSEMBLE_MODES,
    "co-occurrence embeddings": EMBEDDERS,
}
