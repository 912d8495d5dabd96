"""The mini-paper's text outputs: Table 3 and the paired tests as Markdown, CSV and LaTeX, and an index page."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from refine_bench.protocol import ARM_LABELS
from refine_bench.report.mini_paper import Cell, Comparison, MiniPaper, Row
from refine_bench.report.render import MISSING, latex_escape, length_label
from refine_bench.report.stats import CONFIDENCE, Estimate

TABLE_TITLE = "RULER NIAH after mid-training (recall, %), mean ± 95% CI over seeds"
LEGEND = (f"Each cell: the mean over seeds ± the half-width of the {CONFIDENCE:.0%} t-interval "
          "(t_{0.975, n−1} · sd / √n), recall in %. n = seeds; a cell shows (n=k) where it holds fewer seeds than "
          f"its row, and no ± when n = 1. {MISSING} = not measured.")
TESTS_LEGEND = ("Paired t-tests of the difference between two arms of one model, per NIAH family and column: n pairs "
                f"(seeds), the mean difference in points of recall with its {CONFIDENCE:.0%} t-interval, t with its "
                "degrees of freedom, and the two-sided p-value (not adjusted for the many comparisons). "
                f"{MISSING} = fewer than two pairs.")


def arm_label(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def _num(x: float | None, fmt: str = ".1f") -> str:
    return MISSING if x is None or math.isnan(x) else format(x, fmt)


def estimate_text(est: Estimate | None, row_n: int) -> str:
    """'62.3 ± 4.1', '62.3 ± 4.1 (n=2)' when fewer seeds than the row, '62.3 (n=1)', or '—'."""
    if est is None:
        return MISSING
    text = f"{est.mean:.1f}" if est.half_width is None else f"{est.mean:.1f} ± {est.half_width:.1f}"
    return text + (f" (n={est.n})" if est.n != row_n or est.half_width is None else "")


def _header(paper: MiniPaper) -> list[str]:
    return ["model", "arm", "seeds"] + [f"{lab} {length_label(ln)}" for _, lab, ln in paper.columns()]


def _row_cells(paper: MiniPaper, row: Row) -> list[Cell]:
    return [paper.cells[(row, fam, ln)] for fam, _, ln in paper.columns()]


def table_markdown(paper: MiniPaper) -> str:
    header = _header(paper)
    lines = [f"## Table 3 (mini-paper): {TABLE_TITLE}", "", LEGEND, "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in paper.rows:
        seeds = paper.seeds(row)
        texts = [row[0], arm_label(row[1]), f"{len(seeds)} ({', '.join(map(str, seeds))})"]
        for cell in _row_cells(paper, row):
            texts.append(estimate_text(cell.estimate, len(seeds)) + "".join(f"<sup>{n}</sup>" for n in cell.notes))
        lines.append("| " + " | ".join(t.replace("|", "\\|") for t in texts) + " |")
    if paper.footnotes:
        lines += ["", "Notes:", ""] + [f"{i}. {t}" for i, t in enumerate(paper.footnotes, start=1)]
    return "\n".join(lines) + "\n"


def table_latex(paper: MiniPaper) -> str:
    header = _header(paper)
    lines = [f"% Table 3 (mini-paper): {TABLE_TITLE}. {LEGEND}",
             r"\begin{tabular}{lll" + "c" * (len(header) - 3) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    for row in paper.rows:
        seeds = paper.seeds(row)
        texts = [latex_escape(row[0]), latex_escape(arm_label(row[1])), str(len(seeds))]
        for cell in _row_cells(paper, row):
            text = latex_escape(estimate_text(cell.estimate, len(seeds))).replace("±", r"$\pm$")
            if cell.notes:
                text += r"\textsuperscript{" + ",".join(map(str, cell.notes)) + "}"
            texts.append(text)
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {i}. {t}" for i, t in enumerate(paper.footnotes, start=1)]
    return "\n".join(lines) + "\n"


def table_csv(paper: MiniPaper) -> str:
    records = []
    for row in paper.rows:
        for cell in _row_cells(paper, row):
            est = cell.estimate
            seeds = sorted(cell.per_seed)
            records.append({
                "model": row[0], "arm": row[1], "family": cell.family, "column": cell.label, "length": cell.length,
                "n": est.n if est else 0, "mean": est.mean if est else None, "sd": est.sd if est else None,
                "ci_low": est.low if est else None, "ci_high": est.high if est else None,
                "half_width": est.half_width if est else None, "seeds": ";".join(map(str, seeds)),
                "per_seed": ";".join(f"{s}:{cell.per_seed[s]:.6g}" for s in seeds), "tasks": ";".join(cell.tasks),
                "run_ids": ";".join(paper.records[row][s].run_id for s in seeds),
                "notes": " ".join(paper.footnotes[n - 1] for n in cell.notes),
            })
    return pd.DataFrame.from_records(records).to_csv(index=False, lineterminator="\n")


def _test_texts(c: Comparison) -> list[str]:
    """n, mean difference, CI, t (df), p as text."""
    if c.test is None:
        return ["0", MISSING, MISSING, MISSING, MISSING]
    d = c.test.difference
    ci = MISSING if d.half_width is None else f"[{d.low:+.1f}, {d.high:+.1f}]"
    if c.test.t is None:
        t = MISSING if c.test.df is None else f"undefined ({c.test.df})"
    else:
        t = f"{'∞' if math.isinf(c.test.t) else format(c.test.t, '.2f')} ({c.test.df})".replace("-∞", "−∞")
    p = MISSING if c.test.p is None else "<0.001" if c.test.p < 0.001 else f"{c.test.p:.3f}"
    return [str(d.n), f"{d.mean:+.1f}", ci, t, p]


def comparison_label(c: Comparison) -> str:
    """'REFINE − SFT'."""
    return f"{arm_label(c.minuend)} − {arm_label(c.subtrahend)}"


def tests_markdown(paper: MiniPaper) -> str:
    header = ["model", "comparison", "family", "length", "n", "mean diff", "95% CI", "t (df)", "p", "pairing"]
    lines = ["## Paired tests between arms (points of recall)", "", TESTS_LEGEND, "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for c in paper.comparisons:
        texts = [c.model, comparison_label(c), c.label, length_label(c.length), *_test_texts(c), c.pairing]
        lines.append("| " + " | ".join(texts) + " |")
    if not paper.comparisons:
        lines.append("| " + " | ".join([MISSING] * len(header)) + " |")
    return "\n".join(lines) + "\n"


def tests_latex(paper: MiniPaper) -> str:
    lines = [f"% Paired tests between arms. {TESTS_LEGEND}", r"\begin{tabular}{llllrrlll}", r"\toprule",
             r"model & comparison & family & length & $n$ & mean diff & 95\% CI & $t$ (df) & $p$ \\", r"\midrule"]
    for c in paper.comparisons:
        texts = [c.model, comparison_label(c), c.label, length_label(c.length), *_test_texts(c)]
        lines.append(" & ".join(latex_escape(t) for t in texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def tests_csv(paper: MiniPaper) -> str:
    records = []
    for c in paper.comparisons:
        d = c.test.difference if c.test else None
        records.append({
            "model": c.model, "minuend": c.minuend, "subtrahend": c.subtrahend, "family": c.family,
            "column": c.label, "length": c.length, "n": d.n if d else 0, "mean_diff": d.mean if d else None,
            "ci_low": d.low if d else None, "ci_high": d.high if d else None,
            "t": c.test.t if c.test else None, "df": c.test.df if c.test else None, "p": c.test.p if c.test else None,
            "seeds": ";".join(map(str, c.seeds)), "pairing": c.pairing,
        })
    columns = ["model", "minuend", "subtrahend", "family", "column", "length", "n", "mean_diff", "ci_low", "ci_high",
               "t", "df", "p", "seeds", "pairing"]
    return pd.DataFrame.from_records(records, columns=columns).to_csv(index=False, lineterminator="\n")


def index_markdown(paper: MiniPaper, plot_paths: list[Path], out_dir: Path) -> str:
    n_records = sum(len(seeds) for seeds in paper.records.values())
    lines = ["# Mini-paper: base vs SFT vs REFINE mid-training, RULER NIAH", "",
             f"Records read from `{paper.runs_dir}`: {n_records} used in {len(paper.rows)} rows "
             f"(lengths {', '.join(map(str, paper.lengths))}); {len(paper.warnings)} warning(s).", "",
             table_markdown(paper), tests_markdown(paper)]
    if plot_paths:
        lines += ["## Plots", ""]
        lines += [f"- `{p.relative_to(out_dir) if p.is_relative_to(out_dir) else p}`" for p in plot_paths
                  if p.suffix == ".png"]
        lines.append("")
    lines += ["## Records used", "", "| model | arm | seed | run |", "|---|---|---|---|"]
    for row in paper.rows:
        for seed in paper.seeds(row):
            lines.append(f"| {row[0]} | {arm_label(row[1])} | {seed} | `{paper.records[row][seed].run_id}` |")
    if paper.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in paper.warnings]
    return "\n".join(lines) + "\n"


def render_files(paper: MiniPaper, plot_paths: list[Path], out_dir: Path) -> dict[str, str]:
    """File name -> text for every text output."""
    return {
        "table3.md": table_markdown(paper), "table3.csv": table_csv(paper), "table3.tex": table_latex(paper),
        "paired_tests.md": tests_markdown(paper), "paired_tests.csv": tests_csv(paper),
        "paired_tests.tex": tests_latex(paper), "index.md": index_markdown(paper, plot_paths, Path(out_dir)),
    }
