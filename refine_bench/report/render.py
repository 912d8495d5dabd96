"""Render computed tables as Markdown, LaTeX and CSV (no third-party table formatter needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from refine_bench.fileio import atomic_write_text
from refine_bench.protocol import ARM_LABELS, STAGES
from refine_bench.report.tables import Table, arm_or_none

MISSING = "—"
NOT_RUN = "–"  # a stage the row's model did not go through
CELL_LEGEND = ("Each cell: measured / paper (measured − paper, in points). " + MISSING +
               " = no run (measured) or no published number (paper). [k runs] = k runs measured this cell; "
               "the newest is shown.")


def _num(x: float | None) -> str:
    return MISSING if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def stage_label(arm: object) -> str:
    """How a table prints a stage's arm: the paper's label, or "–" for a stage not run."""
    arm = arm_or_none(arm)
    return NOT_RUN if arm is None else ARM_LABELS.get(arm, arm)


def length_label(length: str) -> str:
    """'4096' -> '4K' (whole multiples of 1024), other lengths as they are; '' and 'avg' unchanged."""
    if length in ("", "avg"):
        return length
    n = int(length)
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def cell_parts(cell: dict[str, Any]) -> tuple[str, str, str, str, list[int]]:
    """(measured, paper, delta, runs suffix, footnote numbers) as text."""
    delta = "" if cell["delta"] is None else f"{cell['delta']:+.1f}"
    runs = f"[{cell['n_runs']} runs]" if cell["n_runs"] and cell["n_runs"] > 1 else ""
    return _num(cell["ours"]), _num(cell["paper"]), delta, runs, list(cell["notes"])


def _cell_md(cell: dict[str, Any]) -> str:
    ours, paper, delta, runs, notes = cell_parts(cell)
    text = ours + (f" {runs}" if runs else "") + "".join(f"<sup>{n}</sup>" for n in notes)
    text += f" / {paper}"
    if delta:
        text += f" ({delta})"
    return text


def latex_escape(text: str) -> str:
    """`text` with LaTeX's special characters escaped (and "—", "–", "−" as TeX dashes)."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            MISSING: "---", "–": "--", "−": "-"}
    return "".join(repl.get(ch, ch) for ch in text)


def _cell_tex(cell: dict[str, Any]) -> str:
    ours, paper, delta, runs, notes = cell_parts(cell)
    text = latex_escape(ours)
    if runs:
        text += r"\,{\tiny " + latex_escape(runs) + "}"
    if notes:
        text += r"\textsuperscript{" + ",".join(str(n) for n in notes) + "}"
    text += " / " + latex_escape(paper)
    if delta:
        text += " (" + delta + ")"
    return text


def _row_labels(row: tuple) -> list[str]:
    return [row[0]] + [stage_label(a) for a in row[1:]]


def _ordered_cells(table: Table) -> list[tuple[tuple, list[dict[str, Any]]]]:
    index = {((c["model"], c["mid"], c["post"], c["ttt"]), c["family"], c["length"]): c for c in table.cells}
    out = []
    for row in table.rows:
        out.append((row, [index.get((row, fam, ln)) for fam, _, ln in table.columns]))
    return out


def _header(table: Table) -> list[str]:
    return ["model", "mid", "post", "ttt"] + [f"{lab} {length_label(ln)}".strip() for _, lab, ln in table.columns]


def table_markdown(table: Table, warnings: list[str] | None = None) -> str:
    """One paper table as a Markdown section with its legend and footnotes."""
    lines = [f"## Table {table.spec.number}: {table.spec.title}", "", CELL_LEGEND, ""]
    header = _header(table)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row, cells in _ordered_cells(table):
        texts = _row_labels(row) + [_cell_md(c) if c else MISSING for c in cells]
        lines.append("| " + " | ".join(t.replace("|", "\\|") for t in texts) + " |")
    if table.footnotes:
        lines += ["", "Notes:", ""] + [f"{i}. {t}" for i, t in enumerate(table.footnotes, start=1)]
    if warnings:
        lines += ["", "Skipped run folders (not in this table):", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def table_latex(table: Table) -> str:
    """One paper table as a LaTeX tabular (booktabs)."""
    header = _header(table)
    spec = "llll" + "c" * (len(header) - 4)
    lines = [f"% Table {table.spec.number}: {table.spec.title}. {CELL_LEGEND}",
             r"\begin{tabular}{" + spec + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    for row, cells in _ordered_cells(table):
        texts = [latex_escape(t) for t in _row_labels(row)] + [_cell_tex(c) if c else "---" for c in cells]
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for i, note in enumerate(table.footnotes, start=1):
        lines.append(f"% {i}. {note}")
    return "\n".join(lines) + "\n"


def table_csv(table: Table) -> str:
    frame = table.frame().copy()
    frame["notes"] = frame["notes"].map(lambda ns: " ".join(table.footnotes[n - 1] for n in ns))
    return frame.to_csv(index=False, lineterminator="\n")


def _pct(value: float | None) -> str:
    return MISSING if value is None or pd.isna(value) else f"{value:+.1f}"


def gains_markdown(gains: pd.DataFrame) -> str:
    """Relative-gain summary: percent gain of each arm over the same stages without it."""
    lines = ["## Relative gains over base (%)", "",
             "Gain of each trained arm over the row with the same earlier stages and this stage not run, on the "
             "average columns: 100 × (arm − base) / base. Cells: measured / paper.", ""]
    header = ["table", "model", "mid", "post", "ttt", "column", "gain (measured / paper)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for rec in gains.to_dict("records"):
        ours, paper = _pct(rec["ours_gain_pct"]), _pct(rec["paper_gain_pct"])
        stages = [stage_label(rec[s]) for s in STAGES]
        cells = [rec["table"], rec["model"], *stages, rec["column"], f"{ours} / {paper}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gains_latex(gains: pd.DataFrame) -> str:
    lines = [r"\begin{tabular}{lllllll}", r"\toprule",
             r"table & model & mid & post & ttt & column & gain \% (measured / paper) \\", r"\midrule"]
    for rec in gains.to_dict("records"):
        vals = [_pct(rec[key]).replace(MISSING, "---") for key in ("ours_gain_pct", "paper_gain_pct")]
        stages = [latex_escape(stage_label(rec[s])) for s in STAGES]
        lines.append(" & ".join([rec["table"], latex_escape(rec["model"]), *stages, latex_escape(rec["column"]),
                                 f"{vals[0]} / {vals[1]}"]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def ablations_markdown(ablations: pd.DataFrame) -> str:
    lines = ["## Ablations (paper only: LongBench avg after REFINE mid-training)", "",
             "| ablation | setting | LaCT-760M | DeltaNet-1.3B |", "|---|---|---|---|"]
    for (abl, setting), grp in ablations.groupby(["ablation", "setting"], sort=False):
        vals = {m: f"{v:.1f}" for m, v in zip(grp["model"], grp["value"], strict=True)}
        lact, delta = vals.get("LaCT-760M", MISSING), vals.get("DeltaNet-1.3B", MISSING)
        lines.append(f"| {abl} | {setting} | {lact} | {delta} |")
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: Path, files: dict[str, str]) -> list[Path]:
    """Write name -> text into `out_dir` atomically; returns the paths."""
    paths = []
    for name, text in files.items():
        path = Path(out_dir) / name
        atomic_write_text(path, text)
        paths.append(path)
    return paths
