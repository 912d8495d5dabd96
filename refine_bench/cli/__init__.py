"""The `refine-bench` command line (typer). Bad input exits with code 2 and a one-line message."""

from __future__ import annotations

import sys

import typer

from refine_bench.cli import bench, models, report, run, train
from refine_bench.cli import eval as eval_cli
from refine_bench.errors import UserInputError

app = typer.Typer(
    name="refine-bench",
    help="Train fast-weight LMs with base / SFT / REFINE arms and evaluate them on NIAH, RULER QA and LongBench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("models", help="List the model zoo with parameter counts.")(models.models_command)
app.command("run", help="Run the main job on a model (train with an arm, then evaluate).")(run.run_command)
app.command("train", help="Train a model with one arm (sft or refine) in a phase; checkpoints and resume.")(
    train.train_command)
app.command("eval", help="Evaluate a model on NIAH, RULER QA, LongBench (or lm-eval tasks) through lm-eval.")(
    eval_cli.eval_command)
app.command("tasks", help="List the evaluation tasks and groups.")(eval_cli.tasks_command)
app.add_typer(bench.app, name="bench", help="Benchmarks printing a table and one JSON object on the last line.")
report.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors and UserInputError exit with code 2."""
    try:
        app(args=argv, prog_name="refine-bench")
    except UserInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
