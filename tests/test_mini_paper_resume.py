"""`refine-bench mini-paper` end to end at a tiny size: a rerun does only what is missing, and the plan's settings
reach the records it writes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from refine_bench.cli.mini_paper import MiniPaperPlan, run_mini_paper
from tests.report_cli import run_cli


def _records(runs: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "run.json").read_text()) for p in runs.iterdir() if not p.name.startswith(".")}


def test_rerun_trains_and_evaluates_only_what_is_missing(tmp_path: Path, capsys) -> None:
    plan = MiniPaperPlan(models=("deltanet-tiny",), seeds=(0,), arms=("base", "sft"), steps=1, batch_size=2,
                         seq_len=128, lengths=(512,), limit=2, tasks=("niah_single_1",), eval_batch_size=2)
    out = tmp_path / "mini"
    run_mini_paper(plan, out, device="cpu")
    first = _records(out / "runs")
    assert sorted((r["kind"], r["arm"]) for r in first.values()) == [("eval", "base"), ("eval", "sft"),
                                                                     ("train", "sft")]
    capsys.readouterr()

    # the same folder with REFINE added: base and SFT are found done, only REFINE is trained and evaluated
    run_mini_paper(replace(plan, arms=("base", "sft", "refine")), out, device="cpu")
    text = capsys.readouterr().out
    assert "done already: deltanet-tiny base seed 0" in text and "done already: deltanet-tiny sft seed 0" in text
    second = _records(out / "runs")
    assert first.items() <= second.items()
    added = [second[name] for name in second.keys() - first.keys()]
    assert sorted((r["kind"], r["arm"]) for r in added) == [("eval", "refine"), ("train", "refine")]
    # every evaluation ran at the plan's eval batch size, and the plan file says what the last call planned
    assert {r["config"]["batch_size"] for r in second.values() if r["kind"] == "eval"} == {2}
    assert json.loads((out / "plan.json").read_text())["arms"] == ["base", "sft", "refine"]
    assert (out / "table3.md").is_file()


def test_bad_seeds_exit_2(capsys, tmp_path: Path) -> None:
    code, text = run_cli(capsys, "mini-paper", "--seeds", "0,x", "--out", tmp_path / "mini")
    assert code == 2 and "--seeds must be comma-separated integers, got '0,x'" in text
    assert not (tmp_path / "mini").exists()


def test_new_weights_under_the_same_name_set_the_old_records_aside_and_redo_everything(tmp_path: Path, capsys):
    import hashlib

    from refine_bench.models.tokenizer import load_tiny_tokenizer
    from refine_bench.models.zoo import load_model, save_checkpoint

    model_dir = tmp_path / "my-model"
    save_checkpoint(load_model("deltanet-tiny", seed=1), load_tiny_tokenizer(), model_dir)
    plan = MiniPaperPlan(models=(str(model_dir),), seeds=(0,), arms=("base", "sft"), steps=1, batch_size=2,
                         seq_len=128, lengths=(512,), limit=2, tasks=("niah_single_1",), eval_batch_size=2)
    out = tmp_path / "mini"
    run_mini_paper(plan, out, device="cpu")
    first = _records(out / "runs")
    old_sha = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert {r["config"]["model_weights_sha256"] for r in first.values()} == {old_sha}

    # the folder's weights are replaced (another seed): nothing counts as done, and no table mixes the two
    save_checkpoint(load_model("deltanet-tiny", seed=2), load_tiny_tokenizer(), model_dir)
    new_sha = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    capsys.readouterr()
    run_mini_paper(plan, out, device="cpu")
    assert "done already" not in capsys.readouterr().out
    assert _records(out / "other-weights") == first  # set aside whole, not lost
    second = _records(out / "runs")
    assert sorted((r["kind"], r["arm"]) for r in second.values()) == [("eval", "base"), ("eval", "sft"),
                                                                      ("train", "sft")]
    assert {r["config"]["model_weights_sha256"] for r in second.values()} == {new_sha}
    trained = [r for r in second.values() if r["kind"] == "train"][0]
    assert trained["config"]["resumed_from"] is None  # a fresh training, not the old one's checkpoint
    assert trained["config"]["work_dir"].endswith(f"sft-seed0-{new_sha[:12]}")
    assert json.loads((out / "plan.json").read_text())["model_weights_sha256"] == {str(model_dir): new_sha}
