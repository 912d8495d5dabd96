"""`refine-bench bench ...`: benchmarks that print a table, then one JSON object on the last line."""

from __future__ import annotations

import platform

import typer

from refine_bench.cli.option_values import int_list
from refine_bench.cli.output import print_json_line, print_table
from refine_bench.errors import UserInputError

app = typer.Typer(no_args_is_help=True)


def _report(results: dict[str, float], as_json: bool) -> None:
    print_table([{"metric": k, "value": v} for k, v in results.items()], ["metric", "value"])
    if as_json:
        print_json_line(results)


@app.command("kernels")
def kernels_command(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes (smoke test; not the issue's targets)."),
    threads: int = typer.Option(0, help="torch threads (0 = torch's default)."),
) -> None:
    """Delta rule chunked vs recurrent, cached vs uncached decoding (and LaCT's figures once registered)."""
    import torch

    from refine_bench.bench.kernels_bench import run_kernel_bench

    if threads:
        torch.set_num_threads(threads)
    typer.echo(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads")
    _report(run_kernel_bench(quick=quick), json_out)


@app.command("eval")
def eval_bench_command(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
    model: str = typer.Option("deltanet-tiny", help="Zoo name or checkpoint directory."),
    batch_sizes: str | None = typer.Option(None, help="Instead: seconds per NIAH sample at these batch sizes, "
                                           "e.g. 1,8 (1 first: the reference), on --samples samples."),
    length: int = typer.Option(1024, help="NIAH length for --batch-sizes."),
    samples: int = typer.Option(8, help="NIAH samples for --batch-sizes."),
    threads: int = typer.Option(0, help="torch threads for --batch-sizes (0 = torch's default)."),
) -> None:
    """Peak memory and seconds per NIAH sample at 2K-16K (constant-memory inference is the point), or the
    throughput of batched answering (--batch-sizes)."""
    import torch

    from refine_bench.bench.eval_bench import run_batch_bench, run_eval_bench

    if threads:
        torch.set_num_threads(threads)
    if batch_sizes is None:
        _report(run_eval_bench(model=model), json_out)
        return
    sizes = int_list(batch_sizes, "--batch-sizes") or []
    _report(run_batch_bench(model=model, length=length, batch_sizes=sizes, samples=samples), json_out)


@app.command("train")
def train_bench_command(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on the last line."),
    quick: bool = typer.Option(False, "--quick", help="1,024 tokens and one repeat (smoke test; not the targets)."),
    memory: bool = typer.Option(False, "--memory", help="Also the REFINE step peak of both paper models at 16K "
                                "tokens, extrapolated from reduced depth and length (slow on a CPU: minutes)."),
    real: bool = typer.Option(False, "--real", help="CUDA: measure the full paper models' REFINE step at 16K "
                              "tokens (peak memory, tokens/s) instead of extrapolating."),
    threads: int = typer.Option(0, help="torch threads (0 = torch's default)."),
) -> None:
    """REFINE vs SFT step time, branch vs recompute rollouts, rollout share, MFU; optionally memory."""
    import torch

    from refine_bench.bench.train_bench import real_step_figures, run_memory_bench, run_train_bench

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    typer.echo(f"# {name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {} if real else run_train_bench(quick=quick)
    if memory:
        results.update(run_memory_bench(device))
    if real:
        if device != "cuda":
            raise UserInputError("--real measures the full models on a GPU; this machine has none")
        for model in ("deltanet-1.3b", "lact-760m"):
            results.update(real_step_figures(model))
    _report(results, json_out)
