"""Output folders: `make paper-tables` (Tables 3/4/5, relative gains, ablations and plots into results/paper/)
and the mini-paper (Table 3 over seeds, paired tests, heatmaps and gain bars into results/mini-paper/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from refine_bench.protocol import ARM_LABELS
from refine_bench.report import plots
from refine_bench.report.loader import DEFAULT_RUNS_DIR, load_runs
from refine_bench.report.mini_paper import (
    AVG,
    MINI_PAPER_OUT_DIR,
    MINI_PAPER_RUNS_DIR,
    MiniPaper,
    compute_mini_paper,
)
from refine_bench.report.mini_paper_render import comparison_label, render_files
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


@dataclass
class MiniPaperResult:
    """What build_mini_paper wrote and what it passed over."""

    paths: list[Path]
    warnings: list[str]
    paper: MiniPaper


def build_mini_paper(runs_dir: Path = MINI_PAPER_RUNS_DIR, out_dir: Path = MINI_PAPER_OUT_DIR, *,
                     with_plots: bool = True) -> MiniPaperResult:
    """Write the mini-paper into `out_dir`: table3.{md,csv,tex}, paired_tests.{md,csv,tex}, index.md and
    plots/ (NIAH heatmap per model and arm, gain bars per model; PNG and PDF)."""
    paper = compute_mini_paper(runs_dir)
    plot_paths: list[Path] = []
    if with_plots:
        plot_dir = Path(out_dir) / "plots"
        for row in paper.rows:
            depth_rows = [r for rec in paper.records[row].values() for r in rec.depth_rows]
            title = f"NIAH recall (%): {row[0]} {ARM_LABELS.get(row[1], row[1])}, {len(paper.records[row])} seed(s)"
            stem = plot_dir / f"niah_heatmap_{plots.safe_name(row[0])}_{row[1]}"
            plot_paths += plots.niah_heatmap(depth_rows, title, stem)
        for model in sorted({r[0] for r in paper.rows}):
            bars = [(comparison_label(c), c.label, c.test.difference.mean, c.test.difference.half_width)
                    for c in paper.comparisons if c.model == model and c.length == AVG and c.test is not None]
            plot_paths += plots.gain_bars(bars, f"{model}: gain on the NIAH average (points, 95% CI)",
                                          plot_dir / f"gains_{plots.safe_name(model)}")
    paths = write_outputs(out_dir, render_files(paper, plot_paths, Path(out_dir)))
    return MiniPaperResult(paths + plot_paths, paper.warnings, paper)
