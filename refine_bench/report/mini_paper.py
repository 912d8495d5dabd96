"""The mini-paper: Table 3's layout (NIAH families per context length and their average; rows model x arm)
from evaluation records over several seeds, with 95% t-intervals, paired tests of REFINE − SFT and SFT − base,
NIAH heatmaps and gain bars.

Input: the run records under a runs folder. A record counts when it is an "ok" evaluation with NIAH recall
scores and no post-training or test-time-training stage; its row is (model, mid-training arm: base, sft or
refine) and its seed is run.json's `seeds.seed` (`refine-bench run` evaluates with the training seed). Models,
arms, lengths and seeds are whatever the records hold. When one (row, seed) was evaluated more than once, the
newest record is used and a warning says so. A run with non-preset settings (an ablation, `config.variant`)
is a row of its own. Values are recall x 100.

Per seed, a family's cell is the mean of its task variants present (S-NIAH: niah_single_1/2/3); the seed's
average over lengths is taken over the lengths its row measured for that family, and a seed lacking one of them
is left out of the average (a footnote says so). Across seeds: the mean ± t_{0.975, n-1} · sd / sqrt(n).
The paired tests pair seeds; the base model has nothing trained, so when the base row holds a single record it
is held fixed against every seed of the SFT arm (the pairing column says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.protocol import ARM_LABELS, BASE_ARM, GROUP_METRICS, NIAH_FAMILIES
from refine_bench.report.loader import Run, load_runs, run_variant
from refine_bench.report.paper import model_label
from refine_bench.report.stats import Estimate, PairedTest, mean_ci, paired_t_test
from refine_bench.report.tables import Footnotes, in_family

MINI_PAPER_OUT_DIR = Path("results/mini-paper")
MINI_PAPER_RUNS_DIR = MINI_PAPER_OUT_DIR / "runs"
AVG = "avg"
# (minuend arm, subtrahend arm): the comparisons the paired tests and gain bars show.
COMPARISONS = (("refine", "sft"), ("sft", BASE_ARM))

Row = tuple[str, str]  # (model label, mid-training arm)


@dataclass
class SeedRecord:
    """The record used for one (row, seed): recall % per (task, length) and its NIAH depth rows."""

    run_id: str
    values: dict[tuple[str, int], float]
    depth_rows: list[dict[str, Any]]


@dataclass
class Cell:
    """One table cell: per-seed values of a family at one length (or its average) and their estimate."""

    row: Row
    family: str
    label: str
    length: str  # '4096' ... or 'avg'
    per_seed: dict[int, float]
    tasks: list[str]
    notes: list[int] = field(default_factory=list)

    @property
    def estimate(self) -> Estimate | None:
        return mean_ci([self.per_seed[s] for s in sorted(self.per_seed)]) if self.per_seed else None


@dataclass
class Comparison:
    """A paired test of one arm against another for one model, family and column."""

    model: str
    minuend: str
    subtrahend: str
    family: str
    label: str
    length: str
    seeds: list[int]
    pairing: str
    test: PairedTest | None


@dataclass
class MiniPaper:
    """Everything the mini-paper shows, computed; rendering lives in report/mini_paper_render.py."""

    runs_dir: Path
    rows: list[Row]
    lengths: list[int]
    records: dict[Row, dict[int, SeedRecord]]
    cells: dict[tuple[Row, str, str], Cell]
    comparisons: list[Comparison]
    footnotes: list[str]
    warnings: list[str]

    def seeds(self, row: Row) -> list[int]:
        return sorted(self.records[row])

    def columns(self) -> list[tuple[str, str, str]]:
        return table_columns(self.lengths)


def table_columns(lengths: list[int]) -> list[tuple[str, str, str]]:
    """(family, label, length text) in the table's order: each family's lengths, then its average."""
    return [(fam, lab, ln) for fam, lab in NIAH_FAMILIES for ln in [*map(str, lengths), AVG]]


def _row_of(run: Run) -> Row:
    variant = run_variant(run.meta)
    label = model_label(run.meta["model"]) + (f" [{variant}]" if variant else "")
    return label, run.stages["mid"] or BASE_ARM


def collect_records(runs: list[Run]) -> tuple[dict[Row, dict[int, SeedRecord]], list[str]]:
    """The record used per (row, seed), newest first among duplicates, and warnings for what was passed over."""
    chosen: dict[Row, dict[int, SeedRecord]] = {}
    superseded: dict[tuple[Row, int], int] = {}
    warnings: list[str] = []
    metric = GROUP_METRICS["niah"]
    for run in sorted(runs, key=lambda r: (r.created, r.run_id)):
        scores = [s for s in run.scores if s["group"] == "niah" and s["metric"] == metric and s["length"] is not None]
        if run.meta.get("kind") != "eval" or not scores:
            continue
        if run.stages["post"] or run.stages["ttt"]:
            warnings.append(f"{run.run_id}: has post-training or test-time training; not a mid-training row")
            continue
        seed = (run.meta.get("seeds") or {}).get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            warnings.append(f"{run.run_id}: no seed in run.json (seeds.seed); cannot be paired, left out")
            continue
        row = _row_of(run)
        if seed in chosen.get(row, {}):
            superseded[(row, seed)] = superseded.get((row, seed), 1) + 1
        values = {(s["task"], int(s["length"])): 100.0 * s["value"] for s in scores}
        chosen.setdefault(row, {})[seed] = SeedRecord(run.run_id, values, run.niah_depths())
    for (row, seed), count in sorted(superseded.items()):
        warnings.append(f"{row[0]} {ARM_LABELS.get(row[1], row[1])} seed {seed}: {count} records; the newest "
                        f"({chosen[row][seed].run_id}) is used")
    return chosen, warnings


def _row_order(row: Row) -> tuple:
    arms = list(ARM_LABELS)
    return row[0], arms.index(row[1]) if row[1] in arms else len(arms), row[1]


def _cells_for(row: Row, seeds: dict[int, SeedRecord], lengths: list[int], notes: Footnotes
               ) -> dict[tuple[Row, str, str], Cell]:
    cells: dict[tuple[Row, str, str], Cell] = {}
    row_text = f"{row[0]} {ARM_LABELS.get(row[1], row[1])}"
    for family, label in NIAH_FAMILIES:
        per_length: dict[int, dict[int, float]] = {}
        for length in lengths:
            per_seed: dict[int, float] = {}
            tasks: set[str] = set()
            task_sets: set[tuple[str, ...]] = set()
            for seed, rec in seeds.items():
                members = sorted(t for (t, ln) in rec.values if ln == length and in_family(family, t))
                if members:
                    per_seed[seed] = fmean(rec.values[(t, length)] for t in members)
                    tasks.update(members)
                    task_sets.add(tuple(members))
            cell = Cell(row, family, label, str(length), per_seed, sorted(tasks))
            if len(task_sets) > 1:
                cell.notes.append(notes.mark(f"{label} {length} for {row_text}: the seeds hold different variants "
                                             f"({'; '.join(', '.join(s) for s in sorted(task_sets))})."))
            cells[(row, family, str(length))] = cell
            if per_seed:
                per_length[length] = per_seed
        measured = sorted(per_length)
        avg = Cell(row, family, label, AVG, seed_averages(per_length, measured), [])
        complete = avg.per_seed
        if measured and measured != lengths:
            avg.notes.append(notes.mark(f"{label} avg for {row_text}: over {', '.join(map(str, measured))} only "
                                        "(the lengths this row measured)."))
        left_out = [s for s in sorted(seeds) if s not in complete and any(s in v for v in per_length.values())]
        if left_out:
            avg.notes.append(notes.mark(f"{label} avg for {row_text}: seed(s) {', '.join(map(str, left_out))} "
                                        "lack a length and are left out of the average."))
        cells[(row, family, AVG)] = avg
    return cells


def seed_averages(per_length: dict[int, dict[int, float]], lengths: list[int]) -> dict[int, float]:
    """seed -> mean over `lengths` of its values, for the seeds that have every one of them."""
    if not lengths:
        return {}
    seeds = set.intersection(*(set(per_length.get(ln, {})) for ln in lengths))
    return {s: fmean(per_length[ln][s] for ln in lengths) for s in sorted(seeds)}


def _paired(minuend: dict[int, float], subtrahend: dict[int, float], subtrahend_arm: str
            ) -> tuple[list[int], str, PairedTest | None]:
    """Seeds used, how they were paired, and the test of minuend - subtrahend."""
    common = sorted(set(minuend) & set(subtrahend))
    if len(common) < 2 and subtrahend_arm == BASE_ARM and len(subtrahend) == 1:
        (base_seed, base_value), = subtrahend.items()
        seeds = sorted(minuend)
        a, b = [minuend[s] for s in seeds], [base_value] * len(seeds)
        pairing = f"base: one record (seed {base_seed}), held fixed"
    else:
        seeds, pairing = common, "paired by seed"
        a, b = [minuend[s] for s in seeds], [subtrahend[s] for s in seeds]
    return seeds, pairing, paired_t_test(a, b) if seeds else None


def _compare(paper_cells: dict[tuple[Row, str, str], Cell], model: str, minuend: str, subtrahend: str,
             family: str, length: str, lengths: list[int]) -> Comparison:
    """Test one column; the average is re-taken over the lengths both arms measured, so both sides match."""
    left, right = paper_cells[((model, minuend), family, length)], paper_cells[((model, subtrahend), family, length)]
    note = ""
    if length == AVG:
        def by_length(arm: str) -> dict[int, dict[int, float]]:
            return {ln: paper_cells[((model, arm), family, str(ln))].per_seed for ln in lengths}

        a_len, b_len = by_length(minuend), by_length(subtrahend)
        common = [ln for ln in lengths if a_len[ln] and b_len[ln]]
        a, b = seed_averages(a_len, common), seed_averages(b_len, common)
        if common != lengths:
            note = f"; avg over {', '.join(map(str, common))} only" if common else "; no length in common"
    else:
        a, b = left.per_seed, right.per_seed
    seeds, pairing, test = _paired(a, b, subtrahend)
    return Comparison(model, minuend, subtrahend, family, left.label, length, seeds, pairing + note, test)


def compute_mini_paper(runs_dir: Path = MINI_PAPER_RUNS_DIR) -> MiniPaper:
    """Read the records under `runs_dir` and compute the table cells and paired tests."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserInputError(f"no runs folder {runs_dir}")
    runset = load_runs(runs_dir)
    records, warnings = collect_records(runset.runs)
    if not records:
        raise UserInputError(f"no NIAH evaluation records under {runs_dir} (eval runs with niah recall scores)")
    rows = sorted(records, key=_row_order)
    lengths = sorted({ln for seeds in records.values() for rec in seeds.values() for (_, ln) in rec.values})
    notes = Footnotes()
    cells: dict[tuple[Row, str, str], Cell] = {}
    for row in rows:
        cells.update(_cells_for(row, records[row], lengths, notes))
    comparisons = []
    for model in sorted({r[0] for r in rows}):
        for minuend, subtrahend in COMPARISONS:
            if (model, minuend) not in records or (model, subtrahend) not in records:
                continue
            for family, _, length in table_columns(lengths):
                if cells[((model, minuend), family, length)].per_seed and \
                        cells[((model, subtrahend), family, length)].per_seed:  # else the table shows "—" already
                    comparisons.append(_compare(cells, model, minuend, subtrahend, family, length, lengths))
    return MiniPaper(runs_dir, rows, lengths, records, cells, comparisons, notes.texts,
                     runset.warnings + warnings)
