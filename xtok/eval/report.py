"""Eval tables on screen (rich) from result dicts."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def eval_table(results: list[dict], title: str = "bits per byte (lower is better)") -> Table:
    """Domains as rows, one bits-per-byte and one bytes-per-token column per model."""
    table = Table(title=title)
    table.add_column("domain")
    for r in results:
        table.add_column(f"{r['model']}\nbits/byte", justify="right")
        table.add_column("bytes/tok", justify="right")
    domains = sorted({d for r in results for d in r["domains"]})
    for d in domains + ["overall"]:
        row = [d]
        for r in results:
            s = r["overall"] if d == "overall" else r["domains"].get(d, {})
            row += [_fmt(s.get("bits_per_byte")), _fmt(s.get("bytes_per_token"), 2)]
        table.add_row(*row, end_section=d == domains[-1])
    row = ["tokens/s"]
    for r in results:
        row += [_fmt(r.get("tokens_per_second"), 0), ""]
    table.add_row(*row)
    return table


def digits_table(results: list[dict]) -> Table:
    table = Table(title="digit splitting")
    table.add_column("model")
    table.add_column("single-digit tokens", justify="right")
    table.add_column("digits/token", justify="right")
    table.add_column("max digits/token", justify="right")
    table.add_column("'12345678' splits as")
    for r in results:
        n = r.get("numbers") or {}
        table.add_row(
            r["model"], _fmt(n.get("single_digit_token_share"), 2), _fmt(n.get("mean_digits_per_digit_token"), 2),
            _fmt(n.get("max_digits_in_one_token")), " | ".join(n.get("probes", {}).get("12345678", [])),
        )
    return table


def print_tables(results: list[dict], console: Console | None = None) -> None:
    console = console or Console(stderr=False)
    console.print(eval_table(results))
    if any(r.get("numbers") for r in results):
        console.print(digits_table(results))
    agreeing = [r for r in results if "agreement" in r]
    if agreeing:
        table = Table(title=f"greedy agreement with {agreeing[0]['agreement']['against']} (bytes of the continuation)")
        for col in ("model", "mean agreed bytes", "agreed share", "new tokens generated", "new tokens, same text"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for r in agreeing:
            a, share = r["agreement"], r["agreement"].get("new_token_share") or {}
            table.add_row(r["model"], _fmt(a["mean_agreed_bytes"], 1), _fmt(a["agreed_share"]),
                          _fmt(share.get("generated")), _fmt(share.get("tokenizer_on_same_text")))
        console.print(table)

