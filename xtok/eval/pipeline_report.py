"""report.md of an end-to-end run: tables and PNG plots (matplotlib, no display needed)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from xtok.utils.io import atomic_write_text


@contextlib.contextmanager
def _figure(path: Path, height: float, ylabel: str, xlabel: str | None = None):
    """A matplotlib (figure, axes) written to ``path`` as PNG on exit; the Agg backend needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, height))
    yield ax
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bpb(bpb: dict[str, dict[str, float]], path: Path) -> None:
    domains = [d for d in next(iter(bpb.values())) if d != "overall"] + ["overall"]
    width = 0.8 / len(bpb)
    with _figure(path, 3.6, "bits per byte (lower is better)") as ax:
        for i, (label, row) in enumerate(bpb.items()):
            ax.bar([j + i * width for j in range(len(domains))], [row.get(d, float("nan")) for d in domains], width, label=label)
        ax.set_xticks([j + width * (len(bpb) - 1) / 2 for j in range(len(domains))], domains)


def _plot_loss(stages: list[dict], path: Path) -> None:
    offset = 0
    with _figure(path, 3.2, "training loss", "optimizer step (stages in sequence)") as ax:
        for st in stages:
            pts = [(e["step"] + offset, e["loss"]) for e in st.get("log_history", []) if "loss" in e]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=st["stage"])
            offset += st["steps"]


def _plot_acceptance(rows: list[dict], path: Path) -> None:
    with _figure(path, 3.2, "share accepted", "draft position") as ax:
        for r in rows:
            per = r["acceptance_per_position"]
            ax.plot(range(1, len(per) + 1), [float("nan") if p is None else p for p in per], marker="o",
                    label=f"{r['drafter']} ({r['backend']}, k={r['k']})")
        ax.set_ylim(0, 1)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _stage_rows(stages: list[dict]) -> list[str]:
    lines = ["| stage | trains | steps | trainable parameters | final loss | tokens/s | seconds |", "|---|---|---|---|---|---|---|"]
    for st in stages:
        if st.get("skipped"):
            lines.append(f"| {st['stage']} | {st['train']} | 0 | - | skipped ({st['skipped']}) | - | - |")
            continue
        losses = [e["loss"] for e in st["log_history"] if "loss" in e]
        lines.append(f"| {st['stage']} | {st['train']} | {st['steps']} | {st['trainable_parameters'] / 1e6:.1f}M | "
                     f"{_fmt(losses[-1] if losses else None)} | {_fmt(st.get('tokens_per_second'))} | {_fmt(st['seconds'])} |")
    return lines


def write_report(run: Path, summary: dict) -> Path:
    """Write ``run/report.md`` and its PNGs from an end-to-end summary; return the report's path."""
    bpb = summary["bits_per_byte"]
    lines = [f"# xtok end to end: {summary['teacher']} -> {summary['student']}", "",
             f"Run folder `{run}`; commands, config and versions in `end_to_end.json`.", "",
             "## Bits per byte per domain (held-out eval corpus; lower is better)", ""]
    domains = [d for d in next(iter(bpb.values())) if d != "overall"] + ["overall"]
    lines += ["| model | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    lines += [f"| {label} | " + " | ".join(_fmt(row.get(d)) for d in domains) + " |" for label, row in bpb.items()]
    _plot_bpb(bpb, run / "bits_per_byte.png")
    lines += ["", "![bits per byte](bits_per_byte.png)"]
    if summary.get("heal"):
        lines += ["", f"## Heal (loss {summary['heal']['loss']}: the rows the transplant made, toward the original)", ""]
        lines += _stage_rows(summary["heal"]["stages"])
    lines += ["", "## Distillation", ""]
    stages = summary["distill"]["stages"]
    lines += _stage_rows(stages)
    _plot_loss(stages, run / "distill_loss.png")
    lines += ["", "![loss curves](distill_loss.png)", "", "## Drafting for the teacher (greedy)", ""]
    rows = summary["draft_check"]
    lines += ["| drafter | backend | k | acceptance rate | mean acceptance length | speed-up | lossless |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['drafter']} | {r['backend']} | {r['k']} | {_fmt(r['acceptance_rate'])} | {_fmt(r['mean_acceptance_length'])} | "
              f"{_fmt(r['speedup'])} | {r['lossless']} |" for r in rows]
    if rows:
        _plot_acceptance(rows, run / "acceptance.png")
        lines += ["", "![acceptance per draft position](acceptance.png)"]
    for note in summary.get("notes", []):
        lines += ["", f"Note: {note}"]
    lines += ["", "## Wall time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {_fmt(s)} |" for name, s in summary["seconds"].items()]
    return atomic_write_text(run / "report.md", "\n".join(lines) + "\n")
