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
    ttt_arm: str | None = typer.Option(None, "--ttt-arm", help="Test-time training before answering: sft (NTP on "
                                       "the prompt) or refine (NTP + GRPO on rollouts in the prompt)."),
    ttt_reset: str | None = typer.Option(None, "--ttt-reset", help="per-example (default): restore the weights "
                                         "after each batch; accumulate: keep adapting along each task's test "
                                         "stream (the paper's code)."),
    ttt_lr: float | None = typer.Option(None, "--ttt-lr", help="Test-time learning rate (preset 1e-6)."),
    ttt_steps: int | None = typer.Option(None, "--ttt-steps", help="Optimiser passes over each prompt batch "
                                         "(default 1)."),
    ttt_batch_size: int | None = typer.Option(None, "--ttt-batch-size", help="Prompts per adapted batch "
                                              "(preset 8)."),
    variant: str | None = typer.Option(None, help="Label for a checkpoint trained with non-preset settings "
                                       "(e.g. 'reward=binary'); the report gives such runs their own rows."),
) -> None:
    """Evaluate a model with lm-eval on the paper's tasks; writes a run record under --output."""
    from refine_bench.eval.runner import run_eval

    ttt = _ttt_options(ttt_arm, ttt_reset, ttt_lr, ttt_steps, ttt_batch_size, seed)
    path = run_eval(
        model, [tasks], checkpoint=checkpoint, lengths=_ints(lengths), limit=limit, output=output,
        batch_size=batch_size, device=device, dtype=dtype, seed=seed, data_dir=data_dir, include_path=include_path,
        ruler_qa_paths=ruler_qa_file or None, max_length=max_length,
        stages={"mid": mid, "post": post, "ttt": ttt_arm}, variant=variant, **ttt,
    )
    if path is not None:
        typer.echo(str(path))


def _ttt_options(arm: str | None, reset: str | None, lr: float | None, steps: int | None, batch_size: int | None,
                 seed: int) -> dict:
    """run_eval's test-time-training arguments: an adapter factory from refine_bench.train, its batch size and
    settings (empty without --ttt-arm)."""
    from refine_bench.errors import UserInputError

    if arm is None:
        if any(v is not None for v in (reset, lr, steps, batch_size)):
            raise UserInputError("--ttt-reset, --ttt-lr, --ttt-steps and --ttt-batch-size need --ttt-arm sft|refine")
        return {}
    from refine_bench.eval.ttt import check_arm
    from refine_bench.train.presets import preset
    from refine_bench.train.ttt import TestTimeAdapter, normalize_reset

    check_arm(arm)
    policy = normalize_reset(reset or "per_example")
    steps = 1 if steps is None else steps
    if steps < 1:
        raise UserInputError(f"--ttt-steps must be >= 1, got {steps}")
    config = preset("ttt", arm, lr=lr, batch_size=batch_size, seed=seed)

    def factory(model):
        return TestTimeAdapter(model, config, reset=policy, steps=steps)

    settings = {"reset": policy, "steps": steps, "lr": config.lr, "betas": list(config.betas),
                "weight_decay": config.weight_decay, "grad_clip": config.grad_clip, "seed": config.seed,
                "mini_batch_size": config.optimizer_mini_batch}
    if arm == "refine":
        settings["refine"] = config.to_dict()["refine"]
    return {"ttt_adapter": factory, "ttt_batch_size": config.batch_size, "ttt_settings": settings}


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
