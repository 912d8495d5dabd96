"""Stopping a run from outside (Ctrl-C, SIGTERM) as an exception, so the run can record where it stopped.

An interruption is not a failure of the program: run records mark it "interrupted", any other exception
"failed" (:func:`run_status`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(BaseException):
    """A stop signal (SIGTERM) arrived. A BaseException, like KeyboardInterrupt, so `except Exception` lets it by.

    `exit_code` is the shell's convention for a process ended by a signal: 128 + the signal number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` in the main thread (elsewhere: signals untouched)."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: only the main thread may set handlers
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def is_interruption(exc: BaseException) -> bool:
    """Ctrl-C or a stop signal, as opposed to an error."""
    return isinstance(exc, (KeyboardInterrupt, Interrupted))


def run_status(exc: BaseException | None) -> str:
    """The status a run record gets for how its work ended: "ok", "interrupted" or "failed"."""
    if exc is None:
        return "ok"
    return "interrupted" if is_interruption(exc) else "failed"
