"""`refine-bench train`: one arm in one phase on a model, with the paper's presets and resume."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from refine_bench.errors import UserInputError
from refine_bench.models.zoo import MODELS
from refine_bench.train.presets import PHASES, TrainConfig, preset

# Sizes for the tiny CPU models when the user gives none: a smoke-scale run, not the paper's 128 x 16K.
TINY_DEFAULTS = {"steps": 2, "batch_size": 4, "mini_batch_size": 2, "seq_len": 256}


def is_tiny(model: str) -> bool:
    return model in MODELS and MODELS[model].seeded_init


def build_config(model: str, arm: str, phase: str, **options) -> TrainConfig:
    """The phase preset, tiny-model sizes where the model is tiny and nothing was given, then `options`."""
    if phase not in PHASES:
        raise UserInputError(f"unknown phase {phase!r}; valid phases: {', '.join(PHASES)}")
    given = {k: v for k, v in options.items() if v is not None}
    sizes = {k: v for k, v in TINY_DEFAULTS.items() if k not in given} if is_tiny(model) else {}
    if arm not in ("refine", "nested_refine") and "mini_batch_size" in sizes and not given.get("sft_steps_like_refine"):
        sizes.pop("mini_batch_size")
    return preset(phase, arm, **sizes, **given)


def train_command(
    model: str = typer.Option("deltanet-tiny", help="Zoo name, local checkpoint directory or hub id."),
    arm: str = typer.Option("refine", help="mid: sft | refine; post: sft | nested_sft | nested_refine."),
    phase: str = typer.Option("mid", help="mid (documents) or post (prompt/answer pairs); the ttt phase runs "
                              "inside `refine-bench eval --ttt-arm`."),
    data: str = typer.Option("builtin", help="mid: documents (.jsonl 'text' / .txt / .parquet, a folder, or "
                             "'builtin', a smoke-test corpus); post: .jsonl/.parquet with 'prompt' and 'answer'."),
    steps: int | None = typer.Option(None, help="Training steps (preset: 100; tiny models: 2)."),
    batch_size: int | None = typer.Option(None, help="Sequences per step (preset: 128/64/8 by phase)."),
    mini_batch_size: int | None = typer.Option(None, help="Sequences per optimiser step (REFINE preset: 32)."),
    seq_len: int | None = typer.Option(None, help="Tokens per sequence (preset: 16384; tiny models: 256)."),
    lr: float | None = typer.Option(None, help="Learning rate (preset: 1e-6)."),
    num_chunks: int | None = typer.Option(None, "--chunks", help="REFINE c: rollout positions per sequence."),
    rollout_len: int | None = typer.Option(None, "--rollout-len", help="REFINE k: tokens per rollout."),
    num_rollouts: int | None = typer.Option(None, "--rollouts", help="REFINE n: rollouts per position."),
    reward: str | None = typer.Option(None, help="cosine, binary or hybrid (preset by phase)."),
    selection: str | None = typer.Option(None, help="entropy (default), uniform, argmax or argmin."),
    sft_steps_like_refine: bool = typer.Option(False, help="Give SFT as many optimiser steps as REFINE."),
    save_every: int | None = typer.Option(None, help="Checkpoint every N steps (default: at the end only)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    work_dir: Path | None = typer.Option(None, help="Checkpoint folder (default results/checkpoints/<run>)."),
    runs_dir: Path = typer.Option(Path("results/runs"), help="Where the run record goes."),
    resume: bool = typer.Option(True, help="Continue from the latest checkpoint in the work dir."),
) -> None:
    """Train a model with one arm; writes checkpoints and a run record with per-step metrics."""
    from refine_bench.train.session import run_training

    config = build_config(model, arm, phase, steps=steps, batch_size=batch_size, mini_batch_size=mini_batch_size,
                          seq_len=seq_len, lr=lr, num_chunks=num_chunks, rollout_len=rollout_len,
                          num_rollouts=num_rollouts, reward=reward, selection=selection, seed=seed,
                          save_every=save_every, sft_steps_like_refine=sft_steps_like_refine or None)
    result = run_training(model, config, data=data, work_dir=work_dir, runs_dir=runs_dir, device=device,
                          resume=resume, command=sys.argv)
    if result.resumed_from:
        typer.echo(f"resumed from {result.resumed_from}")
    typer.echo(f"checkpoint: {result.checkpoint}")
    if result.record:
        typer.echo(f"run record: {result.record}")
