"""`refine-bench train` and `run` end to end on the tiny model: records, resume, bad input."""

from __future__ import annotations

import json
import subprocess
import sys


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "refine_bench", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_train_writes_record_and_a_second_invocation_resumes(tmp_path):
    common = ["train", "--model", "deltanet-tiny", "--arm", "refine", "--batch-size", "2", "--seq-len", "96",
              "--chunks", "2", "--work-dir", str(tmp_path / "work"), "--runs-dir", str(tmp_path / "runs")]
    first = cli(*common, "--steps", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = cli(*common, "--steps", "2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout and "step-1" in second.stdout
    records = sorted(p for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))
    metrics = [json.loads(line) for r in records for line in (r / "train_metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all({"loss", "loss_rl", "reward_mean", "frac_reward_zero_std"} <= set(m) for m in metrics)
    meta = json.loads((records[-1] / "run.json").read_text())
    assert meta["stages"]["mid"] == "refine" and meta["config"]["resumed_from"].endswith("step-1")
    assert (tmp_path / "work" / "checkpoints" / "step-2" / "model.safetensors").is_file()


def test_run_base_evaluates_without_training(tmp_path):
    res = cli("run", "--model", "deltanet-tiny", "--arm", "base", "--tasks", "niah_single_1", "--lengths", "512",
              "--limit", "1", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path.parent)
    assert res.returncode == 0, res.stderr
    (record,) = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    meta = json.loads((record / "run.json").read_text())
    assert meta["kind"] == "eval" and meta["arm"] == "base"
    rows = [json.loads(line) for line in (record / "scores.jsonl").read_text().splitlines()]
    assert [(r["task"], r["length"], r["metric"], r["n"]) for r in rows] == [("niah_single_1", 512, "recall", 1)]


def test_bad_training_input_exits_2(tmp_path):
    res = cli("train", "--arm", "dpo", cwd=tmp_path)
    assert res.returncode == 2 and "unknown arm 'dpo'" in res.stderr
    res = cli("train", "--data", str(tmp_path / "missing.jsonl"), cwd=tmp_path)
    assert res.returncode == 2 and "missing.jsonl does not exist" in res.stderr
    res = cli("train", "--reward", "bleu", cwd=tmp_path)
    assert res.returncode == 2 and "unknown reward 'bleu'" in res.stderr


def test_run_with_ablation_knobs_labels_both_records(tmp_path):
    res = cli("run", "--model", "deltanet-tiny", "--arm", "refine", "--reward", "binary", "--chunks", "2",
              "--batch-size", "2", "--seq-len", "96", "--steps", "1", "--tasks", "niah_single_1", "--lengths", "512",
              "--limit", "1", "--runs-dir", str(tmp_path / "runs"), "--work-dir", str(tmp_path / "w"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    metas = [json.loads((r / "run.json").read_text()) for r in sorted((tmp_path / "runs").iterdir())
             if not r.name.startswith(".")]
    assert sorted(m["kind"] for m in metas) == ["eval", "train"]
    assert {m["config"]["variant"] for m in metas} == {"chunks=2,reward=binary"}
    train = next(m for m in metas if m["kind"] == "train")
    assert (train["config"]["refine"]["reward"], train["config"]["refine"]["num_chunks"]) == ("binary", 2)
