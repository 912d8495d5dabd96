"""Honest records under faults, with real processes: the advisory lock (a second writer is refused, a dead
holder releases it), interrupted vs failed records, stale records left by a killed writer and their cleanup,
and JSON-lines files torn by a crash."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from refine_bench import records
from refine_bench.errors import UserInputError
from refine_bench.fileio import exclusive_lock, lock_holder, lock_is_free, read_jsonl
from refine_bench.records import RunRecord
from refine_bench.report.loader import load_runs
from refine_bench.report.pending import STALE, classify, pending_runs
from tests.report_cli import run_cli

HOST = socket.gethostname()


def _spawn(script: str) -> subprocess.Popen:
    """A Python child running `script`; it prints one line once it is ready, then waits for stdin to close."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ready(child: subprocess.Popen) -> str:
    line = child.stdout.readline().strip()
    assert line, child.stderr.read()
    return line


def _kill(child: subprocess.Popen) -> None:
    child.kill()
    child.wait(timeout=30)


LOCK_HOLDER = """
    import sys
    from refine_bench.fileio import exclusive_lock
    with exclusive_lock({path!r}):
        print("locked", flush=True)
        sys.stdin.read()
"""


def test_second_writer_is_refused_naming_the_holder_until_it_dies(tmp_path: Path) -> None:
    lock = tmp_path / "work" / ".lock"
    child = _spawn(LOCK_HOLDER.format(path=str(lock)))
    try:
        assert _ready(child) == "locked"
        assert lock_holder(lock) == (child.pid, HOST) and not lock_is_free(lock)
        with pytest.raises(UserInputError) as err:
            with exclusive_lock(lock, label="work folder W", hint="wait for it or pass another --work-dir",
                                wait_s=0.1):
                pass
        assert str(err.value) == (f"work folder W is in use by pid {child.pid} (host {HOST}); wait for it or pass "
                                  "another --work-dir")
    finally:
        _kill(child)  # SIGKILL: no cleanup runs, the kernel drops the lock
    assert lock_is_free(lock)
    with exclusive_lock(lock) as held:
        assert held.held and lock_holder(lock) == (os.getpid(), HOST)
    assert lock_holder(lock) is None  # released: the file no longer names a holder
    assert lock_is_free(tmp_path / "no-such.lock")


def test_a_record_being_written_is_locked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = RunRecord.create(tmp_path, kind="eval", model="m", stages={}, config={}, seed=0)
    meta = json.loads((rec.path / records.RUN_JSON).read_text())
    assert meta["status"] == "running" and meta["writer"] == {"pid": os.getpid(), "host": HOST}
    assert lock_holder(rec.path / records.LOCK_FILE) == (os.getpid(), HOST)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from refine_bench.fileio import exclusive_lock
        from refine_bench.errors import UserInputError
        try:
            exclusive_lock({str(rec.path / records.LOCK_FILE)!r}, wait_s=0.1).acquire()
        except UserInputError as err:
            print(err)
    """)], capture_output=True, text=True, timeout=60)
    assert f"is in use by pid {os.getpid()} (host {HOST})" in child.stdout, child.stderr
    final = rec.finish("failed", error="RuntimeError: boom")
    assert not (final / records.LOCK_FILE).exists()  # a published record has no writer
    meta = json.loads((final / records.RUN_JSON).read_text())
    assert (meta["status"], meta["error"]) == ("failed", "RuntimeError: boom")
    code, out = run_cli(capsys, "results", "show", final)
    assert code == 0 and "status failed" in out and "error    RuntimeError: boom" in out


def test_discarded_record_leaves_nothing(tmp_path: Path) -> None:
    rec = RunRecord.create(tmp_path, kind="eval", model="m", stages={}, config={}, seed=0)
    rec.write_scores([{"task": "niah_single_1", "group": "niah", "length": 1024, "metric": "recall", "value": 0.5}])
    rec.discard()
    assert list(tmp_path.iterdir()) == [] and pending_runs(tmp_path) == []
    with pytest.raises(RuntimeError, match="already finished"):
        rec.finish()


RECORD_WRITER = """
    import sys, time
    from pathlib import Path
    from refine_bench.records import RunRecord
    with RunRecord.create(Path({root!r}), kind="train", model="deltanet-tiny", stages={{"mid": "sft"}}, config={{}},
                          seed=0) as rec:
        rec.log_metrics(1, {{"loss": 2.0}})
        print(rec.path, flush=True)
        {body}
"""


def test_sigterm_finishes_the_record_as_interrupted(tmp_path: Path) -> None:
    child = _spawn(RECORD_WRITER.format(root=str(tmp_path), body="time.sleep(60)"))
    tmp = Path(_ready(child))
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=60)
    assert child.returncode != 0
    final = tmp_path / tmp.name[len(records.TMP_PREFIX):]
    meta = json.loads((final / records.RUN_JSON).read_text())
    assert (meta["status"], meta["error"]) == ("interrupted", "Interrupted: stopped by SIGTERM")
    assert not tmp.exists()


def _finishes() -> None:
    pass


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def _bug() -> None:
    raise ValueError("bad batch")


@pytest.mark.parametrize(("work", "status", "error"), [
    (_ctrl_c, "interrupted", "KeyboardInterrupt"),
    (_bug, "failed", "ValueError: bad batch"),
    (_finishes, "ok", None),
])
def test_context_manager_statuses(tmp_path: Path, work, status: str, error: str | None) -> None:
    raised, before = None, signal.getsignal(signal.SIGTERM)
    try:
        with RunRecord.create(tmp_path, kind="eval", model="m", stages={}, config={}, seed=0) as rec:
            work()
    except BaseException as exc:  # noqa: BLE001 - Ctrl-C included: the record must say how the work ended
        raised = exc
    assert (raised is None) == (status == "ok")
    meta = json.loads((tmp_path / rec.run_id / records.RUN_JSON).read_text())
    assert (meta["status"], meta["error"]) == (status, error)
    assert signal.getsignal(signal.SIGTERM) == before  # the SIGTERM handler is put back


def test_killed_writer_leaves_a_stale_record_that_clean_removes(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    done = RunRecord.create(runs, kind="eval", model="m", stages={}, config={}, seed=0)
    done.finish()
    killed = _spawn(RECORD_WRITER.format(root=str(runs), body="sys.stdin.read()"))
    alive = _spawn(RECORD_WRITER.format(root=str(runs), body="sys.stdin.read()"))
    try:
        killed_tmp, alive_tmp = Path(_ready(killed)), Path(_ready(alive))
        assert {p.path: p.state for p in pending_runs(runs)} == {killed_tmp: "running", alive_tmp: "running"}
        _kill(killed)  # SIGKILL: no handler runs, the record stays "running" in run.json
        assert json.loads((killed_tmp / records.RUN_JSON).read_text())["status"] == "running"
        states = {p.path: p.state for p in pending_runs(runs)}
        assert states == {killed_tmp: STALE, alive_tmp: "running"}
        code, out = run_cli(capsys, "results", "ls", "--runs-dir", runs)
        assert code == 0
        stale_line = next(line for line in out.splitlines() if killed_tmp.name[len(records.TMP_PREFIX):] in line)
        assert f"stale (its writer is gone: pid {killed.pid} on host {HOST})" in stale_line
        assert f"running (being written: pid {alive.pid} on host {HOST})" in out and "1 stale record(s)" in out
        code, out = run_cli(capsys, "results", "clean", "--runs-dir", runs, "--dry-run")
        assert code == 0 and f"would remove {killed_tmp}" in out and killed_tmp.is_dir()
        code, out = run_cli(capsys, "results", "clean", "--runs-dir", runs)
        assert code == 0 and f"removed {killed_tmp}" in out and "removed 1 stale record(s)" in out
        assert not killed_tmp.exists() and alive_tmp.is_dir()  # the live writer's record is kept
        assert [r.run_id for r in load_runs(runs).runs] == [done.run_id]
    finally:
        _kill(alive)
        if killed.poll() is None:
            _kill(killed)


def test_folder_without_run_json_is_stale_only_after_a_grace_period(tmp_path: Path) -> None:
    starting = tmp_path / f"{records.TMP_PREFIX}20260101T000000Z-eval-m-base-abcdef"
    starting.mkdir()
    now = starting.stat().st_mtime
    assert classify(starting, now=now + 5).state == "running"
    assert classify(starting, now=now + 3600).state == STALE
    # a record from before records named their writer, its lock free: stale
    (starting / records.RUN_JSON).write_text(json.dumps({"run_id": "x", "status": "running"}))
    assert classify(starting).state == STALE and classify(starting).writer == "an unknown process"


def test_torn_last_line_is_dropped_only_where_allowed(tmp_path: Path) -> None:
    log = tmp_path / "train_metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # the writer died mid-append
    assert read_jsonl(log, allow_torn_tail=True) == [{"step": 1, "loss": 2.0}]
    with pytest.raises(UserInputError, match="train_metrics.jsonl: line 2 is not valid JSON"):
        read_jsonl(log)
    log.write_text('{"step": 1, "lo\n{"step": 2}\n')  # a bad line in the middle is corruption, not a torn tail
    with pytest.raises(UserInputError, match="line 1 is not valid JSON"):
        read_jsonl(log, allow_torn_tail=True)


def test_run_with_torn_metrics_still_loads(tmp_path: Path) -> None:
    rec = RunRecord.create(tmp_path, kind="train", model="m", stages={"mid": "sft"}, config={}, seed=0)
    rec.log_metrics(1, {"loss": 2.0})
    with open(rec.path / records.TRAIN_METRICS_FILE, "a") as fh:
        fh.write('{"step": 2, "lo')
    rec.finish()
    [run] = load_runs(tmp_path).runs
    assert run.train_metrics() == [{"step": 1, "loss": 2.0}]
