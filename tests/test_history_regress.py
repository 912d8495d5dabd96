"""Metric history rows, the regression gate (direction-aware, speed never gating) and the benchmark export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refine_bench.errors import UserInputError
from refine_bench.records import RunRecord
from refine_bench.report.history import read_history
from refine_bench.report.history_export import export_github_action_benchmark
from refine_bench.report.history_sources import rows_from_bench_json, rows_from_run
from refine_bench.report.metric_units import guess_direction_unit
from refine_bench.report.regress import compare, resolve_baseline
from tests.report_cli import run_cli


def _row(commit: str, metric: str, value: float, *, direction: str = "bigger", deterministic: bool = True,
         benchmark: str = "eval/deltanet-tiny", unit: str = "%") -> dict:
    return {"commit": commit, "date": "2026-01-01T00:00:00+00:00", "benchmark": benchmark, "metric": metric,
            "value": value, "unit": unit, "direction": direction, "machine": "linux-x86_64-2cpu",
            "deterministic": deterministic}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _history(tmp_path: Path, *, recall: float = 50.0, loss: float = 2.0, speed: float = 3.0) -> Path:
    """Commit aaa... is the baseline; commit bbb... holds the given current values."""
    rows = [_row("a" * 40, "niah_single_1@4096/recall", 50.0), _row("a" * 40, "train/loss@final", 2.0,
                                                                     direction="smaller", unit="nats"),
            _row("a" * 40, "speedup", 3.0, deterministic=False, benchmark="bench/kernels", unit="x"),
            _row("b" * 40, "niah_single_1@4096/recall", recall), _row("b" * 40, "train/loss@final", loss,
                                                                       direction="smaller", unit="nats"),
            _row("b" * 40, "speedup", speed, deterministic=False, benchmark="bench/kernels", unit="x")]
    return _write(tmp_path / "history.jsonl", rows)


@pytest.fixture
def regress(capsys: pytest.CaptureFixture[str]):
    """`refine-bench regress --history HISTORY ARGS...` -> (exit code, output)."""
    return lambda history, *args: run_cli(capsys, "regress", "--history", history, *args)


@pytest.mark.parametrize(("recall", "loss", "code"), [
    (50.0, 2.0, 0),    # unchanged
    (47.6, 2.09, 0),   # worse, but within 5% (bigger: -4.8%; smaller: +4.5%)
    (60.0, 1.5, 0),    # both improved (direction-aware: a lower loss is better)
    (47.0, 2.0, 1),    # recall -6%: regression
    (50.0, 2.2, 1),    # loss +10% on a smaller-is-better metric: regression
    (50.0, 1.0, 0),    # loss halved: improvement, even though the value dropped by 50%
])
def test_regress_direction_aware(tmp_path: Path, recall: float, loss: float, code: int, regress) -> None:
    exit_code, out = regress(_history(tmp_path, recall=recall, loss=loss), "--baseline", "last",
                              "--tolerance", "0.05")
    assert exit_code == code, out


def test_speed_is_flagged_but_never_gates_unless_asked(tmp_path: Path, regress) -> None:
    hist = _history(tmp_path, speed=1.0)  # speedup fell from 3.0 to 1.0
    code, out = regress(hist, "--baseline", "last")
    assert code == 0
    assert "FLAG regressed" in out and "bench/kernels :: speedup" in out and "not gating" in out
    code, out = regress(hist, "--baseline", "last", "--gate-speed")
    assert code == 1 and "FAIL regressed" in out


def test_baseline_refs(tmp_path: Path, regress) -> None:
    hist = _history(tmp_path, recall=40.0)
    assert regress(hist, "--baseline", "aaaa")[0] == 1  # SHA prefix of the older commit
    assert regress(hist, "--baseline", "bbbb")[0] == 0  # against itself
    other = _write(tmp_path / "main.jsonl", [_row("c" * 40, "niah_single_1@4096/recall", 41.0)])
    assert regress(hist, "--baseline", str(other))[0] == 0  # 40 vs 41: -2.4%, within tolerance
    code, out = regress(hist, "--baseline", "deadbeef")
    assert code == 2 and "unknown baseline" in out
    single = _write(tmp_path / "one.jsonl", [_row("c" * 40, "m", 1.0)])
    code, out = regress(single, "--baseline", "last")
    assert code == 0 and "nothing checked" in out


def test_ambiguous_prefix_and_zero_baseline() -> None:
    rows = [_row("ab" + "0" * 38, "m", 0.0), _row("ac" + "0" * 38, "m", 0.04), _row("ac" + "0" * 38, "s", 0.1,
                                                                                    direction="smaller")]
    with pytest.raises(UserInputError, match="ambiguous"):
        resolve_baseline("a", rows)
    base = [_row("x", "m", 0.0), _row("x", "s", 0.0, direction="smaller")]
    # Zero baseline: the tolerance is absolute.
    verdicts = {c.metric: c.status for c in compare(rows, base, tolerance=0.05)}
    assert verdicts == {"m": "ok", "s": "regressed"}
    verdicts = {c.metric: c.status for c in compare([_row("y", "m", -0.06)], base, tolerance=0.05)}
    assert verdicts["m"] == "regressed" and verdicts["s"] == "missing"


def test_corrupt_history_line_is_bad_input(tmp_path: Path, regress) -> None:
    hist = _history(tmp_path)
    with open(hist, "a") as fh:
        fh.write('{"commit": "c", "value": \n')
    code, out = regress(hist, "--baseline", "last")
    assert code == 2 and "history.jsonl: line 7 is not valid JSON" in out
    bad = _write(tmp_path / "bad.jsonl", [{**_row("c", "m", 1.0), "direction": "up"}])
    code, out = regress(bad, "--baseline", "last")
    assert code == 2 and "bad.jsonl: line 1" in out and "direction" in out


def _finished_run(root: Path, device: str, seed: int | None) -> Path:
    rec = RunRecord.create(root, kind="eval", model="deltanet-tiny", stages={"mid": "refine"},
                           config={"device": device}, seed=seed)
    rec.write_scores([{"task": "niah_single_1", "group": "niah", "length": 4096, "metric": "recall", "value": 0.9,
                       "stderr": 0.02, "n": 50},
                      {"task": "longbench_trec", "group": "longbench", "length": None, "metric": "score",
                       "value": 0.25, "stderr": None, "n": 50}])
    rec.log_metrics(0, {"loss": 3.0})
    rec.log_metrics(1, {"loss": 2.5})
    return rec.finish()


def test_rows_from_run(tmp_path: Path) -> None:
    rows = rows_from_run(_finished_run(tmp_path, "cpu", 0), commit="c1", machine="m")
    by_metric = {r["metric"]: r for r in rows}
    assert set(by_metric) == {"niah_single_1@4096/recall", "longbench_trec/score", "train/loss@final"}
    niah = by_metric["niah_single_1@4096/recall"]
    assert niah["value"] == pytest.approx(90.0) and niah["unit"] == "%" and niah["range"] == "± 2"
    assert niah["benchmark"] == "eval/deltanet-tiny/refine/-/-" and niah["direction"] == "bigger"
    assert all(r["deterministic"] for r in rows) and all(r["commit"] == "c1" for r in rows)
    assert by_metric["train/loss@final"]["value"] == 2.5 and by_metric["train/loss@final"]["direction"] == "smaller"
    gpu = rows_from_run(_finished_run(tmp_path, "cuda", 0), commit="c1")
    unseeded = rows_from_run(_finished_run(tmp_path, "cpu", None), commit="c1")
    assert not any(r["deterministic"] for r in gpu + unseeded)


@pytest.mark.parametrize(("name", "want"), [
    ("chunk_vs_recurrent_speedup", ("bigger", "x")),
    ("delta_rule_chunk_fwd_bwd_s", ("smaller", "s")),
    ("deltanet_cached_s_per_token", ("smaller", "s")),
    ("matmul_peak_gflops", ("bigger", "GFLOP/s")),
    ("decode_tokens_per_s", ("bigger", "1/s")),
    ("prefill_ms", ("smaller", "ms")),
    ("peak_memory_gb", ("smaller", "GB")),
])
def test_bench_metric_direction(name: str, want: tuple[str, str]) -> None:
    assert guess_direction_unit(name) == want


def test_bench_json_and_cli_append(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = tmp_path / "bench.txt"
    bench.write_text("timing chunk kernels...\nsome log line\n"
                     + json.dumps({"speedup_chunk_vs_naive": 3.2, "fwd_ms": 12.5, "note": "cpu",
                                   "decode": {"tok_per_s": 1000}}) + "\n")
    rows, warnings = rows_from_bench_json(bench, commit="c1")
    got = {r["metric"]: (r["direction"], r["unit"], r["deterministic"]) for r in rows}
    assert got == {"speedup_chunk_vs_naive": ("bigger", "x", False), "fwd_ms": ("smaller", "ms", False),
                   "decode/tok_per_s": ("bigger", "1/s", False)}
    assert len(warnings) == 1 and "note" in warnings[0]
    hist = tmp_path / "hist.jsonl"
    run_dir = _finished_run(tmp_path / "runs", "cpu", 0)
    for source in (run_dir, bench):
        code, out = run_cli(capsys, "history", "append", "--from", source, "--history", hist, "--commit", "f" * 40)
        assert code == 0, out
    assert len(read_history(hist)) == 3 + 3
    code, out = run_cli(capsys, "history", "append", "--from", tmp_path / "nope", "--history", hist,
                        "--commit", "f" * 40)
    assert code == 2 and "no such run folder" in out


def test_export_github_action_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hist = _history(tmp_path, recall=48.0, loss=1.9, speed=3.5)
    code, out = run_cli(capsys, "history", "export", "--format", "github-action-benchmark", "--history", hist,
                        "--out", tmp_path / "gab.json")
    assert code == 0, out
    bigger = json.loads((tmp_path / "gab-bigger.json").read_text())
    smaller = json.loads((tmp_path / "gab-smaller.json").read_text())
    assert [(e["name"], e["value"], e["unit"]) for e in bigger] == [
        ("bench/kernels :: speedup", 3.5, "x"), ("eval/deltanet-tiny :: niah_single_1@4096/recall", 48.0, "%")]
    assert [(e["name"], e["value"]) for e in smaller] == [("eval/deltanet-tiny :: train/loss@final", 1.9)]
    assert all(set(e) == {"name", "unit", "value", "range", "extra"} for e in bigger + smaller)
    assert "commit=bbbbbbbbbbbb" in smaller[0]["extra"]
    older = export_github_action_benchmark(read_history(hist), tmp_path / "old", commit="aaa")
    assert json.loads(older[1].read_text())[0]["value"] == 2.0
    code, out = run_cli(capsys, "history", "export", "--format", "csv", "--history", hist, "--out", "x")
    assert code == 2 and "unknown export format 'csv'" in out
