"""The package's layers: what may import what (read from the source, lazy imports inside functions included)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import xtok

PACKAGE = Path(xtok.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("xtok", *path.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """xtok modules that ``path`` imports anywhere in it (``from pkg import sub`` counts as ``pkg.sub``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            found |= subs if len(subs) == len(node.names) else subs | {node.module}
    return found & MODULES.keys()


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_no_import_cycle():
    assert _cycle() is None, " -> ".join(_cycle())


def test_align_is_a_layer_below_transplant():
    """Only the align job (xtok.align.run, whose --apply composes a transplant) may import xtok.transplant."""
    bad = {m: sorted(i for i in GRAPH[m] if i.startswith("xtok.transplant")) for m in MODULES
           if m.startswith("xtok.align") and m != "xtok.align.run"}
    assert not any(bad.values()), {m: i for m, i in bad.items() if i}


def test_tokenizer_identity_has_one_home():
    where = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name in ("vocab_fingerprint", "start_token_id"):
                where.setdefault(node.name, []).append(name)
    assert where == {"vocab_fingerprint": ["xtok.vocab.identity"], "start_token_id": ["xtok.vocab.identity"]}


def test_config_stays_below_the_jobs():
    """Importing the schema and validating every shipped config loads no job layer (distill, eval, models, ...)."""
    code = ("import json, sys\nfrom xtok.config import CONFIGS_DIR\nfrom xtok.configfile import validate_file\n"
            "imported = sorted(sys.modules)\n"
            "[validate_file(p) for p in sorted(CONFIGS_DIR.rglob('*.yaml'))]\n"
            "print(json.dumps([imported, sorted(sys.modules)]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    on_import, after_validate = json.loads(res.stdout.strip().splitlines()[-1])
    schema = ("xtok.config", "xtok.configfile", "xtok.registry")  # xtok.config is a package: its submodules are schema
    assert not [m for m in on_import if m.startswith("xtok.") and m not in schema and not m.startswith("xtok.config.")]
    assert {"xtok.config.common", "xtok.config.training", "xtok.config.recipes"} <= set(on_import)
    jobs = ("xtok.distill", "xtok.eval", "xtok.models", "xtok.corpus", "xtok.recipes", "xtok.speculative.run",
            "xtok.ensemble.run", "xtok.transplant.run", "xtok.transplant.apply", "xtok.align.run", "xtok.align.pipeline")
    assert not [m for m in after_validate if m.startswith(jobs)]
