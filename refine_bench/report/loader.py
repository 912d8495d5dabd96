"""Read run folders under results/runs into Python objects and one tidy pandas DataFrame.

Anything wrong with a run folder (missing or unreadable run.json, a bad line in one of its JSON-lines files,
status other than "ok") is turned into a warning naming the folder, and that folder is skipped; the other runs
still load. Hidden folders (runs still being written, or stale ones: see report/pending.py) are not runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from refine_bench.errors import UserInputError
from refine_bench.fileio import read_json_object, read_jsonl, read_jsonl_lines
from refine_bench.protocol import STAGES
from refine_bench.records import (
    NIAH_DEPTHS_FILE,
    RUN_JSON,
    SCORES_FILE,
    TRAIN_METRICS_FILE,
    arm_and_phase,
    normalize_stages,
    validate_score_row,
)

DEFAULT_RUNS_DIR = Path("results/runs")
SCORE_COLUMNS = ["model", "arm", "phase", "stages", "mid", "post", "ttt", "task", "group", "length", "metric",
                 "value", "stderr", "n", "run_id", "created", "kind", "variant"]


@dataclass
class Run:
    """One published run folder: run.json, its scores and its step and NIAH-depth rows."""

    path: Path
    meta: dict[str, Any]
    scores: list[dict[str, Any]] = field(default_factory=list)
    train_rows: list[dict[str, Any]] = field(default_factory=list)
    depth_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.path.name)

    @property
    def stages(self) -> dict[str, str | None]:
        return normalize_stages(self.meta.get("stages"))

    @property
    def created(self) -> str:
        return str(self.meta.get("start_time") or "")

    def train_metrics(self) -> list[dict[str, Any]]:
        return self.train_rows

    def niah_depths(self) -> list[dict[str, Any]]:
        return self.depth_rows


@dataclass
class RunSet:
    """All runs that loaded, plus one warning per folder that did not."""

    runs: list[Run]
    warnings: list[str]

    def frame(self) -> pd.DataFrame:
        return scores_frame(self.runs)


def run_variant(meta: dict[str, Any]) -> str:
    """The run's settings label (e.g. 'reward=binary') when it departs from the presets; '' otherwise."""
    return str((meta.get("config") or {}).get("variant") or "")


def stages_key(stages: dict[str, str | None]) -> str:
    """Compact, sortable text form of a stages dict: 'mid/post/ttt' arms, '-' for a stage not run."""
    return "/".join(stages.get(s) or "-" for s in STAGES)


def _rows(path: Path, what: str) -> list[dict[str, Any]]:
    """A run's JSON-lines file (absent: no rows); a line torn by a killed writer is dropped, others must parse."""
    return read_jsonl(path, what=what, allow_torn_tail=True) if path.is_file() else []


def load_run(path: Path) -> Run:
    """Load one run folder strictly; raises UserInputError naming the problem."""
    meta_path = path / RUN_JSON
    if not meta_path.is_file():
        raise UserInputError(f"{path}: no {RUN_JSON}")
    meta = read_json_object(meta_path)
    for key in ("kind", "model"):
        if not isinstance(meta.get(key), str):
            raise UserInputError(f"{meta_path}: missing or invalid {key!r}")
    normalize_stages(meta.get("stages"))
    scores = []
    scores_path = path / SCORES_FILE
    if scores_path.is_file():
        for lineno, row in read_jsonl_lines(scores_path, what="scores file"):
            try:
                scores.append(validate_score_row(row))
            except UserInputError as err:
                raise UserInputError(f"scores file {scores_path}: line {lineno}: bad score row ({err})") from err
    return Run(path=path, meta=meta, scores=scores,
               train_rows=_rows(path / TRAIN_METRICS_FILE, "training metrics file"),
               depth_rows=_rows(path / NIAH_DEPTHS_FILE, "NIAH depth file"))


def load_runs(runs_dir: Path = DEFAULT_RUNS_DIR, *, include_failed: bool = False) -> RunSet:
    """Load every published run under `runs_dir` (hidden in-progress folders are ignored).

    Runs whose status is not "ok" are skipped with a warning unless `include_failed`.
    """
    runs: list[Run] = []
    warnings: list[str] = []
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return RunSet(runs, warnings)
    for child in sorted(runs_dir.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            run = load_run(child)
        except (UserInputError, OSError) as err:
            warnings.append(f"skipped run folder: {err}")
            continue
        status = run.meta.get("status")
        if status != "ok" and not include_failed:
            warnings.append(f"skipped run folder: {child}: status is {status!r}, not 'ok'")
            continue
        runs.append(run)
    runs.sort(key=lambda r: (r.created, r.run_id))
    return RunSet(runs, warnings)


def scores_frame(runs: list[Run]) -> pd.DataFrame:
    """All score rows of `runs` as one DataFrame (columns SCORE_COLUMNS, values as stored: fractions)."""
    records = []
    for run in runs:
        stages = run.stages
        arm, phase = arm_and_phase(stages)
        for row in run.scores:
            records.append({
                "model": run.meta["model"], "arm": arm, "phase": phase, "stages": stages_key(stages),
                "mid": stages["mid"], "post": stages["post"], "ttt": stages["ttt"],
                "task": row["task"], "group": row["group"], "length": row["length"], "metric": row["metric"],
                "value": row["value"], "stderr": row["stderr"], "n": row["n"],
                "run_id": run.run_id, "created": run.created, "kind": run.meta.get("kind"),
                "variant": run_variant(run.meta),
            })
    frame = pd.DataFrame.from_records(records, columns=SCORE_COLUMNS)
    frame["length"] = frame["length"].astype("Int64")
    frame["n"] = frame["n"].astype("Int64")
    frame["value"] = frame["value"].astype(float)
    frame["stderr"] = frame["stderr"].astype(float)
    return frame


def find_run(ref: str, runs_dir: Path = DEFAULT_RUNS_DIR) -> Run:
    """A run by folder path, exact run id or unique run-id prefix (failed runs included)."""
    as_path = Path(ref)
    if as_path.is_dir() and (as_path / RUN_JSON).exists():
        return load_run(as_path)
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserInputError(f"no runs folder {runs_dir}")
    names = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if ref in names:
        return load_run(runs_dir / ref)
    matches = [n for n in names if n.startswith(ref)]
    if not matches:
        raise UserInputError(f"no run {ref!r} under {runs_dir}")
    if len(matches) > 1:
        raise UserInputError(f"run prefix {ref!r} is ambiguous: {', '.join(matches[:5])}")
    return load_run(runs_dir / matches[0])
