"""Files: atomic writes (a reader never sees a half-written file, a crash never destroys the old one) and the
one JSON-lines reader."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the mode a plain open() would
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    """Write `obj` as JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a crash loses at most the line being written)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl_lines(path: str | os.PathLike[str], *, what: str = "data file",
                     allow_torn_tail: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each JSON-object line of a UTF-8 file, blank lines skipped; errors name the file
    and the line. `allow_torn_tail` drops a last line that does not parse and lacks its newline: the line an
    append (:func:`append_jsonl`) was writing when its process died."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserInputError(f"{what} {path}: line {line} is not valid UTF-8 ({exc.reason})") from exc
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if allow_torn_tail and number == len(lines) and not text.endswith("\n"):
                break
            raise UserInputError(f"{what} {path}: line {number} is not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise UserInputError(f"{what} {path}: line {number} is not a JSON object")
        rows.append((number, row))
    return rows


def read_jsonl(path: str | os.PathLike[str], *, what: str = "data file",
               allow_torn_tail: bool = False) -> list[dict[str, Any]]:
    """The JSON-object lines of a UTF-8 file (see :func:`read_jsonl_lines`)."""
    return [row for _, row in read_jsonl_lines(path, what=what, allow_torn_tail=allow_torn_tail)]
