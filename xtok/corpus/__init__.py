"""Corpus loading through ``datasets``: the bundled corpus, local jsonl/text files or folders, hub datasets."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

BUNDLED_SPLITS = ("eval", "train")
TEXT_SUFFIXES = (".jsonl", ".json", ".txt")


def bundled_dir(split: str) -> Path:
    if split not in BUNDLED_SPLITS:
        raise ValueError(f"unknown bundled split {split!r}; use bundled:eval or bundled:train")
    return Path(str(resources.files("xtok.corpus").joinpath("data", split)))


def _files(spec: str) -> list[Path]:
    if spec.startswith("bundled:"):
        return sorted(bundled_dir(spec.split(":", 1)[1]).glob("*.jsonl"))
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"folder {path} holds no {'/'.join(TEXT_SUFFIXES)} files")
        return files
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise ValueError(f"data file {path} must end in {', '.join(TEXT_SUFFIXES)}")
        return [path]
    return []


def _json_problem(path: Path) -> str | None:
    """Where a .jsonl/.json file is not JSON records: "line N is not JSON (why)", or None when it is."""
    import json

    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        try:
            json.loads(text)
            return None  # one JSON document (datasets reads an array of records or a dict of columns)
        except json.JSONDecodeError:
            pass  # JSON lines in a .json file, or broken: the lines say
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"line {n} is not JSON ({exc.msg}): {line[:40]!r}"
        if not isinstance(record, dict):
            return f"line {n} is not a JSON object but a {type(record).__name__}: {line[:40]!r}"
    return None


def _load_file(path: Path):
    import datasets

    if path.stat().st_size == 0:
        raise ValueError(f"data file {path} is empty; give a jsonl file with a 'text' field, or a text file")
    if path.suffix == ".txt":
        ds = datasets.load_dataset("text", data_files=str(path), sample_by="document", split="train")
    else:
        try:
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        except datasets.exceptions.DatasetGenerationError as exc:  # names neither the file nor the line: find them
            problem = _json_problem(path) or f"could not be read as JSON lines ({exc.__cause__ or exc})"
            raise ValueError(f"data file {path} {problem}; give one JSON object per line with a 'text' field "
                             "(or a .txt file: one document)") from None
    if "text" not in ds.column_names:
        raise ValueError(f"data file {path} has no 'text' field (fields: {', '.join(ds.column_names)})")
    if "domain" not in ds.column_names:
        ds = ds.add_column("domain", [path.stem] * len(ds))
    return ds.select_columns(["text", "domain"])


def load_corpus(
    spec: str = "bundled:eval",
    *,
    domains: list[str] | None = None,
    max_docs_per_domain: int | None = None,
    max_chars_per_doc: int | None = None,
):
    """Load documents as a ``datasets.Dataset`` with columns ``text`` and ``domain``.

    ``spec`` is ``bundled:eval``/``bundled:train``, a jsonl/json/txt file, a folder of them, or a hub
    dataset name (where a network exists). A document's domain is its ``domain`` field, else the
    file's stem.
    """
    import datasets

    files = _files(spec)
    if files:
        ds = datasets.concatenate_datasets([_load_file(f) for f in files])
    elif spec.startswith("bundled:") or Path(spec).suffix in TEXT_SUFFIXES or "/" not in spec:
        raise FileNotFoundError(f"data {spec!r} not found: give bundled:eval, bundled:train, a file or a folder")
    else:
        ds = datasets.load_dataset(spec, split="train")
        if "domain" not in ds.column_names:
            ds = ds.add_column("domain", [spec] * len(ds))
        ds = ds.select_columns(["text", "domain"])
    ds = ds.filter(lambda t: bool(t and t.strip()), input_columns="text")
    if domains:
        missing = sorted(set(domains) - set(ds.unique("domain")))
        if missing:
            raise ValueError(f"domains {missing} not in {spec!r}; it has {sorted(ds.unique('domain'))}")
        ds = ds.filter(lambda d: d in domains, input_columns="domain")
    if max_docs_per_domain is not None:
        seen: dict[str, int] = {}
        keep = []
        for i, d in enumerate(ds["domain"]):
            seen[d] = seen.get(d, 0) + 1
            if seen[d] <= max_docs_per_domain:
                keep.append(i)
        ds = ds.select(keep)
    if max_chars_per_doc is not None:
        ds = ds.map(lambda t: {"text": t[:max_chars_per_doc]}, input_columns="text")
    if len(ds) == 0:
        raise ValueError(f"data {spec!r} holds no non-empty documents")
    return ds


def domain_rounds(texts: list[str], domains: list[str], *, sort_domains: bool = False) -> list[list[str]]:
    """The documents in rounds: round i holds the i-th document of every domain that has one, the domains in the
    order first seen (or sorted), so a prefix of the rounds samples every domain alike."""
    by_domain: dict[str, list[str]] = {}
    for text, domain in zip(texts, domains):
        by_domain.setdefault(domain, []).append(text)
    order = sorted(by_domain) if sort_domains else list(by_domain)
    depth = max((len(v) for v in by_domain.values()), default=0)
    return [[by_domain[d][i] for d in order if i < len(by_domain[d])] for i in range(depth)]


def prompts_in_turn(texts: list[str], domains: list[str], n: int, chars: int) -> list[str]:
    """The first ``chars`` characters of up to ``n`` documents, taken from each domain in turn (domains sorted)."""
    return [t[:chars] for rnd in domain_rounds(texts, domains, sort_domains=True) for t in rnd][:n]

