"""Metric-history rows from their two sources: a run folder (scores and final training loss) and a benchmark's
output (its last line, a JSON object of name -> number)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.protocol import TASK_GROUPS
from refine_bench.provenance import git_sha, machine_name, utc_now
from refine_bench.records import RUN_JSON
from refine_bench.report.loader import load_run, run_variant, stages_key
from refine_bench.report.metric_units import guess_direction_unit


def resolve_commit(commit: str | None) -> str:
    """`commit`, else HEAD of the repository holding the working folder; UserInputError asking for --commit."""
    if commit:
        return commit
    head = git_sha(Path.cwd())
    if head is None:
        raise UserInputError("cannot find the current commit (git rev-parse HEAD failed); pass --commit")
    return head


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
    The paper groups' fractions become percent. deterministic = config device is cpu and a seed was set.
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
        scale, unit = (100.0, "%") if s["group"] in TASK_GROUPS else (1.0, "")
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
    """Rows from a run folder (has run.json) or a benchmark output file."""
    source = Path(source)
    if source.is_dir():
        if not (source / RUN_JSON).is_file():
            raise UserInputError(f"{source}: a folder without {RUN_JSON} is not a run folder")
        return rows_from_run(source, commit=commit, date=date, machine=machine), []
    if source.is_file():
        return rows_from_bench_json(source, commit=commit, benchmark=benchmark, date=date, machine=machine)
    raise UserInputError(f"no such run folder or benchmark file: {source}")
