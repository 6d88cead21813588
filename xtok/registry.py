"""One small registry class, the project's registries, and the typed spec of an init method.

A new init method, loss or drafter backend is one function and one decorator::

    @INIT_METHODS.register("omp", help="...", spec=MethodSpec(needs_donor=True, uses_k=True))
    def omp_init(space, new_ids): ...

What a choice of init methods needs (a teacher model, an alignment, a calibration) is checked in one
place, ``check_methods``, which the config schema, the transplant job and ``transplant()`` all call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


class Registry:
    """A named collection of callables, filled by decorators at import time of their module."""

    def __init__(self, kind: str, modules: tuple[str, ...] = (), spec_type: type | None = None) -> None:
        self.kind = kind
        self._modules = modules  # modules whose import fills this registry
        self._spec_type = spec_type  # entries declare their facts in one typed spec (no free-form meta)
        self._items: dict[str, Callable[..., Any]] = {}
        self._help: dict[str, str] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._specs: dict[str, Any] = {}

    def register(self, name: str, *, help: str = "", spec: Any = None,
                 **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator. A registry with a ``spec_type`` takes the entry's facts as ``spec`` (default: ``spec_type()``);
        the others take free-form ``meta`` (e.g. ``needs_teacher=False``)."""
        if self._spec_type is not None:
            spec = self._spec_type() if spec is None else spec
            if meta or not isinstance(spec, self._spec_type):
                raise TypeError(f"{self.kind} {name!r}: declare its facts as spec={self._spec_type.__name__}(...)")
        elif spec is not None:
            raise TypeError(f"{self.kind} entries take no spec; pass facts as keyword meta")

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items and self._items[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is registered twice; pick another name")
            self._items[name] = fn
            self._help[name] = help or (fn.__doc__ or "").strip().split("\n")[0]
            self._meta[name] = meta
            self._specs[name] = spec
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
        if self._spec_type is not None:
            raise TypeError(f"{self.kind} entries have a typed spec: use .spec({name!r})")
        self.get(name)
        return self._meta[name]

    def spec(self, name: str) -> Any:
        """The typed spec ``name`` was registered with (registries with a ``spec_type``)."""
        if self._spec_type is None:
            raise TypeError(f"{self.kind} entries have no typed spec: use .meta({name!r})")
        self.get(name)
        return self._specs[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclass(frozen=True)
class MethodSpec:
    """What an init method needs besides the student: each one registers its spec with ``INIT_METHODS``."""

    needs_donor: bool = False  # the teacher's embeddings (a teacher model, not only its tokenizer)
    needs_alignment: bool = False  # an ``xtok align`` output (a target -> source token map with vectors)
    needs_calibration: bool = False  # a prior of the teacher's tokens: from the teacher model or an alignment's counts
    head_only: bool = False  # builds output-head rows only (a head method, never the input method)
    uses_k: bool = False  # reads the sparsity k (at most the number of shared anchors)
    rowwise: bool = False  # each new row depends on its token alone: the rows can be made a slice of tokens at a time


@dataclass(frozen=True)
class MethodNeeds:
    """What a transplant with a given choice of methods has to be given (``check_methods``'s answer)."""

    teacher_model: bool  # load the teacher's weights: a method needs its embeddings, or the prior comes from it
    alignment: bool  # a method reads the alignment (check it against the tokenizers)
    calibration: bool  # the head method needs a calibration
    uses_k: bool


# Every registry of the project, with the modules that fill it (imported on first use).
INIT_METHODS = Registry("init method", modules=("xtok.transplant.methods", "xtok.transplant.tokalign"), spec_type=MethodSpec)
LOSSES = Registry("loss", modules=("xtok.losses.kd", "xtok.losses.alm"))
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


def check_methods(method: str, head_method: str | None = None, *, teacher_model: bool = True, alignment: bool = False,
                  fallback: str | None = None) -> MethodNeeds:
    """The one check of a choice of init methods against what is at hand; a ValueError names the fix.

    ``teacher_model``: whether the teacher's weights can be had (False for a teacher given as a tokenizer only);
    ``alignment``: whether an alignment is given; ``fallback``: its init method for tokens without a vector.
    """
    head = head_method or method
    spec = {m: INIT_METHODS.spec(m) for m in (method, head)}  # an unknown name fails here, listing the known ones
    if spec[method].head_only:
        raise ValueError(f"init method {method!r} builds output-head rows only; pass it as the head method "
                         f"(--head-method {method}) and choose another input method, e.g. omp")
    for m in (method, head):
        if spec[m].needs_alignment and not alignment:
            raise_no_alignment(m)
        if spec[m].needs_donor and not teacher_model:
            raise_no_donor(m)
    reads_alignment = any(spec[m].needs_alignment for m in (method, head))
    donor = any(spec[m].needs_donor for m in (method, head))
    if fallback is not None:
        fb = INIT_METHODS.spec(fallback)
        if fb.needs_alignment or fb.head_only or fb.needs_calibration:
            why = "needs an alignment itself" if fb.needs_alignment else "builds output-head rows only"
            raise ValueError(f"fallback {fallback!r} {why}: it initializes the tokens without a vector in both spaces; "
                             "use subword, omp or mean")
        if reads_alignment and fb.needs_donor:
            if not teacher_model:
                raise_no_donor(fallback)
            donor = True
    calibration = spec[head].needs_calibration
    if calibration and not teacher_model and not alignment:
        raise ValueError(f"head method {head!r} needs a prior of the teacher's tokens, from the teacher model (its next-token "
                         "distribution) or an alignment (its corpus counts); with a teacher given as a tokenizer only "
                         "(--teacher-tokenizer-only) pass --alignment DIR (from `xtok align`) or another --head-method")
    return MethodNeeds(teacher_model=donor or (calibration and not alignment), alignment=reads_alignment,
                       calibration=calibration, uses_k=any(spec[m].uses_k for m in (method, head)))


def raise_no_alignment(method: str) -> None:
    raise ValueError(f"init method {method!r} needs a token alignment; run `xtok align` first and pass its folder with "
                     "--alignment, or use `xtok align --apply`")


def raise_no_donor(method: str) -> None:
    ok = [m for m in INIT_METHODS.names() if not INIT_METHODS.spec(m).needs_donor]
    raise ValueError(f"init method {method!r} needs the teacher's embeddings, but the teacher is given as a bare tokenizer "
                     f"(--teacher-tokenizer-only, or a folder with no weights); give a teacher model, or use a method that "
                     f"works without: {', '.join(ok)}")
