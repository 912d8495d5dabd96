"""`refine-bench run`: the main job. Mid-train the model with an arm, then evaluate it through lm-eval."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from refine_bench.cli import training_options as opt
from refine_bench.cli.option_values import int_list
from refine_bench.cli.output import print_score_lines
from refine_bench.errors import UserInputError
from refine_bench.protocol import BASE_ARM, RUN_ARMS


# run and train list the same shared options (cli/training_options.py) on purpose: typer builds each
# command's flags from its own signature, so the lists look alike while each command keeps its own subset.
def run_command(
    model: opt.Model = "deltanet-tiny",
    arm: str = typer.Option("refine", help=f"One of {', '.join(RUN_ARMS)} (base = evaluate without training)."),
    data: opt.Data = "builtin",
    text_field: opt.TextField = "text",
    data_mode: opt.DataMode = None,
    steps: opt.Steps = None,
    batch_size: opt.BatchSize = None,
    seq_len: opt.SeqLen = None,
    lr: opt.Lr = None,
    num_chunks: opt.Chunks = None,
    rollout_len: opt.RolloutLen = None,
    reward: opt.Reward = None,
    selection: opt.Selection = None,
    rollout_mode: opt.RolloutMode = None,
    precision: opt.Precision = "auto",
    activation_checkpointing: opt.Checkpointing = None,
    save_dtype: opt.SaveDtype = "fp32",
    tasks: str = typer.Option("niah", help="Evaluation tasks or groups (niah, ruler_qa, longbench, ...)."),
    lengths: str | None = typer.Option(None, help="Evaluation lengths, e.g. 4096,8192,16384."),
    limit: int | None = typer.Option(None, help="Evaluation samples per task and length."),
    eval_batch_size: int = typer.Option(1, help="Requests per generate call at evaluation."),
    compare_base: bool = typer.Option(False, help="Also evaluate the untrained model and end with a task x "
                                      "length table of both (and the run's NIAH heatmap)."),
    plots_dir: Path = typer.Option(Path("results/plots"), help="Where --compare-base writes the heatmap."),
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    work_dir: opt.WorkDir = None,
    runs_dir: opt.RunsDir = Path("results/runs"),
    force_resume: opt.ForceResume = False,
    report_to: opt.ReportTo = "tensorboard",
) -> None:
    """Mid-train `model` with `arm` (unless base), then evaluate it with lm-eval; writes run records."""
    from refine_bench.eval.runner import run_eval

    if arm not in RUN_ARMS:
        raise UserInputError(f"unknown arm {arm!r}; valid arms: {', '.join(RUN_ARMS)}")
    checkpoint, variant, is_main = None, "", True
    if arm != BASE_ARM:
        from refine_bench.train.session import TrainRequest, run_training

        config = opt.build_config(model, arm, "mid", steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
                                  seed=seed, num_chunks=num_chunks, rollout_len=rollout_len, reward=reward,
                                  selection=selection, rollout_mode=rollout_mode, data_mode=data_mode,
                                  precision=precision, activation_checkpointing=activation_checkpointing)
        variant = opt.variant_label(config)
        request = TrainRequest(model=model, data=data, text_field=text_field, work_dir=work_dir, runs_dir=runs_dir,
                               device=device, force_resume=force_resume, command=sys.argv, variant=variant,
                               report_to=report_to, save_dtype=save_dtype)
        result = run_training(request, config)
        checkpoint, is_main = result.export or result.checkpoint, result.is_main
        if is_main:
            typer.echo(f"already trained: {result.checkpoint}" if result.finished_before
                       else f"trained {model} with {arm}: {result.record}")
    common = dict(lengths=int_list(lengths, "--lengths"), limit=limit, output=runs_dir, batch_size=eval_batch_size,
                  device=device, seed=seed, command=sys.argv)
    path = run_eval(model, [tasks], checkpoint=str(checkpoint) if checkpoint else None,
                    stages={"mid": None if arm == BASE_ARM else arm}, variant=variant, **common)
    if path is None or not is_main:
        return
    typer.echo(f"evaluated: {path}")
    print_score_lines(path)
    if compare_base and arm != BASE_ARM:
        base = run_eval(model, [tasks], stages={"mid": None}, **common)
        _print_comparison(base, path, plots_dir)


def _print_comparison(base: Path, run: Path, plots_dir: Path) -> None:
    """The task x length table of the base model beside this run, and where the run's heatmap went."""
    from refine_bench.cli.output import print_table
    from refine_bench.report.comparison import compare_scores, run_heatmap

    rows = compare_scores(base, run)
    print_table([{"task": r["task"], "length": r["length"], "base %": f"{r['base']:.1f}",
                  "this run %": f"{r['run']:.1f}", "diff": f"{r['diff']:+.1f}"} for r in rows],
                ["task", "length", "base %", "this run %", "diff"])
    for plot in run_heatmap(run, plots_dir):
        if plot.suffix == ".png":
            typer.echo(f"NIAH heatmap: {plot}")
