"""Files: atomic writes (a reader never sees a half-written file, a crash never destroys the old one), the one
JSON-lines reader, advisory locks (one writer per folder), and file hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.provenance import this_process


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


# ------------------------------------------------------------------------------------------------ advisory locks

LOCK_WAIT_S = 0.5  # a second writer retries this long: a prober (see `lock_is_free`) holds a lock for microseconds


def lock_holder(path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """(pid, host) written into a lock file by its holder, or None when unreadable."""
    try:
        pid, host = Path(path).read_text(encoding="utf-8").split(maxsplit=1)
        return int(pid), host.strip()
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class FileLock:
    """An advisory, exclusive lock on a lock file (``fcntl.flock``), held from :meth:`acquire` to :meth:`release`.

    The kernel drops the lock when the holder's process dies, however it dies, so a crash never leaves a folder
    locked. The holder writes its pid and host into the file, so a second writer can say who holds it.
    """

    def __init__(self, path: str | os.PathLike[str], *, label: str | None = None,
                 hint: str = "wait for it to finish or stop it", wait_s: float = LOCK_WAIT_S) -> None:
        self.path = Path(path)
        self.label = label or str(self.path.parent)
        self.hint = hint
        self.wait_s = wait_s
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FileLock:
        """Take the lock, or raise UserInputError naming the holder's pid and host."""
        import fcntl

        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                holder = lock_holder(self.path)
                who = "another process" if holder is None else f"pid {holder[0]} (host {holder[1]})"
                raise UserInputError(f"{self.label} is in use by {who}; {self.hint}") from None
        me = this_process()
        os.ftruncate(fd, 0)
        os.write(fd, f"{me['pid']} {me['host']}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Clear the holder's name and drop the lock (the file stays: deleting it would race a waiting writer)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def exclusive_lock(path: str | os.PathLike[str], *, label: str | None = None,
                   hint: str = "wait for it to finish or stop it", wait_s: float = LOCK_WAIT_S) -> FileLock:
    """A context manager holding an exclusive advisory lock on the lock file `path` (created if missing).

    A second process asking for it gets UserInputError("<label> is in use by pid N (host H); <hint>"), label
    defaulting to the lock file's folder. Used on training work folders and on run records being written.
    """
    return FileLock(path, label=label, hint=hint, wait_s=wait_s)


def lock_is_free(path: str | os.PathLike[str]) -> bool:
    """Whether no live process holds the lock file `path` (True when it does not exist); takes it for an instant."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def read_json_object(path: Path, error: type[Exception] = UserInputError) -> dict:
    """The JSON object stored in `path`; a file that does not parse or holds another type raises `error` naming
    the file (a truncated checkpoint config or run record reads as corrupt, not as a traceback)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON ({exc}): the file is truncated or corrupt") from exc
    if not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
