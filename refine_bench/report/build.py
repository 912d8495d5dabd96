"""`make paper-tables`: Tables 3/4/5, relative gains, ablations and plots into results/paper/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from refine_bench.report import plots
from refine_bench.report.loader import DEFAULT_RUNS_DIR, load_runs
from refine_bench.report.paper import load_paper_ablations, load_paper_results
from refine_bench.report.render import (
    ablations_markdown,
    gains_latex,
    gains_markdown,
    table_csv,
    table_latex,
    table_markdown,
    write_outputs,
)
from refine_bench.report.tables import Table, build_tables, relative_gains

DEFAULT_OUT_DIR = Path("results/paper")


@dataclass
class BuildResult:
    paths: list[Path]
    warnings: list[str]
    tables: dict[str, Table]
    n_runs: int


def build_paper(runs_dir: Path = DEFAULT_RUNS_DIR, out_dir: Path = DEFAULT_OUT_DIR, *,
                baselines_dir: Path | None = None, with_plots: bool = True) -> BuildResult:
    """Regenerate every table (md/tex/csv) and plot (png/pdf) from the runs present (possibly none)."""
    runset = load_runs(runs_dir)
    scores = runset.frame()
    tables = build_tables(scores, load_paper_results(baselines_dir))
    gains = relative_gains(tables)
    ablations = load_paper_ablations(baselines_dir)
    files: dict[str, str] = {}
    index = ["# refine-bench: the paper's tables beside measured runs", "",
             f"Runs read from `{runs_dir}`: {len(runset.runs)} loaded, {len(runset.warnings)} skipped.", ""]
    for num, table in tables.items():
        files[f"table{num}.md"] = table_markdown(table, runset.warnings)
        files[f"table{num}.tex"] = table_latex(table)
        files[f"table{num}.csv"] = table_csv(table)
        index.append(table_markdown(table))
    files["gains.md"] = gains_markdown(gains)
    files["gains.tex"] = gains_latex(gains)
    files["gains.csv"] = gains.to_csv(index=False, lineterminator="\n")
    files["ablations.md"] = ablations_markdown(ablations)
    files["ablations.csv"] = ablations.to_csv(index=False, lineterminator="\n")
    index += [files["gains.md"], files["ablations.md"]]
    if runset.warnings:
        index += ["## Skipped run folders", ""] + [f"- {w}" for w in runset.warnings]
    files["index.md"] = "\n".join(index) + "\n"
    paths = write_outputs(out_dir, files)
    if with_plots:
        plot_dir = Path(out_dir) / "plots"
        paths += plots.longbench_bars(tables["5"], plot_dir)
        paths += plots.ruler_qa_by_length(tables["4"], plot_dir)
        paths += plots.niah_heatmaps(runset.runs, plot_dir)
        paths += plots.training_curves(runset.runs, plot_dir)
    return BuildResult(paths, runset.warnings, tables, len(runset.runs))
