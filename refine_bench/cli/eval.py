"""`refine-bench eval` and `refine-bench tasks` as typer-ready functions (wire with app.command(...)(fn))."""

from __future__ import annotations

from pathlib import Path

import typer

from refine_bench.cli.option_values import int_list


def _files(values: list[str]) -> list[str]:
    """Repeatable, comma-separated file options as one list."""
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def eval_command(
    model: str = typer.Option(..., "--model", help="Zoo name, checkpoint folder or hub id."),
    checkpoint: str | None = typer.Option(None, help="Folder of trained weights for --model."),
    tasks: str | None = typer.Option(None, help="Comma-separated tasks or groups (default niah,ruler_qa,longbench "
                                     "without --longbench-file); 'sanity' = lm-eval's short-context suite; "
                                     "'refine_paper' = all three paper groups."),
    lengths: str | None = typer.Option(None, help="NIAH / RULER QA lengths, e.g. 4096,8192,16384."),
    limit: int | None = typer.Option(None, help="Samples per task and per length (for quick checks)."),
    output: Path = typer.Option(Path("results/runs"), help="Folder that receives the run record."),
    batch_size: int = typer.Option(1, help="Requests per forward/generate call."),
    device: str = typer.Option("auto", help="auto (cuda when available), cpu, cuda, cuda:N."),
    dtype: str | None = typer.Option(None, help="float32 / bfloat16 / float16 (default: the checkpoint's)."),
    seed: int = typer.Option(42, help="Seed for NIAH generation and lm-eval."),
    data_dir: Path | None = typer.Option(None, help="Evaluation data folder (else $REFINE_BENCH_DATA, else "
                                         "../shared/data of the checkout); NIAH needs none."),
    include_path: Path | None = typer.Option(None, help="lm-eval task folder (default: the checkout's tasks/)."),
    ruler_qa_file: list[str] = typer.Option([], help="RULER QA parquet/jsonl file(s) to use instead of the "
                                            "data folder's (repeatable or comma-separated)."),
    allow_foreign_ruler_file: bool = typer.Option(
        False, "--allow-foreign-ruler-file", help="Score RULER QA on another model family's data-folder file where "
        "the evaluated model's family has none for a length (its prompts are sized for another tokenizer; the "
        "run is labelled a variant)."),
    longbench_file: list[str] = typer.Option(
        [], "--longbench-file", help="LongBench-schema file(s) (PATH[,PATH], repeatable) to evaluate as task "
        "longbench_file: each row scored by the metric of its `task` column, generating its max_gen_tokens."),
    scoring: str = typer.Option("paper", help="Scorer definitions where they differ: paper (the paper's code; "
                                "default, fills paper tables) or longbench (upstream LongBench / RULER; a variant)."),
    niah_length_convention: str = typer.Option(
        "exact", help="exact: NIAH prompt + 128 answer tokens = the length, exactly; lm-eval: haystack grown in "
        "lm-eval's steps, so prompts are shorter (a variant)."),
    max_length: int | None = typer.Option(None, help="Model context budget in tokens (default: the longest "
                                          "NIAH length; at least 16384 with RULER QA / LongBench; 2048 for "
                                          "short-context tasks alone). Longer prompts are truncated in the middle."),
    mid: str | None = typer.Option(None, help="Mid-training arm that produced --checkpoint (for the record)."),
    post: str | None = typer.Option(None, help="Post-training arm that produced --checkpoint (for the record)."),
    ttt_arm: str | None = typer.Option(None, "--ttt-arm", help="Test-time training before answering: sft (NTP on "
                                       "the prompt) or refine (NTP + GRPO on rollouts in the prompt)."),
    ttt_reset: str | None = typer.Option(None, "--ttt-reset", help="accumulate (default, the paper's code): keep "
                                         "adapting along each task's test stream; per-example: restore the weights "
                                         "after each batch (a variant)."),
    ttt_lr: float | None = typer.Option(None, "--ttt-lr", help="Test-time learning rate (preset 1e-6)."),
    ttt_steps: int | None = typer.Option(None, "--ttt-steps", help="Optimiser passes over each prompt batch "
                                         "(default 1)."),
    ttt_batch_size: int | None = typer.Option(None, "--ttt-batch-size", help="Prompts per adapted batch "
                                              "(preset 8)."),
    variant: str | None = typer.Option(None, help="Label for a checkpoint trained with non-preset settings "
                                       "(e.g. 'reward=binary'); the report gives such runs their own rows."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Reuse the answers an interrupted run with "
                                "the same model and settings already computed (kept under OUTPUT/.eval-cache)."),
) -> None:
    """Evaluate a model with lm-eval on the paper's tasks; writes a run record under --output."""
    from refine_bench.eval.runner import run_eval
    from refine_bench.protocol import TASK_GROUPS

    files = _files(longbench_file)
    task_list = tasks or ("" if files else ",".join(TASK_GROUPS))
    path = run_eval(
        model, [task_list], checkpoint=checkpoint, lengths=int_list(lengths, "--lengths"), limit=limit, output=output,
        batch_size=batch_size, device=device, dtype=dtype, seed=seed, data_dir=data_dir, include_path=include_path,
        ruler_qa_files=_files(ruler_qa_file), allow_foreign_ruler_file=allow_foreign_ruler_file,
        longbench_files=files, scoring=scoring, niah_length_convention=niah_length_convention,
        max_length=max_length, stages={"mid": mid, "post": post}, variant=variant, resume=resume,
        ttt=_test_time_training(ttt_arm, ttt_reset, ttt_lr, ttt_steps, ttt_batch_size, seed),
    )
    if path is not None:  # rank 0 only
        from refine_bench.cli.output import print_score_lines

        typer.echo(str(path))
        print_score_lines(path)


def _test_time_training(arm: str | None, reset: str | None, lr: float | None, steps: int | None,
                        batch_size: int | None, seed: int):  # noqa: ANN202 - TestTimeTraining | None, imported lazily
    """The evaluation's test-time training: an adapter factory from refine_bench.train, its batch size, its
    settings, and its departures from the paper's preset (None without --ttt-arm)."""
    from refine_bench.errors import UserInputError

    if arm is None:
        if any(v is not None for v in (reset, lr, steps, batch_size)):
            raise UserInputError("--ttt-reset, --ttt-lr, --ttt-steps and --ttt-batch-size need --ttt-arm sft|refine")
        return None
    from refine_bench.eval.plan import TestTimeTraining
    from refine_bench.eval.test_time_training_lm import check_arm
    from refine_bench.train.presets import preset
    from refine_bench.train.test_time import DEFAULT_RESET, TestTimeAdapter, normalize_reset

    check_arm(arm)
    policy = normalize_reset(reset or DEFAULT_RESET)
    steps = 1 if steps is None else steps
    if steps < 1:
        raise UserInputError(f"--ttt-steps must be >= 1, got {steps}")
    config = preset("ttt", arm, lr=lr, batch_size=batch_size, seed=seed)
    paper = preset("ttt", arm, seed=seed)

    def factory(model):
        return TestTimeAdapter(model, config, reset=policy, steps=steps)

    settings = {"reset": policy, "steps": steps, "lr": config.lr, "betas": list(config.betas),
                "weight_decay": config.weight_decay, "grad_clip": config.grad_clip, "seed": config.seed,
                "mini_batch_size": config.optimizer_mini_batch}
    if arm == "refine":
        settings["refine"] = config.to_dict()["refine"]
    departures = [f"ttt_reset={policy.replace('_', '-')}" if policy != DEFAULT_RESET else "",
                  f"ttt_lr={config.lr:g}" if config.lr != paper.lr else "",
                  f"ttt_steps={steps}" if steps != 1 else "",
                  f"ttt_batch_size={config.batch_size}" if config.batch_size != paper.batch_size else ""]
    return TestTimeTraining(arm=arm, adapter=factory, batch_size=config.batch_size, settings=settings,
                            departures=",".join(d for d in departures if d))


def tasks_command(
    include_path: Path | None = typer.Option(None, help="lm-eval task folder (default: the checkout's tasks/)."),
) -> None:
    """List refine-bench's lm-eval groups and tasks (plus the 'sanity' suite)."""
    from refine_bench.eval.task_catalog import SANITY, own_task_names
    from refine_bench.protocol import SANITY_TASKS

    for group, leaves in sorted(own_task_names(include_path).items()):
        if group == SANITY:
            continue
        typer.echo(f"{group}: {', '.join(leaves)}")
    typer.echo(f"{SANITY}: {', '.join(SANITY_TASKS)} (lm-eval built-ins; need their data online)")
