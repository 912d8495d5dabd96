"""Answers kept per request, written as they come in, so that a killed evaluation resumes where it stopped.

One cache folder per *identity*: everything that decides an answer besides the request itself (the model and
its weight files, dtype, device type, context budget, batch size, test-time-training settings, the code's git
SHA and package versions). Inside it, each rank appends `answers.rank<R>.jsonl`, one JSON line per answered
request: its key (SHA-256 of the request type, the request's arguments and a scope the caller sets, e.g. the
test-time-training stream that produced the adapted weights) and the answer. A rerun with the same identity
loads every rank's file and answers those requests from it; a line torn by a kill is dropped.

JSON only (no pickle): floats round-trip exactly, so reused answers score exactly as fresh ones did.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from refine_bench.fileio import atomic_write_json, read_jsonl_lines

IDENTITY_FILE = "identity.json"


def digest(obj: Any) -> str:
    """SHA-256 of `obj` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def files_fingerprint(path: str | os.PathLike[str] | None) -> Any:
    """What identifies a model argument: for a local folder, its files' names, sizes and modification times
    (a retrained checkpoint in the same folder gets a new identity); otherwise the name itself."""
    if path is None:
        return None
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return str(path)
    return {"folder": str(folder.resolve()),
            "files": sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())}


class AnswerCache:
    """Per-request answers of one identity (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], identity: dict[str, Any], rank: int = 0) -> None:
        self.identity = identity
        self.folder = self.folder_of(root, identity)
        self.folder.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            atomic_write_json(self.folder / IDENTITY_FILE, identity)
        self._answers: dict[str, Any] = {}
        self._file = self.folder / f"answers.rank{rank}.jsonl"
        _drop_torn_tail(self._file)  # so that this run's first append starts on a line of its own
        for file in sorted(self.folder.glob("answers.rank*.jsonl")):
            self._load(file)
        self.reused = 0  # requests answered from the cache in this run
        self.computed = 0  # requests answered by the model in this run (and stored)

    @staticmethod
    def folder_of(root: str | os.PathLike[str], identity: dict[str, Any]) -> Path:
        """The cache folder of an identity under `root`."""
        return Path(root) / digest(identity)[:20]

    def _load(self, file: Path) -> None:
        for _, row in read_jsonl_lines(file, what="answer cache", allow_torn_tail=True):
            if "key" in row and "answer" in row:
                self._answers[row["key"]] = row["answer"]

    @staticmethod
    def key(scope: str, request_type: str, args: Any) -> str:
        """The key of one request: its type, its arguments and the caller's scope."""
        return digest([scope, request_type, list(args) if isinstance(args, tuple) else args])

    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, key: str) -> bool:
        return key in self._answers

    def get(self, key: str, request_type: str, *, count: bool = True) -> Any:
        """The stored answer (loglikelihood answers come back as the (float, bool) tuple lm-eval expects);
        `count=False` for entries that are not requests (e.g. a test-time-training batch's statistics)."""
        self.reused += int(count)
        answer = self._answers[key]
        return tuple(answer) if request_type == "loglikelihood" else answer

    def put(self, key: str, answer: Any, *, count: bool = True) -> None:
        """Store one answer now (flushed, so a killed process keeps it)."""
        if key in self._answers:
            return
        self._answers[key] = answer
        self.computed += int(count)
        # flushed, not fsynced: the kernel keeps the line if the process is killed, and an fsync per request would
        # cost more than answering a loglikelihood request
        with open(self._file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, "answer": answer}, default=str) + "\n")
            fh.flush()

    def summary(self) -> dict[str, Any]:
        """What the run record says about resuming."""
        return {"folder": str(self.folder), "reused": self.reused, "computed": self.computed}


def _drop_torn_tail(file: Path) -> None:
    """Cut a last line left without its newline by a killed process."""
    if not file.is_file():
        return
    raw = file.read_bytes()
    if raw and not raw.endswith(b"\n"):
        with open(file, "r+b") as fh:
            fh.truncate(raw.rfind(b"\n") + 1)


class AnswerHook:
    """lm-eval's cache hook (`LM.set_cache_hook`): HFLM calls `add_partial` once per answered request, as the
    answers come in; each goes into the cache under the LM's current scope."""

    def __init__(self, cache: AnswerCache, lm: Any) -> None:
        self.cache = cache
        self.lm = lm

    def add_partial(self, attr: str, req: Any, res: Any) -> None:
        if req is None:  # loglikelihood_rolling's windows: stored per whole request instead
            return
        self.cache.put(AnswerCache.key(self.lm.answer_scope, attr, req), res)
