"""Training under faults and odd input: resume only what matches, non-finite steps, one writer per folder,
signals, torn checkpoints, checkpoint retention, finished runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from refine_bench.train.checkpoints import TRAINER_STATE, latest_checkpoint, list_checkpoints
from refine_bench.train.trainer import NonFiniteTraining, Trainer
from tests.test_trainer import make_model, make_stream, refine_config

TRAIN = ["train", "--model", "deltanet-tiny", "--arm", "sft", "--batch-size", "2", "--seq-len", "64",
         "--report-to", "none"]


def cli(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "refine_bench", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def records(runs):
    return [json.loads((r / "run.json").read_text()) for r in sorted(runs.iterdir()) if not r.name.startswith(".")]


def test_resume_refuses_other_settings_and_force_resume_is_recorded(tmp_path):
    common = [*TRAIN, "--work-dir", str(tmp_path / "w"), "--runs-dir", str(tmp_path / "runs")]
    assert cli(*common, "--steps", "1", cwd=tmp_path).returncode == 0
    other = cli(*common, "--steps", "2", "--lr", "1e-3", "--seq-len", "96", cwd=tmp_path)
    assert other.returncode == 2
    assert "lr: 1e-06 -> 0.001" in other.stderr and "seq_len: 64 -> 96" in other.stderr
    assert "--force-resume" in other.stderr
    forced = cli(*common, "--steps", "2", "--lr", "1e-3", "--force-resume", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    meta = records(tmp_path / "runs")[-1]
    assert meta["config"]["force_resume"] and meta["config"]["resume_differences"] == ["lr: 1e-06 -> 0.001"]
    state = json.loads((latest_checkpoint(tmp_path / "w") / TRAINER_STATE).read_text())
    assert state["step"] == 2 and state["config"]["lr"] == 1e-3


def test_a_finished_run_is_not_taken_for_one_from_new_weights_in_the_same_folder(tmp_path):
    import hashlib

    from refine_bench.models.tokenizer import load_tiny_tokenizer
    from refine_bench.models.zoo import load_model, save_checkpoint

    model_dir = tmp_path / "base"
    save_checkpoint(load_model("deltanet-tiny", seed=1), load_tiny_tokenizer(), model_dir)
    old_sha = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    common = [TRAIN[0], "--model", str(model_dir), *TRAIN[3:], "--steps", "1", "--work-dir", str(tmp_path / "w"),
              "--runs-dir", str(tmp_path / "runs")]
    assert cli(*common, cwd=tmp_path).returncode == 0
    assert records(tmp_path / "runs")[-1]["config"]["model_weights_sha256"] == old_sha
    save_checkpoint(load_model("deltanet-tiny", seed=2), load_tiny_tokenizer(), model_dir)
    new_sha = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    again = cli(*common, cwd=tmp_path)
    assert again.returncode == 2 and f"model_weights_sha256: '{old_sha}' -> '{new_sha}'" in again.stderr


def test_the_identity_of_a_pretraining_run_names_the_weights_it_continues_from(tmp_path):
    from refine_bench.cli.training_options import build_config
    from refine_bench.models.tokenizer import load_tiny_tokenizer
    from refine_bench.models.zoo import load_model, model_weights_sha256, save_checkpoint
    from refine_bench.train.session import TrainRequest, run_identity

    save_checkpoint(load_model("deltanet-tiny", seed=1), load_tiny_tokenizer(), tmp_path / "stage-1")
    pretrain = build_config("deltanet-tiny", "sft", "pretrain")
    from_init = run_identity(TrainRequest(model="deltanet-small"), pretrain, 1)
    continued = run_identity(TrainRequest(model=str(tmp_path / "stage-1")), pretrain, 1)
    assert from_init["model_weights_sha256"] is None  # a seeded random init: the seed identifies it
    assert continued["model_weights_sha256"] == model_weights_sha256(tmp_path / "stage-1") is not None


def test_default_work_folders_differ_by_settings_and_a_finished_run_is_not_redone(tmp_path):
    runs = ["--runs-dir", str(tmp_path / "runs"), "--steps", "1"]
    assert cli(*TRAIN, *runs, cwd=tmp_path).returncode == 0
    assert cli(*TRAIN, *runs, "--lr", "1e-4", cwd=tmp_path).returncode == 0
    folders = sorted(p.name for p in (tmp_path / "results" / "checkpoints").iterdir())
    assert len(folders) == 2 and all(f.startswith("deltanet-tiny-mid-sft-seed0-") for f in folders)
    again = cli(*TRAIN, *runs, cwd=tmp_path)
    assert again.returncode == 0 and "already finished" in again.stdout
    assert len(records(tmp_path / "runs")) == 2  # the finished command wrote nothing


def test_stop_after_finishes_at_that_step_and_a_rerun_without_it_goes_on(tmp_path):
    common = [*TRAIN, "--work-dir", str(tmp_path / "w"), "--runs-dir", str(tmp_path / "runs"), "--steps", "2"]
    first = cli(*common, "--stop-after", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = cli(*common, "--stop-after", "1", cwd=tmp_path)
    assert again.returncode == 0 and "already finished" in again.stdout and "(step 1)" in again.stdout
    rest = cli(*common, cwd=tmp_path)
    assert rest.returncode == 0 and "resumed from" in rest.stdout, rest.stderr
    assert [p.name for p in list_checkpoints(tmp_path / "w")] == ["step-1", "step-2"]
    bad = cli(*common, "--stop-after", "3", cwd=tmp_path)
    assert bad.returncode == 2 and "stop_after must be an integer in [1, steps=2], got 3" in bad.stderr


def test_bad_numbers_are_refused_before_training(tmp_path, monkeypatch, capsys):
    from refine_bench.cli import main

    monkeypatch.chdir(tmp_path)
    for args, message in [(["--lr", "-1"], "learning rate must be"), (["--lr", "nan"], "learning rate must be"),
                          (["--steps", "0"], "steps must be"), (["--chunks", "0", "--arm", "refine"], "num_chunks"),
                          (["--reward", "bleu", "--arm", "refine"], "unknown reward"),
                          (["--phase", "ttt"], "test-time training runs inside")]:
        with pytest.raises(SystemExit) as exit_info:
            main([*TRAIN, "--runs-dir", str(tmp_path / "runs"), *args])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, args
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = refine_config(steps=6, lr=1e30, save_every=1, max_nonfinite_steps=3, arm="sft", mini_batch_size=None)
    trainer = Trainer(make_model(), None, cfg, make_stream(), output_dir=tmp_path)
    with pytest.raises(NonFiniteTraining, match="3 steps in a row.*last good checkpoint is .*step-1"):
        trainer.train()
    (good,) = list_checkpoints(tmp_path)
    assert good.name == "step-1"
    from refine_bench.models.checkpoint import load_state_dict

    assert all(torch.isfinite(v).all() for v in load_state_dict(good).values())


def test_non_finite_sampling_skips_the_step_instead_of_crashing():
    cfg = refine_config(steps=1, lr=1e-3)
    model = make_model()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    logged = []
    Trainer(model, None, cfg, make_stream(), log_fn=lambda s, m: logged.append(m)).train()
    assert logged[0]["skipped_steps"] == 1 and logged[0]["optimizer_steps"] == 0


def test_a_torn_checkpoint_falls_back_to_the_previous_one_and_old_ones_are_pruned(tmp_path):
    cfg = refine_config(steps=4, save_every=1, keep_last=2)
    Trainer(make_model(), None, cfg, make_stream(), output_dir=tmp_path).train()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-3", "step-4"]
    (tmp_path / "checkpoints" / "step-4" / "model.safetensors").unlink()  # a save cut short
    assert latest_checkpoint(tmp_path).name == "step-3"
    torn = tmp_path / "checkpoints" / "step-5"
    torn.mkdir()
    (torn / TRAINER_STATE).write_text(json.dumps({"step": 5, "files": {"model.safetensors": 10}}))
    assert latest_checkpoint(tmp_path).name == "step-3"


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    work = tmp_path / "w"
    first = subprocess.Popen([sys.executable, "-m", "refine_bench", *TRAIN, "--steps", "400", "--work-dir", str(work),
                              "--runs-dir", str(tmp_path / "runs")], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # wait until the first run holds the lock and trains
            if (work / ".lock").exists() and any((tmp_path / "runs").glob(".tmp-*/train_metrics.jsonl")):
                break
            time.sleep(0.1)
        second = cli(*TRAIN, "--steps", "400", "--work-dir", str(work), "--runs-dir", str(tmp_path / "runs"),
                     cwd=tmp_path)
        assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signal.SIGTERM
    assert "interrupted at step" in err and "rerun the same command to resume" in err
    (meta,) = records(tmp_path / "runs")
    assert meta["status"] == "interrupted"
    assert os.listdir(tmp_path / "runs") == [p for p in os.listdir(tmp_path / "runs") if not p.startswith(".tmp")]
