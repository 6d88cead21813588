"""The catalogue commands (xtok models list / prepare) and the registry and config listings (xtok ls / validate)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from xtok.cli.base import USER_ERRORS, State, _fail, app, console, err_console, models_app


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
    except USER_ERRORS as exc:
        _fail(exc)


@app.command("validate")
def validate_cmd(configs: Annotated[list[str], typer.Argument(help="YAML paths or config names")]) -> None:
    """Check configs against the schema without loading any model."""
    from xtok.configfile import validate_file

    bad = 0
    for c in configs:
        try:
            console.print(f"[green]ok[/] {c} ({validate_file(c)})")
        except (ValueError, OSError) as exc:
            bad += 1
            err_console.print(f"[red]invalid[/] {exc}")
    if bad:
        raise typer.Exit(1)


@app.command("ls")
def ls_cmd() -> None:
    """Recipes, configs and every registry."""
    from xtok.config import CONFIGS_DIR
    from xtok.recipes import recipe_names
    from xtok.registry import ALL_REGISTRIES

    console.print("[bold]recipes[/] (xtok run RECIPE --config NAME): " + ", ".join(recipe_names()))
    for p in sorted(CONFIGS_DIR.rglob("*.yaml")):
        console.print(f"  config {p.relative_to(CONFIGS_DIR)}")
    for title, reg in ALL_REGISTRIES.items():
        console.print(f"[bold]{title}:[/]")
        for name in reg.names():
            console.print(f"  {name}: {reg.help(name)}")
