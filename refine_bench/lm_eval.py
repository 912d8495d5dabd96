"""Run the stock lm-eval CLI with the `refine-bench` model registered and our task folder included.

    python -m refine_bench.lm_eval run --model refine-bench --model_args pretrained=deltanet-tiny \
        --tasks niah_single_1 --metadata '{"max_seq_lengths": [4096]}' --limit 3

Without --include_path, the checkout's tasks/ folder is added for the run, validate and ls commands.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Register the model, add the task folder, and hand over to lm-eval's own CLI."""
    from lm_eval.__main__ import cli_evaluate

    import refine_bench.eval.lm  # noqa: F401 - registers the `refine-bench` model with lm-eval
    from refine_bench.eval.quiet import quiet_lm_eval
    from refine_bench.eval.task_catalog import tasks_dir

    args = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in args and (not args or args[0] in ("run", "validate", "ls") or args[0].startswith("-")):
        args += ["--include_path", str(tasks_dir())]
    sys.argv = ["lm-eval", *args]
    quiet_lm_eval()
    cli_evaluate()


if __name__ == "__main__":
    main()
