"""The single entry point: ``xtok <verb> ...``. Each verb validates its input and calls one library function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Cross-tokenizer tooling for pretrained LLMs.")
models_app = typer.Typer(no_args_is_help=True, help="The bundled model catalogue.")
app.add_typer(models_app, name="models")
# Piped output (scripts, CI logs) gets wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class State:
    cache_dir: Optional[Path] = None


@app.callback()
def _main(
    cache_dir: Annotated[Optional[Path], typer.Option(envvar="XTOK_CACHE_DIR", help="where converted models live")] = None,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="-v info, -vv debug")] = 0,
) -> None:
    level = logging.WARNING - 10 * min(verbose + 1, 2) if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=err_console, show_path=False)], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    State.cache_dir = cache_dir
    import datasets

    datasets.disable_progress_bars()


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


@models_app.command("list")
def models_list() -> None:
    """Catalogue models: names, sizes, vocabularies, whether installed and converted."""
    from xtok.models import catalogue as cat
    from xtok.models.load import catalogue_model_dir, is_prepared

    table = Table(title="xtok model catalogue")
    for col in ("name", "model", "arch", "vocab", "tokenizer", "GGUF MB", "installed", "converted"):
        table.add_column(col, no_wrap=col == "name")
    for entry in cat.CATALOGUE.values():
        converted = "-"
        if is_prepared(entry.name, State.cache_dir):
            folder = catalogue_model_dir(entry.name, State.cache_dir)
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            converted = f"{size / 1e6:.0f} MB"
        table.add_row(
            entry.name, entry.description, entry.arch, f"{entry.vocab_size:,}", entry.tokenizer_kind,
            f"{entry.gguf_size / 1e6:.0f}" if entry.gguf_size else "?", "yes" if cat.is_installed(entry) else "no", converted,
        )
    console.print(table)
    console.print(f"cache: {State.cache_dir or cat.default_cache_dir()}")


@models_app.command("prepare")
def models_prepare(
    names: Annotated[Optional[list[str]], typer.Argument(help="catalogue names")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every CI-sized catalogue model")] = False,
    force: Annotated[bool, typer.Option(help="convert again even if converted")] = False,
) -> None:
    """Convert catalogue models from their GGUF into verified Hugging Face folders (once)."""
    from xtok.models import catalogue as cat
    from xtok.models.load import prepare

    chosen = [e.name for e in cat.CATALOGUE.values() if e.ci] if all_ else list(names or [])
    if not chosen:
        _fail(ValueError(f"name a model ({', '.join(cat.CATALOGUE)}) or pass --all"))
    try:
        for name in chosen:
            console.print(f"{name}: {prepare(name, State.cache_dir, force=force)}")
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(exc)


@app.command("eval")
def eval_cmd(
    models: Annotated[list[str], typer.Argument(help="catalogue names, HF folders or GGUF files")],
    data: Annotated[str, typer.Option(help="bundled:eval, bundled:train, a jsonl/txt file or folder")] = "bundled:eval",
    domains: Annotated[Optional[list[str]], typer.Option("--domain", help="only these domains")] = None,
    max_docs: Annotated[Optional[int], typer.Option(help="documents per domain")] = None,
    max_chars: Annotated[Optional[int], typer.Option(help="truncate each document")] = None,
    window: int = 1024,
    overlap: int = 256,
    batch_tokens: int = 8192,
    dtype: str = "float32",
    out: Annotated[Optional[Path], typer.Option(help="JSON output (default xtok-out/eval/<models>.json)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON line per model, no tables")] = False,
) -> None:
    """Bits per byte, bytes per token and digit splitting, per domain and overall."""
    from xtok.config import config_from_dict
    from xtok.eval.report import print_tables
    from xtok.eval.run import run_eval

    try:
        cfg = config_from_dict({
            "recipe": "eval", "models": models,
            "data": {"spec": data, "domains": domains or None, "max_docs_per_domain": max_docs, "max_chars_per_doc": max_chars},
            "eval": {"window": window, "overlap": overlap, "batch_tokens": batch_tokens, "dtype": dtype},
        }, "command line")
        slug = "+".join(Path(m).name for m in models)[:120]
        out = out or Path("xtok-out") / "eval" / f"{slug}.json"
        results = run_eval(cfg, State.cache_dir, out, progress=not as_json)
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(exc)
    if as_json:
        for r in results:
            sys.stdout.write(json.dumps(r) + "\n")
    else:
        print_tables(results, console)
        console.print(f"written: {out}")


@app.command("transplant")
def transplant_cmd(
    student: Annotated[Optional[str], typer.Option(help="model to receive the new tokenizer")] = None,
    teacher: Annotated[Optional[str], typer.Option(help="model (or tokenizer) whose vocabulary the student gets")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output folder (a plain HF model folder)")] = None,
    method: Annotated[Optional[str], typer.Option(help="init method for new tokens [default: omp] (xtok ls)")] = None,
    head_method: Annotated[Optional[str], typer.Option(help="init method of the output head [default: focus]")] = None,
    k: Annotated[Optional[int], typer.Option(help="OMP sparsity [default: 8]")] = None,
    candidates: Annotated[Optional[int], typer.Option(help="OMP: search each token's m most correlated anchors [128]")] = None,
    exact: Annotated[Optional[bool], typer.Option("--exact", help="OMP over all anchors (slow on CPUs without AMX)")] = None,
    chunk: Annotated[Optional[int], typer.Option(help="new tokens per OMP step [default: 1024]")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="OMP correlation dtype: auto, float32, bfloat16")] = None,
    teacher_tokenizer_only: Annotated[Optional[bool], typer.Option(help="use the teacher's tokenizer only")] = None,
    overwrite: Annotated[Optional[bool], typer.Option(help="replace an existing output folder")] = None,
    config: Annotated[Optional[str], typer.Option(help="a transplant YAML; options given here override it")] = None,
) -> None:
    """Give STUDENT the TEACHER's tokenizer: shared tokens copied, new ones by OMP (or another method)."""
    from xtok.config import config_from_dict, load_config
    from xtok.transplant.run import run_transplant

    given = {"student": student, "teacher": teacher, "out": str(out) if out else None, "method": method,
             "head_method": head_method, "k": k, "candidates": candidates, "exact": exact, "chunk": chunk, "dtype": dtype,
             "teacher_tokenizer_only": teacher_tokenizer_only, "overwrite": overwrite}
    try:
        base = load_config(config, recipe="transplant").model_dump() if config else {"recipe": "transplant"}
        base.update({key: value for key, value in given.items() if value is not None})
        for key in ("student", "teacher"):
            if not base.get(key):
                raise ValueError(f"missing --{key}")
        cfg = config_from_dict(base, "command line")
        folder, report = run_transplant(cfg, State.cache_dir)
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(exc)
    t = report["tokens"]
    console.print(f"transplanted {report['student']} <- {report['teacher']} tokenizer with {report['method']}: "
                  f"{t['shared_bytes']} shared, {t['shared_special']} special by role, {t['new']} new; "
                  f"{report['seconds']}s -> {folder}")


@app.command("draft-check")
def draft_check_cmd(
    target: Annotated[str, typer.Option(help="the model drafted for")],
    drafter: Annotated[str, typer.Option(help="the draft model (same vocabulary, or --cross-tokenizer)")],
    prompts: Annotated[str, typer.Option(help="documents whose beginnings are the prompts")] = "bundled:eval",
    k: Annotated[int, typer.Option(help="draft tokens per round")] = 4,
    num_prompts: int = 8,
    prompt_chars: int = 256,
    max_new_tokens: int = 64,
    backend: Annotated[str, typer.Option(help="hf or vllm (xtok ls lists backends)")] = "hf",
    cross_tokenizer: Annotated[bool, typer.Option(help="baseline: the drafter keeps its own tokenizer (hf: UAG, "
                                                       "vllm: heterogeneous vocab)")] = False,
    out: Annotated[Optional[Path], typer.Option(help="JSON output (default xtok-out/draft-check/<drafter>.json)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON line")] = False,
) -> None:
    """Acceptance rate, mean acceptance length, per-position acceptance, speed-up, and greedy losslessness."""
    from xtok.config import config_from_dict
    from xtok.speculative.run import run_draft_check

    try:
        cfg = config_from_dict({"recipe": "draft_check", "target": target, "drafter": drafter, "prompts": prompts, "k": k,
                                "num_prompts": num_prompts, "prompt_chars": prompt_chars, "max_new_tokens": max_new_tokens,
                                "backend": backend, "cross_tokenizer": cross_tokenizer}, "command line")
        out = out or Path("xtok-out") / "draft-check" / f"{Path(drafter).name}.json"
        res = run_draft_check(cfg, State.cache_dir, out, progress=not as_json)
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(res) + "\n")
        return
    table = Table(title=f"drafter {drafter} for {target} (k={k}, {backend})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("acceptance_rate", "mean_acceptance_length", "tokens_per_second_target_alone", "tokens_per_second_with_drafter",
                "speedup", "lossless"):
        v = res[key]
        table.add_row(key, f"{v:.3f}" if isinstance(v, float) else str(v))
    table.add_row("acceptance per position", " ".join("-" if p is None else f"{p:.2f}" for p in res["acceptance_per_position"]))
    console.print(table)
    console.print(f"written: {out}")


@app.command("validate")
def validate_cmd(configs: Annotated[list[str], typer.Argument(help="YAML paths or config names")]) -> None:
    """Check configs against the schema without loading any model."""
    from xtok.config import load_config

    bad = 0
    for c in configs:
        try:
            cfg = load_config(c)
            console.print(f"[green]ok[/] {c} ({cfg.recipe})")
        except (ValueError, OSError) as exc:
            bad += 1
            err_console.print(f"[red]invalid[/] {exc}")
    if bad:
        raise typer.Exit(1)


@app.command("ls")
def ls_cmd() -> None:
    """Recipes, configs and every registry."""
    from xtok.config import CONFIGS_DIR, RECIPE_SCHEMAS
    from xtok.registry import ALL_REGISTRIES

    console.print("[bold]recipes:[/] " + ", ".join(RECIPE_SCHEMAS))
    for p in sorted(CONFIGS_DIR.rglob("*.yaml")):
        console.print(f"  config {p.relative_to(CONFIGS_DIR)}")
    for title, reg in ALL_REGISTRIES.items():
        console.print(f"[bold]{title}:[/]")
        for name in reg.names():
            console.print(f"  {name}: {reg.help(name)}")


def main() -> None:
    app()
