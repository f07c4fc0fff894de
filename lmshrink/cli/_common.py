"""Small helpers shared by commands: common options, tables and JSON output."""

from __future__ import annotations

import json
import sys


def add_data_arg(p) -> None:
    p.add_argument("--data", metavar="DIR", default=None,
                   help="data directory holding ptb/ and wikitext-2/ (default: $LMSHRINK_DATA or the user cache dir)")


def add_json_arg(p) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def emit_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"  # pragma: no cover


def print_table(title: str, columns: list[str], rows: list[list], footer: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*[str(x) for x in r])
    console = Console(width=max(100, Console().width))
    console.print(table)
    if footer:
        console.print(footer)


def dense_comparison_rows(this: dict, dense: dict) -> list[list[str]]:
    """Rows of ``[what, dense, this model, this/dense]`` for the keys both dicts measured."""
    rows = []
    for key, label in (("test_ppl", "test perplexity"), ("params", "parameters"), ("bits", "theoretical bits"),
                       ("bytes_on_disk", "bytes on disk"), ("tokens_per_s", "tokens/s")):
        d, c = dense.get(key), this.get(key)
        if d is None or c is None:
            continue
        fmt = (lambda v: f"{v:,.2f}") if isinstance(d, float) else (lambda v: f"{v:,}")
        rows.append([label, fmt(d), fmt(c), f"{c / d:.3f}" if d else "-"])
    return rows
