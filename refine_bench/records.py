"""Run records: one self-describing folder per train or eval invocation.

A run is written into a hidden temporary folder under the results root (``results/runs/.tmp-<run_id>``) and
published with a single directory rename by :meth:`RunRecord.finish`, so a reader listing ``results/runs``
sees either the whole run or nothing of it. While it is written, the writer holds an advisory lock on
``.tmp-<run_id>/.lock`` and run.json names it (pid, host): a folder whose lock is free and whose writer is gone
is *stale* (its process was killed) and ``refine-bench results clean`` removes it. Folder layout::

    run.json             provenance: command, config, git SHA, package versions, device, seeds, writer, times,
                         status ("running" until finished, then "ok", "failed" or "interrupted") and error
    scores.jsonl         tidy scores, one row per (task, length, metric) cell
    train_metrics.jsonl  one row per logged training step ({"step": int, ...metrics})
    lm_eval/             lm-eval's raw results JSON and samples (written by the eval layer)
    niah_depths.jsonl    per-sample NIAH rows {"task", "length", "depth", "score"} for the depth heatmap
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.fileio import FileLock, append_jsonl, atomic_write_json, atomic_write_text
from refine_bench.interrupts import run_status, sigterm_raises
from refine_bench.protocol import BASE_ARM, STAGE_ARMS, STAGES, TASK_GROUPS
from refine_bench.provenance import device_info, git_sha, package_versions, this_process, utc_now

SCHEMA_VERSION = 1
KINDS = ("train", "eval")
TMP_PREFIX = ".tmp-"
LOCK_FILE = ".lock"
RUN_JSON = "run.json"
SCORES_FILE = "scores.jsonl"
TRAIN_METRICS_FILE = "train_metrics.jsonl"
NIAH_DEPTHS_FILE = "niah_depths.jsonl"
RUNNING = "running"
FINAL_STATUSES = ("ok", "failed", "interrupted")


def normalize_stages(stages: dict[str, Any] | None) -> dict[str, str | None]:
    """Validate a stages dict and return it with all three keys (missing ones None)."""
    stages = dict(stages or {})
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise UserInputError(f"unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    out: dict[str, str | None] = {}
    for stage in STAGES:
        arm = stages.get(stage)
        if arm is not None and arm not in STAGE_ARMS[stage]:
            raise UserInputError(f"unknown arm {arm!r} for stage {stage!r}; choose from {list(STAGE_ARMS[stage])}")
        out[stage] = arm
    return out


def arm_and_phase(stages: dict[str, str | None]) -> tuple[str, str | None]:
    """The last non-None stage and its arm, or ("base", None) for an untrained model."""
    for stage in reversed(STAGES):
        if stages.get(stage) is not None:
            return str(stages[stage]), stage
    return BASE_ARM, None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "model"


def validate_score_row(row: dict[str, Any]) -> dict[str, Any]:
    """Check one tidy score row and return it normalised."""
    if not isinstance(row, dict):
        raise UserInputError(f"score row must be a dict, got {type(row).__name__}")
    missing = {"task", "group", "metric", "value"} - set(row)
    if missing:
        raise UserInputError(f"score row {row!r} lacks {sorted(missing)}")
    task, group, metric = row["task"], row["group"], row["metric"]
    if not all(isinstance(x, str) and x for x in (task, group, metric)):
        raise UserInputError(f"score row {row!r}: task, group and metric must be non-empty strings")
    length = row.get("length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
        raise UserInputError(f"score row {row!r}: length must be an int or None")
    value = row["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserInputError(f"score row {row!r}: value must be a finite number")
    if group in TASK_GROUPS and not 0.0 <= value <= 1.0:
        raise UserInputError(f"score row {row!r}: {group} values are fractions in [0, 1] (the report scales by 100)")
    stderr = row.get("stderr")
    if stderr is not None:
        if isinstance(stderr, bool) or not isinstance(stderr, (int, float)):
            raise UserInputError(f"score row {row!r}: stderr must be a number or None")
        stderr = float(stderr) if math.isfinite(stderr) else None
    n = row.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise UserInputError(f"score row {row!r}: n must be a non-negative int or None")
    out = dict(row)
    out.update(task=task, group=group, length=length, metric=metric, value=float(value), stderr=stderr, n=n)
    return out


class RunRecord:
    """A run folder being written; publish it with :meth:`finish` (or use it as a context manager, which also
    turns SIGTERM into an interruption and finishes the record "ok", "interrupted" or "failed")."""

    def __init__(self, root: Path, run_id: str, meta: dict[str, Any]) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self.meta = meta
        self._path = self.root / f"{TMP_PREFIX}{run_id}"
        self._finished = False
        self._scores: list[dict[str, Any]] = []
        self._lock = FileLock(self._path / LOCK_FILE, label=f"run record {self._path}")
        self._signals: contextlib.ExitStack | None = None

    @classmethod
    def create(cls, root: Path = Path("results/runs"), *, kind: str, model: str, stages: dict, config: dict,
               seed: int | None, command: list[str] | None = None) -> RunRecord:
        """Start a run: make its hidden temp folder under `root`, lock it, and write run.json ("running")."""
        if kind not in KINDS:
            raise UserInputError(f"unknown run kind {kind!r}; choose from {list(KINDS)}")
        if not isinstance(model, str) or not model:
            raise UserInputError("model must be a non-empty string")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise UserInputError(f"seed must be an int or None, got {seed!r}")
        norm = normalize_stages(stages)
        arm, phase = arm_and_phase(norm)
        start = utc_now()
        run_id = f"{start:%Y%m%dT%H%M%S}Z-{kind}-{_slug(model)}-{arm}-{secrets.token_hex(3)}"
        config = dict(config or {})
        meta: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "run_id": run_id,
            "kind": kind,
            "model": model,
            "stages": norm,
            "arm": arm,
            "phase": phase,
            "config": config,
            "command": list(command) if command is not None else list(sys.argv),
            "cwd": os.getcwd(),
            "git_sha": git_sha(),
            "versions": package_versions(),
            "device": device_info(config.get("device")),
            "seeds": {"seed": seed},
            "writer": this_process(),
            "start_time": start.isoformat(),
            "end_time": None,
            "status": RUNNING,
            "error": None,
        }
        rec = cls(Path(root), run_id, meta)
        rec._path.mkdir(parents=True, exist_ok=False)
        rec._lock.acquire()  # before run.json exists, so a folder with a run.json and a free lock has no writer
        rec._write_meta()
        return rec

    @property
    def path(self) -> Path:
        """The run folder: the hidden temp folder while running, results/runs/<run_id> once finished."""
        return self._path

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError(f"run {self.run_id} is already finished")

    def _inside(self, relpath: str) -> Path:
        target = (self._path / relpath).resolve()
        if self._path.resolve() not in target.parents:
            raise UserInputError(f"{relpath!r} is not a path inside the run folder")
        return target

    def _write_meta(self) -> None:
        atomic_write_json(self._path / RUN_JSON, self.meta)

    def log_metrics(self, step: int, metrics: dict) -> None:
        """Append one training-step row to train_metrics.jsonl."""
        self._check_open()
        if isinstance(step, bool) or not isinstance(step, int):
            raise UserInputError(f"step must be an int, got {step!r}")
        append_jsonl(self._path / TRAIN_METRICS_FILE, {"step": step, **metrics})

    def write_json(self, relpath: str, obj: Any) -> Path:
        """Write `obj` as JSON at `relpath` inside the run folder (atomically)."""
        self._check_open()
        target = self._inside(relpath)
        atomic_write_json(target, obj)
        return target

    def write_text(self, relpath: str, text: str) -> Path:
        """Write `text` at `relpath` inside the run folder (atomically)."""
        self._check_open()
        target = self._inside(relpath)
        atomic_write_text(target, text)
        return target

    def write_scores(self, rows: list[dict]) -> None:
        """Validate and add tidy score rows; scores.jsonl is rewritten atomically with all rows so far."""
        self._check_open()
        checked = [validate_score_row(r) for r in rows]
        self._scores.extend(checked)
        atomic_write_text(self._path / SCORES_FILE, "".join(json.dumps(r) + "\n" for r in self._scores))

    def finish(self, status: str = "ok", *, error: str | None = None) -> Path:
        """Record end time, status ("ok", "failed" or "interrupted") and an optional one-line error, then publish
        the folder as <root>/<run_id> with one rename and release the writer's lock."""
        self._check_open()
        if status not in FINAL_STATUSES:
            raise UserInputError(f"unknown status {status!r}; choose from {list(FINAL_STATUSES)}")
        self.meta["status"] = status
        self.meta["error"] = error
        self.meta["end_time"] = utc_now().isoformat()
        self._write_meta()
        final = self.root / self.run_id
        suffix = 1
        while final.exists():  # run ids carry random bits; this only guards a freak collision
            final = self.root / f"{self.run_id}-{suffix}"
            suffix += 1
        os.replace(self._path, final)
        _fsync_dir(self.root)
        self._path = final
        self._finished = True
        self._lock.release()
        (final / LOCK_FILE).unlink(missing_ok=True)  # a published record has no writer left to name
        return final

    def discard(self) -> None:
        """Delete the unpublished folder and release its lock: for work that must leave no record at all."""
        self._check_open()
        shutil.rmtree(self._path, ignore_errors=True)
        self._lock.release()
        self._finished = True

    def finish_after(self, exc: BaseException | None) -> Path:
        """Finish as the way the work ended says: "ok" (no exception), "interrupted" (Ctrl-C, SIGTERM) or
        "failed" (any other exception, recorded as "<type>: <message>")."""
        error = None if exc is None else f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return self.finish(run_status(exc), error=error)

    def __enter__(self) -> RunRecord:
        self._signals = contextlib.ExitStack()
        self._signals.enter_context(sigterm_raises())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._signals is not None:
            self._signals.close()
            self._signals = None
        if not self._finished:
            self.finish_after(exc)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
