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
