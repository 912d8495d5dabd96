"""Run records: atomic publication, provenance in run.json, validation of what is written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from refine_bench import provenance, records
from refine_bench.errors import UserInputError
from refine_bench.records import RunRecord, arm_and_phase, normalize_stages
from refine_bench.report.loader import load_runs

SCORE = {"task": "niah_single_1", "group": "niah", "length": 4096, "metric": "recall", "value": 0.75,
         "stderr": 0.01, "n": 20}


def _create(root: Path, **kw) -> RunRecord:
    args = dict(kind="eval", model="deltanet-tiny", stages={"mid": "refine"}, config={"device": "cpu"}, seed=3,
                command=["refine-bench", "eval", "--model", "deltanet-tiny"])
    args.update(kw)
    return RunRecord.create(root, **args)


def test_unfinished_run_is_invisible_and_finish_publishes(tmp_path: Path) -> None:
    rec = _create(tmp_path)
    rec.write_scores([SCORE])
    rec.log_metrics(1, {"loss": 2.5})
    assert rec.path.parent == tmp_path and rec.path.name.startswith(".")
    assert load_runs(tmp_path).runs == [] and load_runs(tmp_path).warnings == []
    final = rec.finish()
    assert final == tmp_path / rec.run_id and rec.path == final
    assert [p.name for p in tmp_path.iterdir()] == [rec.run_id]  # the hidden temp folder is gone
    runset = load_runs(tmp_path)
    assert [r.run_id for r in runset.runs] == [rec.run_id]
    assert runset.runs[0].scores[0]["value"] == 0.75
    assert runset.runs[0].train_metrics() == [{"step": 1, "loss": 2.5}]
    with pytest.raises(RuntimeError):
        rec.write_scores([SCORE])


def test_run_json_provenance(tmp_path: Path) -> None:
    rec = _create(tmp_path, stages={"mid": "refine", "post": "nested_refine"}, config={"device": "cpu", "lr": 1e-6})
    meta = json.loads((rec.finish() / "run.json").read_text())
    assert meta["schema"] == records.SCHEMA_VERSION
    assert meta["run_id"] == rec.run_id and meta["kind"] == "eval" and meta["model"] == "deltanet-tiny"
    assert meta["stages"] == {"mid": "refine", "post": "nested_refine", "ttt": None}
    assert (meta["arm"], meta["phase"]) == ("nested_refine", "post")
    assert meta["config"] == {"device": "cpu", "lr": 1e-6}
    assert meta["command"] == ["refine-bench", "eval", "--model", "deltanet-tiny"]
    assert meta["git_sha"] == provenance.git_sha()
    assert meta["versions"]["torch"] == metadata.version("torch")
    assert meta["versions"]["transformers"] == metadata.version("transformers")
    assert meta["versions"]["lm_eval"] == metadata.version("lm_eval")
    assert meta["seeds"] == {"seed": 3} and meta["device"]["requested"] == "cpu"
    assert meta["status"] == "ok" and meta["start_time"] <= meta["end_time"]


def test_git_sha_reads_head(tmp_path: Path) -> None:
    env_cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*env_cmd, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run([*env_cmd, "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run([*env_cmd, "-C", str(tmp_path), "commit", "-q", "-m", "m"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert provenance.git_sha(tmp_path) == head.strip() and len(head.strip()) == 40
    assert provenance.git_sha(tmp_path / "nowhere") is None


def test_exception_in_context_publishes_failed_run_that_loader_skips(tmp_path: Path) -> None:
    ok = _create(tmp_path, model="deltanet-1.3b")
    ok.write_scores([SCORE])
    ok.finish()
    with pytest.raises(ZeroDivisionError):
        with _create(tmp_path) as rec:
            rec.write_scores([SCORE])
            1 / 0  # noqa: B018
    meta = json.loads((tmp_path / rec.run_id / "run.json").read_text())
    assert meta["status"] == "failed"
    assert (tmp_path / rec.run_id / "scores.jsonl").is_file()  # what was written is kept
    runset = load_runs(tmp_path)
    assert [r.run_id for r in runset.runs] == [ok.run_id]
    assert len(runset.warnings) == 1 and rec.run_id in runset.warnings[0] and "failed" in runset.warnings[0]


def test_crash_before_finish_leaves_nothing_visible(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from refine_bench.records import RunRecord
        rec = RunRecord.create(Path({str(tmp_path)!r}), kind="train", model="deltanet-tiny", stages={{}},
                               config={{}}, seed=0)
        rec.write_scores([{SCORE!r}])
        rec.log_metrics(0, {{"loss": 1.0}})
        os._exit(9)  # killed mid-run: no finish, no exception handler
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 1 and names[0].startswith(records.TMP_PREFIX)
    runset = load_runs(tmp_path)
    assert runset.runs == [] and runset.warnings == []


def test_failed_rename_keeps_run_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _create(tmp_path)
    rec.write_scores([SCORE])

    real_replace = records.os.replace

    def boom(src: str, dst: str) -> None:
        if Path(src).is_dir():  # only the final publish of the folder fails; file writes still work
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(records.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        rec.finish()
    assert json.loads((rec.path / "run.json").read_text())["status"] == "ok"  # got as far as the rename
    assert load_runs(tmp_path).runs == [] and load_runs(tmp_path).warnings == []


def test_stage_and_score_validation(tmp_path: Path) -> None:
    assert arm_and_phase(normalize_stages({})) == ("base", None)
    assert arm_and_phase(normalize_stages({"mid": "sft", "ttt": "refine"})) == ("refine", "ttt")
    with pytest.raises(UserInputError, match="unknown arm"):
        normalize_stages({"mid": "nested_sft"})
    with pytest.raises(UserInputError, match="unknown stage"):
        normalize_stages({"pre": "sft"})
    with pytest.raises(UserInputError, match="kind"):
        _create(tmp_path, kind="sweep")
    rec = _create(tmp_path)
    with pytest.raises(UserInputError, match="fractions"):
        rec.write_scores([{**SCORE, "value": 75.0}])
    with pytest.raises(UserInputError, match="length"):
        rec.write_scores([{**SCORE, "length": "4k"}])
    with pytest.raises(UserInputError, match="inside the run folder"):
        rec.write_json("../escape.json", {})
    rec.write_scores([SCORE])
    rec.write_scores([{**SCORE, "task": "niah_single_2", "stderr": float("nan"), "n": None}])
    rows = [json.loads(x) for x in (rec.path / "scores.jsonl").read_text().splitlines()]
    assert [r["task"] for r in rows] == ["niah_single_1", "niah_single_2"]
    assert rows[1]["stderr"] is None
    rec.write_json("lm_eval/results.json", {"a": 1})
    assert json.loads((rec.path / "lm_eval" / "results.json").read_text()) == {"a": 1}


def test_score_lines_print_as_stored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from refine_bench.cli.output import print_score_lines

    rec = _create(tmp_path)
    rec.write_scores([SCORE, {**SCORE, "task": "niah_single_2", "stderr": None}])
    final = rec.finish()
    capsys.readouterr()
    print_score_lines(final)
    stored = (final / "scores.jsonl").read_text().splitlines()
    assert capsys.readouterr().out.splitlines() == [f"  {line}" for line in stored] and len(stored) == 2
