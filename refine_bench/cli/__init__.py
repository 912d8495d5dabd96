"""The `refine-bench` command line (typer). Bad input exits with code 2 and a one-line message."""

from __future__ import annotations

import sys

import typer

from refine_bench.cli import bench, data, mini_paper, models, report, run, train
from refine_bench.cli import eval as eval_cli
from refine_bench.distributed import shutdown_distributed
from refine_bench.errors import RefineBenchError, UserInputError
from refine_bench.interrupts import Interrupted

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
app.command("mini-paper", help="The paper's mid-training comparison in miniature on the small models.")(
    mini_paper.mini_paper_command)
app.command("tasks", help="List the evaluation tasks and groups.")(eval_cli.tasks_command)
app.add_typer(bench.app, name="bench", help="Benchmarks printing a table and one JSON object on the last line.")
app.add_typer(data.app, name="data", help="Prepare training data (e.g. the paper's >= 16K-token documents).")
report.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input exits with code 2, an interrupted run with 128 + the signal number,
    another refine-bench failure (e.g. non-finite training) with 1; each with a one-line message."""
    finished = False
    try:
        app(args=argv, prog_name="refine-bench")
        finished = True
    except SystemExit as exc:  # typer ends every command this way
        finished = exc.code in (0, None)
        raise
    except UserInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except RefineBenchError as exc:  # an interrupted run carries 128 + its signal as exit_code
        code = getattr(exc, "exit_code", 1)
        typer.echo(f"error: {exc}" if code == 1 else str(exc), err=True)
        sys.exit(code)
    except (KeyboardInterrupt, Interrupted) as exc:  # stopped outside training (e.g. an evaluation)
        typer.echo(f"interrupted: {exc}" if str(exc) else "interrupted", err=True)
        sys.exit(getattr(exc, "exit_code", 130))
    finally:
        shutdown_distributed(barrier=finished)


if __name__ == "__main__":
    main()
