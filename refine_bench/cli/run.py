"""`refine-bench run`: the main job. Train the model with an arm (mid-training), then evaluate it."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from refine_bench.cli.eval import _ints
from refine_bench.cli.train import build_config
from refine_bench.errors import UserInputError

ARMS = ("base", "sft", "refine")


def run_command(
    model: str = typer.Option("deltanet-tiny", help="Zoo name, local checkpoint directory or hub id."),
    arm: str = typer.Option("refine", help=f"One of {', '.join(ARMS)} (base = evaluate without training)."),
    data: str = typer.Option("builtin", help="Training documents (file/folder, or 'builtin' smoke corpus)."),
    steps: int | None = typer.Option(None, help="Training steps (preset 100; tiny models 2)."),
    batch_size: int | None = typer.Option(None, help="Sequences per step (preset 128; tiny models 4)."),
    seq_len: int | None = typer.Option(None, help="Tokens per training sequence (preset 16384; tiny 256)."),
    lr: float | None = typer.Option(None, help="Learning rate (preset 1e-6)."),
    num_chunks: int | None = typer.Option(None, "--chunks", help="REFINE c (ablation: 2 vs 8)."),
    rollout_len: int | None = typer.Option(None, "--rollout-len", help="REFINE k (ablation: 1, 3, 5, 7)."),
    reward: str | None = typer.Option(None, help="REFINE reward: cosine (mid preset), binary or hybrid."),
    selection: str | None = typer.Option(None, help="REFINE positions: entropy, uniform, argmax or argmin."),
    tasks: str = typer.Option("niah", help="Evaluation tasks or groups (niah, ruler_qa, longbench, ...)."),
    lengths: str | None = typer.Option(None, help="Evaluation lengths, e.g. 4096,8192,16384."),
    limit: int | None = typer.Option(None, help="Evaluation samples per task and length."),
    eval_batch_size: int = typer.Option(1, help="Requests per generate call at evaluation."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    work_dir: Path | None = typer.Option(None, help="Checkpoint folder (default results/checkpoints/<run>)."),
    runs_dir: Path = typer.Option(Path("results/runs"), help="Where the run records go."),
) -> None:
    """Mid-train `model` with `arm` (unless base), then evaluate it with lm-eval; writes run records."""
    from refine_bench.eval.runner import run_eval

    if arm not in ARMS:
        raise UserInputError(f"unknown arm {arm!r}; valid arms: {', '.join(ARMS)}")
    # the paper's ablation knobs that depart from the preset label the runs, so the report keeps them apart
    knobs = (("chunks", num_chunks), ("k", rollout_len), ("reward", reward), ("selection", selection))
    variant = ",".join(f"{name}={value}" for name, value in knobs if value is not None) if arm == "refine" else ""
    checkpoint = None
    if arm != "base":
        from refine_bench.train.session import run_training

        config = build_config(model, arm, "mid", steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
                              seed=seed, num_chunks=num_chunks, rollout_len=rollout_len, reward=reward,
                              selection=selection)
        result = run_training(model, config, data=data, work_dir=work_dir, runs_dir=runs_dir, device=device,
                              command=sys.argv, variant=variant)
        checkpoint = result.checkpoint
        typer.echo(f"trained {model} with {arm}: {result.record}")
    path = run_eval(model, [tasks], checkpoint=str(checkpoint) if checkpoint else None, lengths=_ints(lengths),
                    limit=limit, output=runs_dir, batch_size=eval_batch_size, device=device, seed=seed,
                    stages={"mid": None if arm == "base" else arm}, command=sys.argv, variant=variant)
    if path is not None:
        typer.echo(f"evaluated: {path}")
        for line in (Path(path) / "scores.jsonl").read_text().splitlines():
            typer.echo(f"  {line}")
