"""`refine-bench train`: one arm in one phase on a model, with the paper's presets, checkpoints and resume."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from refine_bench.cli import training_options as opt
from refine_bench.protocol import TRAIN_PHASES


def train_command(
    model: opt.Model = "deltanet-tiny",
    arm: str = typer.Option("refine", help="pretrain: sft; mid: sft | refine; post: sft | nested_sft | "
                            "nested_refine."),
    phase: str = typer.Option("mid", help=f"One of {', '.join(TRAIN_PHASES)} (the ttt phase runs inside "
                              "`refine-bench eval --ttt-arm`)."),
    data: opt.Data = "builtin",
    text_field: opt.TextField = "text",
    data_mode: opt.DataMode = None,
    steps: opt.Steps = None,
    stop_after: int | None = typer.Option(None, help="Stop after step N of the --steps schedule (the learning rate "
                                          "follows the whole schedule; rerun without it to go on to --steps)."),
    batch_size: opt.BatchSize = None,
    mini_batch_size: opt.MiniBatch = None,
    seq_len: opt.SeqLen = None,
    lr: opt.Lr = None,
    warmup_steps: int | None = typer.Option(None, help="Warm-up steps of the cosine schedule (pretraining)."),
    num_chunks: opt.Chunks = None,
    rollout_len: opt.RolloutLen = None,
    num_rollouts: opt.Rollouts = None,
    reward: opt.Reward = None,
    selection: opt.Selection = None,
    rollout_mode: opt.RolloutMode = None,
    rollout_eos: opt.RolloutEos = None,
    smooth_argmax: opt.SmoothArgmax = None,
    single_rollout_advantage: opt.SingleAdvantage = None,
    answer_eos: bool | None = typer.Option(None, "--answer-eos/--no-answer-eos", help="Post-training: end answers "
                                           "with EOS (paper's code: no)."),
    sft_steps_like_refine: bool = typer.Option(False, help="Give SFT as many optimiser steps as REFINE."),
    precision: opt.Precision = "auto",
    activation_checkpointing: opt.Checkpointing = None,
    parallel: opt.Parallel = "auto",
    save_every: opt.SaveEvery = None,
    keep_last: opt.KeepLast = None,
    save_dtype: opt.SaveDtype = "fp32",
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    work_dir: opt.WorkDir = None,
    runs_dir: opt.RunsDir = Path("results/runs"),
    resume: bool = typer.Option(True, help="Continue from the latest checkpoint in the work dir."),
    force_resume: opt.ForceResume = False,
    report_to: opt.ReportTo = "tensorboard",
) -> None:
    """Train a model with one arm; writes checkpoints and a run record with per-step metrics."""
    from refine_bench.errors import UserInputError
    from refine_bench.train.session import TrainRequest, run_training

    if phase not in TRAIN_PHASES:
        raise UserInputError(f"unknown phase {phase!r} for training; choose from {', '.join(TRAIN_PHASES)} "
                             "(test-time training runs inside `refine-bench eval --ttt-arm`)")
    config = opt.build_config(
        model, arm, phase, steps=steps, stop_after=stop_after, batch_size=batch_size, mini_batch_size=mini_batch_size,
        seq_len=seq_len, lr=lr, warmup_steps=warmup_steps, num_chunks=num_chunks, rollout_len=rollout_len,
        num_rollouts=num_rollouts, reward=reward, selection=selection, rollout_mode=rollout_mode,
        rollout_eos=rollout_eos, smooth_argmax=smooth_argmax, single_rollout_advantage=single_rollout_advantage,
        answer_eos=answer_eos, data_mode=data_mode, seed=seed, save_every=save_every, keep_last=keep_last,
        precision=precision, activation_checkpointing=activation_checkpointing, parallel=parallel,
        sft_steps_like_refine=sft_steps_like_refine or None)
    request = TrainRequest(model=model, data=data, text_field=text_field, work_dir=work_dir, runs_dir=runs_dir,
                           device=device, resume=resume, force_resume=force_resume, command=sys.argv,
                           variant=opt.variant_label(config), report_to=report_to, save_dtype=save_dtype)
    result = run_training(request, config)
    if not result.is_main:
        return
    if result.finished_before:
        typer.echo(f"already finished: {result.checkpoint} (step {config.last_step}); nothing to do")
        return
    if result.resumed_from:
        typer.echo(f"resumed from {result.resumed_from}")
    typer.echo(f"checkpoint: {result.checkpoint}")
    if result.export:
        typer.echo(f"export: {result.export}")
    typer.echo(f"run record: {result.record}")
