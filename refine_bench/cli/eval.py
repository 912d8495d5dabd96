"""`refine-bench eval` and `refine-bench tasks` as typer-ready functions (wire with app.command(...)(fn))."""

from __future__ import annotations

from pathlib import Path

import typer


def _ints(text: str | None) -> list[int] | None:
    from refine_bench.errors import UserInputError

    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise UserInputError(f"--lengths must be comma-separated integers, got {text!r}") from exc


def eval_command(
    model: str = typer.Option(..., "--model", help="Zoo name, checkpoint folder or hub id."),
    checkpoint: str | None = typer.Option(None, help="Folder of trained weights for --model."),
    tasks: str = typer.Option("niah,ruler_qa,longbench", help="Comma-separated tasks or groups; 'sanity' = "
                              "lm-eval's short-context suite; 'refine_paper' = all three paper groups."),
    lengths: str | None = typer.Option(None, help="NIAH / RULER QA lengths, e.g. 4096,8192,16384."),
    limit: int | None = typer.Option(None, help="Samples per task and per length (for quick checks)."),
    output: Path = typer.Option(Path("results/runs"), help="Folder that receives the run record."),
    batch_size: int = typer.Option(1, help="Requests per forward/generate call."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:N (default: cuda when available)."),
    dtype: str | None = typer.Option(None, help="float32 / bfloat16 / float16 (default: the checkpoint's)."),
    seed: int = typer.Option(42, help="Seed for NIAH generation and lm-eval."),
    data_dir: Path | None = typer.Option(None, help="Evaluation data folder (else $REFINE_BENCH_DATA, else "
                                         "../shared/data of the checkout)."),
    include_path: Path | None = typer.Option(None, help="lm-eval task folder (default: the checkout's tasks/)."),
    ruler_qa_file: list[str] = typer.Option([], help="RULER QA parquet/jsonl file(s) to use instead of the "
                                            "data folder's (repeatable)."),
    max_length: int | None = typer.Option(None, help="Model context budget in tokens (default: the longest "
                                          "NIAH length; at least 16384 with RULER QA / LongBench; 2048 for "
                                          "short-context tasks alone). Longer prompts are truncated in the middle."),
    mid: str | None = typer.Option(None, help="Mid-training arm that produced --checkpoint (for the record)."),
    post: str | None = typer.Option(None, help="Post-training arm that produced --checkpoint (for the record)."),
    ttt: str | None = typer.Option(None, help="Test-time-training arm (not available until the trainer lands)."),
) -> None:
    """Evaluate a model with lm-eval on the paper's tasks; writes a run record under --output."""
    from refine_bench.eval.runner import run_eval

    path = run_eval(
        model, [tasks], checkpoint=checkpoint, lengths=_ints(lengths), limit=limit, output=output,
        batch_size=batch_size, device=device, dtype=dtype, seed=seed, data_dir=data_dir, include_path=include_path,
        ruler_qa_paths=ruler_qa_file or None, max_length=max_length,
        stages={"mid": mid, "post": post, "ttt": ttt},
    )
    if path is not None:
        typer.echo(str(path))


def tasks_command(
    include_path: Path | None = typer.Option(None, help="lm-eval task folder (default: the checkout's tasks/)."),
) -> None:
    """List refine-bench's lm-eval groups and tasks (plus the 'sanity' suite)."""
    from refine_bench.eval.runner import SANITY_TASKS, own_task_names

    for group, leaves in sorted(own_task_names(include_path).items()):
        if group == "sanity":
            continue
        typer.echo(f"{group}: {', '.join(leaves)}")
    typer.echo(f"sanity: {', '.join(SANITY_TASKS)} (lm-eval built-ins; need their data online)")
