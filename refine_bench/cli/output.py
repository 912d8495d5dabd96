"""Printing helpers for CLI commands: aligned tables, a run's score lines and a final JSON line."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import typer

from refine_bench.fileio import read_jsonl
from refine_bench.records import SCORES_FILE


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


def print_score_lines(run_dir: str | Path) -> None:
    """Each tidy score row of a published run folder, one indented JSON line each, as scores.jsonl holds it."""
    scores = Path(run_dir) / SCORES_FILE
    for row in read_jsonl(scores, what="scores file") if scores.is_file() else []:
        typer.echo(f"  {json.dumps(row)}")
