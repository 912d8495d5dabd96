"""Run records not yet published: hidden ``.tmp-<run_id>`` folders under a runs folder, each still being written
("running") or left by a process that died before finishing it ("stale"), and their removal.

A folder is running while its writer holds the lock in it (refine_bench.records). When the lock is free, the
writer is gone unless run.json names a process of this machine that is still alive (a writer from before
records were locked, or one between creating the folder and taking its lock); a folder without a readable
run.json counts as running for its first STARTING_GRACE_S seconds.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refine_bench.fileio import lock_is_free
from refine_bench.provenance import process_alive, this_process
from refine_bench.records import LOCK_FILE, RUN_JSON, TMP_PREFIX

STARTING_GRACE_S = 60.0
RUNNING, STALE = "running", "stale"


@dataclass
class PendingRun:
    """One unpublished run folder and what became of its writer."""

    path: Path
    state: str  # running | stale
    meta: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.path.name[len(TMP_PREFIX):])

    @property
    def writer(self) -> str:
        """'pid N on host H', or 'an unknown process' for a record that does not name it."""
        writer = self.meta.get("writer") or {}
        if not isinstance(writer.get("pid"), int):
            return "an unknown process"
        return f"pid {writer['pid']} on host {writer.get('host', '?')}"


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _writer_alive_here(meta: dict[str, Any]) -> bool:
    writer = meta.get("writer") or {}
    pid = writer.get("pid")
    return (isinstance(pid, int) and not isinstance(pid, bool) and writer.get("host") == this_process()["host"]
            and process_alive(pid))


def classify(path: Path, *, now: float | None = None) -> PendingRun:
    """Whether the unpublished run folder `path` is still being written."""
    meta = _read_meta(path)
    if not lock_is_free(path / LOCK_FILE):
        state = RUNNING
    elif meta is None:
        age = (now if now is not None else time.time()) - path.stat().st_mtime
        state = RUNNING if age < STARTING_GRACE_S else STALE
    else:
        state = RUNNING if _writer_alive_here(meta) else STALE
    return PendingRun(path, state, meta or {})


def pending_runs(runs_dir: Path) -> list[PendingRun]:
    """Every unpublished run folder directly under `runs_dir`, oldest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    folders = [p for p in runs_dir.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir() and not p.is_symlink()]
    return [classify(p) for p in sorted(folders, key=lambda p: (p.stat().st_mtime, p.name))]


def remove_stale(runs_dir: Path, *, dry_run: bool = False) -> list[PendingRun]:
    """Delete the stale folders under `runs_dir` (or only list them with `dry_run`); returns them."""
    stale = [p for p in pending_runs(runs_dir) if p.state == STALE]
    if not dry_run:
        for pending in stale:
            shutil.rmtree(pending.path)
    return stale
