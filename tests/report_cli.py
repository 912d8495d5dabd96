"""Run the `refine-bench` command line in-process through its real entry point (exit codes included)."""

from __future__ import annotations

import pytest

from refine_bench.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """(exit code, stdout + stderr) of `refine-bench ARGS`."""
    capsys.readouterr()  # drop what earlier steps of the test printed
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err
