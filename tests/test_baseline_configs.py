"""The baseline arm configs in baselines/arms/ say what the trainer's presets actually run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from refine_bench.train.presets import preset

ARMS_DIR = Path(__file__).resolve().parents[1] / "baselines" / "arms"
TRAINED = sorted(p for p in ARMS_DIR.glob("*.yaml") if p.stem != "base")


def test_every_stage_arm_has_a_config():
    assert {p.stem for p in TRAINED} == {"mid_sft", "mid_refine", "post_sft", "post_nested_sft",
                                         "post_nested_refine", "ttt_sft", "ttt_refine"}


@pytest.mark.parametrize("path", TRAINED, ids=lambda p: p.stem)
def test_config_matches_the_preset(path):
    doc = yaml.safe_load(path.read_text())
    cfg = preset(doc["phase"], doc["arm"])
    opt = doc["optimizer"]
    assert (cfg.batch_size, cfg.lr, tuple(cfg.betas), cfg.weight_decay, cfg.grad_clip) == \
        (doc["batch_size"], opt["lr"], tuple(opt["betas"]), opt["weight_decay"], opt["grad_clip"])
    assert doc["stages"][doc["phase"]] == doc["arm"]
    if "refine" in doc:
        r, g = doc["refine"], doc["grpo"]
        assert (cfg.refine.num_chunks, cfg.refine.rollout_len, cfg.refine.num_rollouts, cfg.refine.reward,
                cfg.refine.selection) == (r["chunks"], r["rollout_tokens"], r["rollouts_per_position"], r["reward"],
                                          r["selection"])
        assert (cfg.refine.clip_low, cfg.refine.clip_high, cfg.refine.dual_clip, cfg.optimizer_mini_batch) == \
            (g["clip_low"], g["clip_high"], g["dual_clip"], g["mini_batch"])
        assert (cfg.refine.lambda_sft, cfg.refine.lambda_rl) == (doc["objective"]["ntp_weight"],
                                                                 doc["objective"]["rl_weight"])
    if "optimizer_steps_per_step" in doc:
        assert cfg.batch_size // cfg.optimizer_mini_batch == doc["optimizer_steps_per_step"]
    if "seq_len" in doc:
        assert (cfg.seq_len, cfg.steps) == (doc["seq_len"], doc["steps"])


def test_configs_and_paper_numbers_speak_the_protocol() -> None:
    """baselines/ uses refine_bench.protocol's names: stages and arms, tasks and their printed labels, metrics."""
    import csv

    from refine_bench.protocol import (
        BASE_ARM,
        GROUP_METRICS,
        LONGBENCH,
        NIAH_FAMILIES,
        PAPER_LENGTHS,
        RULER_QA_LABELS,
        STAGE_ARMS,
        STAGES,
    )

    for path in ARMS_DIR.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        assert set(doc["stages"]) == set(STAGES), path
        assert all(arm is None or arm in STAGE_ARMS[stage] for stage, arm in doc["stages"].items()), path
        assert doc["arm"] == BASE_ARM or doc["arm"] in STAGE_ARMS[doc["phase"]], path
    labels = {**dict(NIAH_FAMILIES), **RULER_QA_LABELS, **{t.task: t.label for t in LONGBENCH},
              "longbench_avg": "avg"}
    with open(ARMS_DIR.parent / "paper_results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        assert labels[row["task"]] == row["label"], row["cell"]
        assert GROUP_METRICS[row["group"]] == row["metric"], row["cell"]
        assert all(row[s] == "" or row[s] in STAGE_ARMS[s] for s in STAGES), row["cell"]
        assert row["length"] in {"", "avg", *map(str, PAPER_LENGTHS)}, row["cell"]
    assert {r["task"] for r in rows} == set(labels)
