"""The metric history (results/history.jsonl): rows from runs and benchmark JSON, reading and exporting.

Row schema: {"commit", "date", "benchmark", "metric", "value", "unit", "direction" ("bigger"|"smaller"),
"machine", "deterministic": bool} plus an optional "range" (e.g. "± 1.2" from a stderr).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.fileio import append_jsonl, atomic_write_json
from refine_bench.records import KNOWN_GROUPS, RUN_JSON, utc_now
from refine_bench.report.loader import load_run, run_variant, stages_key

DEFAULT_HISTORY = Path("results/history.jsonl")
DIRECTIONS = ("bigger", "smaller")
REQUIRED = ("commit", "date", "benchmark", "metric", "value", "unit", "direction", "machine", "deterministic")
_SMALLER_SUFFIXES = (("_ms", "ms"), ("_us", "us"), ("_sec", "s"), ("_s", "s"), ("_mb", "MB"), ("_gb", "GB"),
                     ("_bytes", "B"))
_SMALLER_WORDS = ("latency", "time", "seconds", "memory", "loss")


def current_commit(cwd: Path | None = None) -> str:
    """`git rev-parse HEAD`, or a UserInputError asking for --commit."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as err:
        raise UserInputError(f"cannot run git to find the commit ({err}); pass --commit") from err
    if out.returncode != 0 or not out.stdout.strip():
        raise UserInputError("cannot find the current commit (git rev-parse HEAD failed); pass --commit")
    return out.stdout.strip()


def machine_name() -> str:
    """A coarse machine label: OS, architecture and CPU count."""
    return f"{platform.system().lower()}-{platform.machine()}-{os.cpu_count()}cpu"


def validate_row(row: Any, where: str) -> dict[str, Any]:
    """Check one history row; `where` names it in errors (e.g. 'history.jsonl:12')."""
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
    """All rows of a history file, in file order; a bad line raises UserInputError with its line number."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"history file not found: {path}")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserInputError(f"{path}:{lineno}: corrupt history line ({err.msg})") from err
        rows.append(validate_row(obj, f"{path}:{lineno}"))
    return rows


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Append validated rows to the history file; returns how many."""
    count = 0
    for i, row in enumerate(rows):
        append_jsonl(path, validate_row(row, f"new row {i}"))
        count += 1
    return count


def _base_row(commit: str, date: str | None, machine: str | None) -> dict[str, Any]:
    return {"commit": commit, "date": date or utc_now().isoformat(), "machine": machine or machine_name()}


def _run_is_deterministic(meta: dict[str, Any]) -> bool:
    config = meta.get("config") or {}
    device = config.get("device") or (meta.get("device") or {}).get("requested")
    seed = (meta.get("seeds") or {}).get("seed")
    return str(device).lower() == "cpu" and isinstance(seed, int) and not isinstance(seed, bool)


def rows_from_run(run_dir: Path, *, commit: str, date: str | None = None,
                  machine: str | None = None) -> list[dict[str, Any]]:
    """History rows from a run folder: one per score (task@length/metric) plus the final training loss.

    benchmark = "<kind>/<model>" for a base model, "<kind>/<model>/<mid/post/ttt arms>" otherwise.
    Known groups' fractions become percent. deterministic = config device is cpu and a seed was set.
    """
    run = load_run(Path(run_dir))
    if run.meta.get("status") != "ok":
        raise UserInputError(f"{run_dir}: run status is {run.meta.get('status')!r}, not 'ok'")
    key = stages_key(run.stages)
    benchmark = f"{run.meta['kind']}/{run.meta['model']}" + ("" if key == "-/-/-" else f"/{key}")
    variant = run_variant(run.meta)
    if variant:  # ablation settings are a different benchmark, not a change of the preset one
        benchmark += f" [{variant}]"
    deterministic = _run_is_deterministic(run.meta)
    base = _base_row(commit, date, machine)
    rows = []
    for s in run.scores:
        scale, unit = (100.0, "%") if s["group"] in KNOWN_GROUPS else (1.0, "")
        length = "" if s["length"] is None else f"@{s['length']}"
        row = {**base, "benchmark": benchmark, "metric": f"{s['task']}{length}/{s['metric']}",
               "value": scale * s["value"], "unit": unit, "direction": "bigger", "deterministic": deterministic}
        if s["stderr"] is not None:
            row["range"] = f"± {scale * s['stderr']:.4g}"
        rows.append(row)
    metrics = [r for r in run.train_metrics() if isinstance(r.get("loss"), (int, float))]
    if metrics:
        rows.append({**base, "benchmark": benchmark, "metric": "train/loss@final", "value": float(metrics[-1]["loss"]),
                     "unit": "nats", "direction": "smaller", "deterministic": deterministic})
    if not rows:
        raise UserInputError(f"{run_dir}: run has no scores and no training loss to record")
    return rows


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{name}/"))
        else:
            out[name] = v
    return out


def guess_direction_unit(name: str) -> tuple[str, str]:
    """Direction and unit from a benchmark metric's name: ratios, speedups and rates (per second, FLOP/s) are
    bigger-is-better; times (incl. seconds per token), memory and losses smaller-is-better; else bigger."""
    low = name.lower()
    if "ratio" in low or "speedup" in low or low.endswith("_x"):
        return "bigger", "x"
    if "gflops" in low or "tflops" in low:
        return "bigger", "GFLOP/s" if "gflops" in low else "TFLOP/s"
    if low.endswith(("per_s", "per_sec", "/s", "tok_s")) or "throughput" in low:
        return "bigger", "1/s"
    for marker, unit in (("ms_per_", "ms"), ("s_per_", "s"), ("sec_per_", "s")):
        if marker in low:
            return "smaller", unit
    for suffix, unit in _SMALLER_SUFFIXES:
        if low.endswith(suffix):
            return "smaller", unit
    if any(w in low for w in _SMALLER_WORDS):
        return "smaller", ""
    return "bigger", ""


def rows_from_bench_json(path: Path, *, commit: str, benchmark: str | None = None, date: str | None = None,
                         machine: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """History rows from a benchmark output whose last non-empty line is a JSON object of name -> number.

    Nested objects are flattened with '/'. Non-numeric values are skipped with a warning. Benchmark metrics
    are timing-based, so deterministic=False (reported, never gating by default).
    """
    path = Path(path)
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise UserInputError(f"{path}: empty benchmark output")
    try:
        obj = json.loads(lines[-1])
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: last line is not JSON ({err.msg})") from err
    if not isinstance(obj, dict):
        raise UserInputError(f"{path}: last line must be a JSON object of name -> number")
    base = _base_row(commit, date, machine)
    rows, warnings = [], []
    for name, value in _flatten(obj).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            warnings.append(f"{path}: skipped {name!r} (not a finite number: {value!r})")
            continue
        direction, unit = guess_direction_unit(name)
        rows.append({**base, "benchmark": benchmark or f"bench/{path.stem}", "metric": name, "value": float(value),
                     "unit": unit, "direction": direction, "deterministic": False})
    if not rows:
        raise UserInputError(f"{path}: no numeric metrics in the last line")
    return rows, warnings


def rows_from_source(source: Path, *, commit: str, benchmark: str | None = None, date: str | None = None,
                     machine: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows from a run folder (has run.json) or a benchmark JSON file."""
    source = Path(source)
    if source.is_dir():
        if not (source / RUN_JSON).is_file():
            raise UserInputError(f"{source}: a folder without {RUN_JSON} is not a run folder")
        return rows_from_run(source, commit=commit, date=date, machine=machine), []
    if source.is_file():
        return rows_from_bench_json(source, commit=commit, benchmark=benchmark, date=date, machine=machine)
    raise UserInputError(f"no such run folder or benchmark file: {source}")


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


def export_github_action_benchmark(rows: list[dict[str, Any]], out: Path, *,
                                   commit: str | None = None) -> tuple[Path, Path]:
    """Write OUT-bigger.json and OUT-smaller.json (customBiggerIsBetter / customSmallerIsBetter lists).

    Each list holds {"name", "unit", "value", "range", "extra"} for the given commit (default: the newest
    commit in the history); name = "<benchmark> :: <metric>". `out` may end in .json; it is stripped.
    """
    if not rows:
        raise UserInputError("history is empty: nothing to export")
    commits = commits_in_order(rows)
    if commit is None:
        commit = commits[-1]
    else:
        matches = [c for c in commits if c.startswith(commit)]
        if len(matches) != 1:
            raise UserInputError(f"commit {commit!r} matches {len(matches)} commits in the history")
        commit = matches[0]
    chosen = latest_per_metric([r for r in rows if r["commit"] == commit])
    lists: dict[str, list[dict[str, Any]]] = {"bigger": [], "smaller": []}
    for (bench, metric), r in sorted(chosen.items()):
        extra = f"commit={r['commit'][:12]} machine={r['machine']} deterministic={str(r['deterministic']).lower()}"
        lists[r["direction"]].append({"name": f"{bench} :: {metric}", "unit": r["unit"], "value": r["value"],
                                      "range": r.get("range", ""), "extra": extra})
    out = Path(out)
    stem = out.name[:-5] if out.name.endswith(".json") else out.name
    bigger, smaller = out.parent / f"{stem}-bigger.json", out.parent / f"{stem}-smaller.json"
    atomic_write_json(bigger, lists["bigger"])
    atomic_write_json(smaller, lists["smaller"])
    return bigger, smaller
