"""CLI for the results store, paper tables, the mini-paper, metric history, dashboard and regression check.

`register(app)` adds `results`, `history`, `tables`, `dashboard` and `regress` to the main app; bad input
raises UserInputError, which the main entry point turns into one line and exit code 2.
Exit codes: 0 ok, 1 a gating regression (regress), 2 bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from refine_bench.errors import UserInputError

DEFAULT_RUNS = Path("results/runs")
DEFAULT_HISTORY = Path("results/history.jsonl")

results_app = typer.Typer(help="List, inspect and clean up run records under results/runs.", no_args_is_help=True)
history_app = typer.Typer(help="The metric history used by the dashboard and the regression check.",
                          no_args_is_help=True)


def _warn(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"warning: {line}", err=True)


@results_app.command("ls")
def results_ls(runs_dir: Path = typer.Option(DEFAULT_RUNS, "--runs-dir", help="Folder of run records."),
               all_runs: bool = typer.Option(False, "--all", help="Include runs whose status is not ok.")) -> None:
    """List runs, oldest first (id, kind, model, stages mid/post/ttt, status, number of scores), then the
    unpublished ones: still running, or stale (their process died; `results clean` removes them)."""
    from refine_bench.report.loader import load_runs, stages_key
    from refine_bench.report.pending import STALE, pending_runs

    runset = load_runs(runs_dir, include_failed=all_runs)
    _warn(runset.warnings)
    pending = pending_runs(runs_dir)
    if not runset.runs and not pending:
        typer.echo(f"no runs under {runs_dir}")
        return
    for run in runset.runs:
        typer.echo(f"{run.run_id}  {run.meta.get('kind', '?'):5s}  {run.meta['model']:20s}  "
                   f"{stages_key(run.stages):24s}  {run.meta.get('status')}  {len(run.scores)} scores")
    for p in pending:
        model, kind = p.meta.get("model", "?"), p.meta.get("kind", "?")
        note = "its writer is gone" if p.state == STALE else "being written"
        typer.echo(f"{p.run_id}  {kind:5s}  {model:20s}  {p.state} ({note}: {p.writer})  {p.path}")
    stale = sum(p.state == STALE for p in pending)
    if stale:
        typer.echo(f"{stale} stale record(s): `refine-bench results clean --runs-dir {runs_dir}` removes them")


@results_app.command("clean")
def results_clean(runs_dir: Path = typer.Option(DEFAULT_RUNS, "--runs-dir", help="Folder of run records."),
                  dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed.")) -> None:
    """Remove stale records: unpublished folders whose writing process died (running ones are kept)."""
    from refine_bench.report.pending import remove_stale

    removed = remove_stale(runs_dir, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for p in removed:
        typer.echo(f"{verb} {p.path} (stale: {p.writer})")
    typer.echo(f"{verb} {len(removed)} stale record(s) under {runs_dir}")


@results_app.command("show")
def results_show(run: str = typer.Argument(..., help="Run id, unique id prefix, or run folder path."),
                 runs_dir: Path = typer.Option(DEFAULT_RUNS, "--runs-dir")) -> None:
    """Summarise one run: provenance from run.json and its scores."""
    from refine_bench.report.loader import find_run, stages_key

    rec = find_run(run, runs_dir)
    meta = rec.meta
    typer.echo(f"run      {rec.run_id}  ({rec.path})")
    typer.echo(f"kind     {meta.get('kind')}   status {meta.get('status')}")
    if meta.get("error"):
        typer.echo(f"error    {meta['error']}")
    typer.echo(f"model    {meta.get('model')}   stages {stages_key(rec.stages)}   arm {meta.get('arm')} "
               f"phase {meta.get('phase')}")
    typer.echo(f"time     {meta.get('start_time')} -> {meta.get('end_time')}")
    typer.echo(f"git      {meta.get('git_sha')}")
    typer.echo(f"versions {json.dumps(meta.get('versions'))}")
    typer.echo(f"device   {json.dumps(meta.get('device'))}")
    typer.echo(f"seeds    {json.dumps(meta.get('seeds'))}")
    typer.echo(f"command  {' '.join(map(str, meta.get('command') or []))}")
    for s in rec.scores:
        length = "" if s["length"] is None else f"@{s['length']}"
        stderr = "" if s["stderr"] is None else f" ± {s['stderr']:.4f}"
        n = "" if s["n"] is None else f" (n={s['n']})"
        typer.echo(f"  {s['task']}{length}  {s['metric']} = {s['value']:.4f}{stderr}{n}")
    n_train = len(rec.train_metrics())
    if n_train:
        typer.echo(f"train_metrics.jsonl: {n_train} step rows")


def tables(runs_dir: Path | None = typer.Option(None, "--runs-dir", help="Folder of run records (default "
                                                "results/runs; with --mini-paper results/mini-paper/runs)."),
           out: Path | None = typer.Option(None, "--out", help="Output folder (default results/paper; with "
                                           "--mini-paper results/mini-paper)."),
           baselines: Path | None = typer.Option(None, "--baselines", help="Folder with paper_results.csv."),
           plots: bool = typer.Option(True, "--plots/--no-plots", help="Also draw the PNG/PDF plots."),
           mini_paper: bool = typer.Option(False, "--mini-paper",
                                           help="Instead: Table 3 over seeds (mean ± 95% CI) with paired tests of "
                                                "REFINE − SFT and SFT − base, NIAH heatmaps and gain bars.")) -> None:
    """Rebuild the paper's Tables 3, 4, 5 (Markdown, LaTeX, CSV), relative gains and plots, or the mini-paper."""
    if mini_paper:
        from refine_bench.report.build import build_mini_paper
        from refine_bench.report.mini_paper import MINI_PAPER_OUT_DIR, MINI_PAPER_RUNS_DIR

        if baselines is not None:
            raise UserInputError("--baselines does not apply to --mini-paper (it compares arms, not the paper)")
        out = out or MINI_PAPER_OUT_DIR
        mini = build_mini_paper(runs_dir or MINI_PAPER_RUNS_DIR, out, with_plots=plots)
        _warn(mini.warnings)
        n_records = sum(len(seeds) for seeds in mini.paper.records.values())
        typer.echo(f"{n_records} record(s) in {len(mini.paper.rows)} row(s); wrote {len(mini.paths)} files to {out}")
        return
    from refine_bench.report.build import DEFAULT_OUT_DIR, build_paper

    out = out or DEFAULT_OUT_DIR
    result = build_paper(runs_dir or DEFAULT_RUNS, out, baselines_dir=baselines, with_plots=plots)
    _warn(result.warnings)
    typer.echo(f"{result.n_runs} run(s) read, {len(result.warnings)} skipped; wrote {len(result.paths)} files "
               f"to {out}")


def dashboard(history: Path = typer.Option(DEFAULT_HISTORY, "--history", help="History JSONL."),
              out: Path = typer.Option(Path("results/dashboard/index.html"), "--out"),
              tolerance: float = typer.Option(0.05, "--tolerance", help="Relative change flagged as regression.")
              ) -> None:
    """Render the history as one self-contained HTML page (one chart per metric, regressions flagged)."""
    from refine_bench.report.dashboard import write_dashboard
    from refine_bench.report.history import read_history

    path = write_dashboard(read_history(history), out, tolerance=tolerance)
    typer.echo(f"wrote {path}")


def regress(baseline: str = typer.Option(..., "--baseline",
                                         help="'last' (previous commit in the history), a commit SHA prefix in "
                                              "the history, or a path to another history file."),
            history: Path = typer.Option(DEFAULT_HISTORY, "--history", help="History holding the current values."),
            tolerance: float = typer.Option(0.05, "--tolerance", help="Relative tolerance (absolute at 0)."),
            gate_speed: bool = typer.Option(False, "--gate-speed",
                                            help="Let non-deterministic (timing) metrics fail the check too.")
            ) -> None:
    """Exit 1 if a deterministic metric is worse than the baseline beyond tolerance (timing metrics only flagged)."""
    from refine_bench.report.regress import format_report, run_regress

    comparisons, label = run_regress(history, baseline, tolerance=tolerance, gate_speed=gate_speed)
    typer.echo(format_report(comparisons, label, tolerance), nl=False)
    if any(c.fails for c in comparisons):
        raise typer.Exit(1)


@history_app.command("append")
def history_append(source: Path = typer.Option(..., "--from", help="A run folder or a benchmark output file "
                                                                   "whose last line is a JSON object."),
                   history: Path = typer.Option(DEFAULT_HISTORY, "--history"),
                   commit: str | None = typer.Option(None, "--commit", help="Default: git rev-parse HEAD."),
                   benchmark: str | None = typer.Option(None, "--benchmark",
                                                        help="Benchmark name for a benchmark JSON "
                                                             "(default bench/<file stem>)."),
                   machine: str | None = typer.Option(None, "--machine", help="Default: OS-arch-CPUs.")) -> None:
    """Append a run's scores or a benchmark's numbers to the history."""
    from refine_bench.report.history import append_rows
    from refine_bench.report.history_sources import resolve_commit, rows_from_source

    rows, warnings = rows_from_source(source, commit=resolve_commit(commit), benchmark=benchmark, machine=machine)
    _warn(warnings)
    n = append_rows(history, rows)
    typer.echo(f"appended {n} row(s) to {history}")


@history_app.command("export")
def history_export(fmt: str = typer.Option("github-action-benchmark", "--format"),
                   out: Path = typer.Option(..., "--out", help="Writes OUT-bigger.json and OUT-smaller.json."),
                   history: Path = typer.Option(DEFAULT_HISTORY, "--history"),
                   commit: str | None = typer.Option(None, "--commit", help="Default: newest commit in history.")
                   ) -> None:
    """Export one commit's metrics as customBiggerIsBetter / customSmallerIsBetter JSON lists."""
    from refine_bench.report.history import read_history
    from refine_bench.report.history_export import FORMATS, export_github_action_benchmark

    if fmt not in FORMATS:
        raise UserInputError(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}")
    bigger, smaller = export_github_action_benchmark(read_history(history), out, commit=commit)
    typer.echo(f"wrote {bigger} (customBiggerIsBetter) and {smaller} (customSmallerIsBetter)")


def register(parent: typer.Typer) -> None:
    """Add `results`, `history`, `tables`, `dashboard` and `regress` to `parent`."""
    parent.add_typer(results_app, name="results")
    parent.add_typer(history_app, name="history")
    parent.command("tables")(tables)
    parent.command("dashboard")(dashboard)
    parent.command("regress")(regress)
