"""The metric history file (results/history.jsonl): its row schema, reading, appending and per-commit lookups.

Row schema: {"commit", "date", "benchmark", "metric", "value", "unit", "direction" ("bigger"|"smaller"),
"machine", "deterministic": bool} plus an optional "range" (e.g. "± 1.2" from a stderr). Rows are made by
report/history_sources.py and exported by report/history_export.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.fileio import append_jsonl, read_jsonl_lines

DEFAULT_HISTORY = Path("results/history.jsonl")
DIRECTIONS = ("bigger", "smaller")
REQUIRED = ("commit", "date", "benchmark", "metric", "value", "unit", "direction", "machine", "deterministic")


def validate_row(row: Any, where: str) -> dict[str, Any]:
    """Check one history row; `where` names it in errors (e.g. 'history file results/history.jsonl: line 12')."""
    if not isinstance(row, dict):
        raise UserInputError(f"{where}: expected a JSON object")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise UserInputError(f"{where}: missing {missing}")
    value = row["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserInputError(f"{where}: value must be a finite number, got {value!r}")
    if row["direction"] not in DIRECTIONS:
        raise UserInputError(f"{where}: direction must be 'bigger' or 'smaller', got {row['direction']!r}")
    if not isinstance(row["deterministic"], bool):
        raise UserInputError(f"{where}: deterministic must be true or false")
    for key in ("commit", "benchmark", "metric"):
        if not isinstance(row[key], str) or not row[key]:
            raise UserInputError(f"{where}: {key} must be a non-empty string")
    return row


def read_history(path: Path) -> list[dict[str, Any]]:
    """All rows of a history file, in file order; a bad line raises UserInputError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"history file not found: {path}")
    return [validate_row(row, f"history file {path}: line {lineno}")
            for lineno, row in read_jsonl_lines(path, what="history file")]


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Append validated rows to the history file; returns how many."""
    count = 0
    for i, row in enumerate(rows):
        append_jsonl(path, validate_row(row, f"new row {i}"))
        count += 1
    return count


def commits_in_order(rows: list[dict[str, Any]]) -> list[str]:
    """Distinct commits in order of first appearance."""
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r["commit"], None)
    return list(seen)


def latest_per_metric(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last row (file order) for each (benchmark, metric)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        out[(r["benchmark"], r["metric"])] = r
    return out
