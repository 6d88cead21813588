"""The app, its options and the helpers every command uses."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Cross-tokenizer tooling for pretrained LLMs.")
models_app = typer.Typer(no_args_is_help=True, help="The bundled model catalogue.")
app.add_typer(models_app, name="models")
# Piped output (scripts, CI logs) gets wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


# What a user's input can cause: reported as one line and exit 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, RuntimeError, OSError)


class State:
    cache_dir: Optional[Path] = None


def log_level(verbose: int) -> int:
    """No -v: warnings only; -v: info (what each step does); -vv: debug."""
    return (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]


@app.callback()
def _main(
    cache_dir: Annotated[Optional[Path], typer.Option(envvar="XTOK_CACHE_DIR", help="where converted models live")] = None,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, show_default=False,
                                         help="-v info, -vv debug (default: warnings only)")] = 0,
) -> None:
    logging.basicConfig(level=log_level(verbose), format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_path=False)], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    State.cache_dir = cache_dir
    import datasets

    datasets.disable_progress_bars()


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


def _config_from_options(recipe: str, config: str | None, given: dict, required: tuple[str, ...], data: dict | None = None):
    """A recipe config from an optional YAML with the command's options (those given, not None) over it."""
    from xtok.config import RECIPE_SCHEMAS
    from xtok.configfile import config_from_dict, load_config

    base = load_config(config, recipe=recipe).model_dump() if config else {"recipe": recipe}
    base.update({key: value for key, value in given.items() if value is not None})
    if data is not None:  # the data section: the schema's default, the YAML's, then the options given
        default = RECIPE_SCHEMAS[recipe].model_fields["data"].default.model_dump()
        base["data"] = {**default, **base.get("data", {}), **{key: value for key, value in data.items() if value is not None}}
    for key in required:
        if not base.get(key):
            raise ValueError(f"missing --{key}")
    return config_from_dict(base, "command line")



def main() -> None:
    app()
