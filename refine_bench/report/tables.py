"""Build the paper's Tables 3, 4 and 5 from run scores, beside the paper's numbers, plus relative gains.

A table is computed as a list of tidy cells (one per row x column x length) and rendered separately
(see render.py). Measured values are the stored fractions x 100. Where several runs give the same raw cell
(same model row, stages, task, length, metric), the newest run (by start time) wins and the cell records how
many runs there were. Cells with nothing measured stay None and render as "—".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

import pandas as pd

from refine_bench.protocol import (
    ARM_LABELS,
    GROUP_METRICS,
    LONGBENCH,
    NIAH_FAMILIES,
    PAPER_LENGTHS,
    RULER_QA_LABELS,
    STAGES,
)
from refine_bench.report.paper import PAPER_MODELS, model_label

RowKey = tuple[str, "str | None", "str | None", "str | None"]  # model label, mid, post, ttt


def arm_or_none(value: Any) -> str | None:
    """A stage's arm from a DataFrame cell: None for None/NaN/blank."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def in_family(family: str, task: str) -> bool:
    """Whether `task` is `family` or one of its variants (niah_single_2 is in niah_single)."""
    return task == family or task.startswith(family + "_")


def _exact_match(family: str, task: str) -> bool:
    return task == family


@dataclass(frozen=True)
class TableSpec:
    """Layout of one paper table."""

    number: str
    title: str
    group: str
    metric: str
    families: tuple[tuple[str, str], ...]  # (family key, paper label)
    by_length: bool
    match: Callable[[str, str], bool]
    variant_note: bool = False  # families average several task variants: footnote which ones


TABLES: dict[str, TableSpec] = {
    "3": TableSpec("3", "RULER NIAH after mid-training (recall, %)", "niah", GROUP_METRICS["niah"], NIAH_FAMILIES,
                   True, in_family, variant_note=True),
    "4": TableSpec("4", "RULER QA (score, %)", "ruler_qa", GROUP_METRICS["ruler_qa"], tuple(RULER_QA_LABELS.items()),
                   True, _exact_match),
    "5": TableSpec("5", "LongBench (score, %)", "longbench", GROUP_METRICS["longbench"],
                   tuple((t.task, t.label) for t in LONGBENCH), False, _exact_match),
}


@dataclass
class RawCell:
    """The newest measured value of one (row, task, length) and how many runs measured it."""

    value: float
    stderr: float | None
    run_id: str
    run_ids: set[str] = field(default_factory=set)


@dataclass
class Table:
    """A computed table: tidy cells, row order, column order and footnotes."""

    spec: TableSpec
    rows: list[RowKey]
    columns: list[tuple[str, str, str]]  # (family, label, length text: '4096' | 'avg' | '')
    cells: list[dict[str, Any]]
    footnotes: list[str]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.cells)

    def cell(self, row: RowKey, family: str, length: str) -> dict[str, Any]:
        for c in self.cells:
            if (c["model"], c["mid"], c["post"], c["ttt"]) == row and c["family"] == family and c["length"] == length:
                return c
        raise KeyError((row, family, length))


def _row_sort_key(row: RowKey) -> tuple:
    order = {arm: i for i, arm in enumerate(ARM_LABELS)}  # the paper's row order; a stage not run sorts first
    return (row[0] not in PAPER_MODELS, row[0], *(-1 if a is None else order.get(a, len(order)) for a in row[1:]))


def collect_raw_cells(scores: pd.DataFrame, spec: TableSpec) -> dict[tuple[RowKey, str, int | None], RawCell]:
    """Newest-wins raw cells of `spec`'s group and metric, keyed by (row, task, length)."""
    raw: dict[tuple[RowKey, str, int | None], RawCell] = {}
    if scores.empty:
        return raw
    sel = scores[(scores["group"] == spec.group) & (scores["metric"] == spec.metric)]
    sel = sel.sort_values(["created", "run_id"], kind="stable")
    for rec in sel.to_dict("records"):
        stages = (arm_or_none(rec["mid"]), arm_or_none(rec["post"]), arm_or_none(rec["ttt"]))
        # a run with non-preset settings (an ablation) gets its own row, never a preset run's cell
        variant = rec.get("variant") or ""
        label = model_label(rec["model"]) + (f" [{variant}]" if variant else "")
        row: RowKey = (label, *stages)
        length = None if pd.isna(rec["length"]) else int(rec["length"])
        if not spec.by_length:
            length = None
        key = (row, rec["task"], length)
        stderr = None if rec["stderr"] is None or pd.isna(rec["stderr"]) else 100.0 * float(rec["stderr"])
        prev = raw.get(key)
        ids = (prev.run_ids if prev else set()) | {rec["run_id"]}
        raw[key] = RawCell(100.0 * float(rec["value"]), stderr, rec["run_id"], ids)
    return raw


def _paper_lookup(paper: pd.DataFrame, spec: TableSpec) -> tuple[list[RowKey], dict[tuple[RowKey, str, str], float]]:
    sel = paper[paper["table"] == spec.number]
    rows: list[RowKey] = []
    values: dict[tuple[RowKey, str, str], float] = {}
    for rec in sel.to_dict("records"):
        row: RowKey = (rec["model"], arm_or_none(rec["mid"]), arm_or_none(rec["post"]), arm_or_none(rec["ttt"]))
        if row not in rows:
            rows.append(row)
        family = rec["task"]
        length = rec["length"] if spec.by_length else ""
        if family == "longbench_avg":
            family, length = "avg", ""
        values[(row, family, length)] = float(rec["value"])
    return rows, values


class Footnotes:
    """Numbered footnotes of a table: the same text gets the same number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> int:
        """The number of `text`'s footnote (added if new)."""
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text) + 1


def _stage_text(row: RowKey) -> str:
    return "/".join(a or "-" for a in row[1:])


def build_table(spec: TableSpec, scores: pd.DataFrame, paper: pd.DataFrame) -> Table:
    """Compute one paper table: paper rows first (paper order), then rows only found in runs."""
    raw = collect_raw_cells(scores, spec)
    paper_rows, paper_vals = _paper_lookup(paper, spec)
    measured_rows = sorted({k[0] for k in raw} - set(paper_rows), key=_row_sort_key)
    rows = paper_rows + measured_rows
    notes = Footnotes()
    if spec.by_length:
        lengths = sorted(set(PAPER_LENGTHS) | {k[2] for k in raw if k[2] is not None})
        columns = [(fam, lab, str(L)) for fam, lab in spec.families for L in lengths]
        columns += [(fam, lab, "avg") for fam, lab in spec.families]
        columns.sort(key=lambda c: [f for f, _ in spec.families].index(c[0]))
    else:
        lengths = []
        columns = [(fam, lab, "") for fam, lab in spec.families] + [("avg", "avg", "")]

    cells: list[dict[str, Any]] = []

    def emit(row: RowKey, family: str, label: str, length: str, ours: float | None, n_runs: int,
             run_ids: list[str], tasks: list[str], note: list[int]) -> None:
        paper_v = paper_vals.get((row, family, length))
        cells.append({
            "table": spec.number, "model": row[0], "mid": row[1], "post": row[2], "ttt": row[3],
            "family": family, "column": label, "length": length, "ours": ours, "paper": paper_v,
            "delta": None if ours is None or paper_v is None else ours - paper_v,
            "n_runs": n_runs, "run_ids": ";".join(sorted(run_ids)), "tasks": ";".join(tasks), "notes": note,
        })

    for row in rows:
        row_raw = {k: v for k, v in raw.items() if k[0] == row}
        family_values: list[float] = []
        family_runs: set[str] = set()
        family_n = 0
        for family, label in spec.families:
            per_len: dict[int | None, float] = {}
            runs_f: set[str] = set()
            n_f = 0
            for L in (lengths if spec.by_length else [None]):
                members = sorted((task, cell) for (_, task, ln), cell in row_raw.items()
                                 if ln == L and spec.match(family, task))
                if not members:
                    if spec.by_length:
                        emit(row, family, label, str(L), None, 0, [], [], [])
                    continue
                ours = fmean(c.value for _, c in members)
                n_runs = max(len(c.run_ids) for _, c in members)
                ids = sorted({c.run_id for _, c in members})
                tasks = [t for t, _ in members]
                note = []
                if spec.variant_note and tasks != [family]:
                    note.append(notes.mark(f"{label} for {row[0]} {_stage_text(row)}: mean of the variants present, "
                                           f"{', '.join(tasks)}."))
                per_len[L] = ours
                runs_f.update(ids)
                n_f = max(n_f, n_runs)
                if spec.by_length:
                    emit(row, family, label, str(L), ours, n_runs, ids, tasks, note)
                else:
                    emit(row, family, label, "", ours, n_runs, ids, tasks, note)
            if spec.by_length:
                avg = fmean(per_len.values()) if per_len else None
                note = []
                if per_len and set(per_len) != set(PAPER_LENGTHS):
                    have = ", ".join(str(x) for x in sorted(per_len))
                    note.append(notes.mark(f"{label} avg for {row[0]} {_stage_text(row)}: over lengths {have} "
                                           f"only (the paper averages {', '.join(map(str, PAPER_LENGTHS))})."))
                emit(row, family, label, "avg", avg, n_f, sorted(runs_f), [], note)
            elif per_len:
                family_values.append(per_len[None])
                family_runs.update(runs_f)
                family_n = max(family_n, n_f)
            else:
                emit(row, family, label, "", None, 0, [], [], [])
        if not spec.by_length:
            avg = fmean(family_values) if family_values else None
            note = []
            if family_values and len(family_values) != len(spec.families):
                note.append(notes.mark(f"avg for {row[0]} {_stage_text(row)}: over the {len(family_values)} of "
                                       f"{len(spec.families)} tasks measured."))
            emit(row, "avg", "avg", "", avg, family_n, sorted(family_runs), [], note)
    return Table(spec, rows, columns, cells, notes.texts)


def build_tables(scores: pd.DataFrame, paper: pd.DataFrame) -> dict[str, Table]:
    """Tables 3, 4 and 5."""
    return {num: build_table(spec, scores, paper) for num, spec in TABLES.items()}


def _base_of(row: RowKey) -> tuple[str, RowKey] | None:
    """The stage varied in `row` (its last one run) and the row without it."""
    for i in range(len(STAGES), 0, -1):
        if row[i] is not None:
            base = list(row)
            base[i] = None
            return STAGES[i - 1], (row[0], base[1], base[2], base[3])
    return None


def _gain(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return 100.0 * (value - base) / base


def relative_gains(tables: dict[str, Table]) -> pd.DataFrame:
    """Percent gain over the matching base row (the same stages with the last one not run), per average column.

    E.g. Table 3 'LaCT-760M refine/-/-' vs 'LaCT-760M -/-/-'; Table 4 'refine/nested_refine/refine' vs
    'refine/nested_refine/-'. Computed for the paper's numbers and for the measured ones alike.
    """
    out = []
    for table in tables.values():
        avg_cells = {((c["model"], c["mid"], c["post"], c["ttt"]), c["family"]): c for c in table.cells
                     if c["length"] == "avg" or c["family"] == "avg"}
        for (row, family), cell in avg_cells.items():
            based = _base_of(row)
            if based is None:
                continue
            stage, base_row = based
            base = avg_cells.get((base_row, family))
            if base is None:
                continue
            arm = row[STAGES.index(stage) + 1]
            out.append({
                "table": table.spec.number, "model": row[0], "mid": row[1], "post": row[2], "ttt": row[3],
                "stage": stage, "arm": arm, "column": cell["column"],
                "paper_gain_pct": _gain(cell["paper"], base["paper"]),
                "ours_gain_pct": _gain(cell["ours"], base["ours"]),
            })
    return pd.DataFrame(out, columns=["table", "model", "mid", "post", "ttt", "stage", "arm", "column",
                                      "paper_gain_pct", "ours_gain_pct"])
