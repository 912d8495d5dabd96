"""Printing helpers for CLI commands: aligned tables and a final JSON line."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import typer


def format_value(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def print_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> None:
    """Print `rows` as an aligned text table with the given columns."""
    cells = [[format_value(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    typer.echo("  ".join("-" * w for w in widths))
    for r in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def print_json_line(obj: Mapping[str, object]) -> None:
    """One JSON object on one line (machine-readable last line of a benchmark)."""
    typer.echo(json.dumps(obj, sort_keys=True, default=float))
