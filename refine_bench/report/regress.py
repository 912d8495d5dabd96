"""Regression check: latest value per (benchmark, metric) against a baseline, direction-aware.

Only deterministic metrics (CPU, fixed seed) gate by default; timing metrics are reported and flagged but never
fail the check unless gate_speed is set, so a noisy shared CI machine cannot make it flake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.report.history import commits_in_order, latest_per_metric, read_history

_EPS = 1e-12


@dataclass
class Comparison:
    """One metric's verdict."""

    benchmark: str
    metric: str
    unit: str
    direction: str
    deterministic: bool
    current: float | None
    baseline: float | None
    status: str  # ok | regressed | improved | new | missing
    gating: bool

    @property
    def change_pct(self) -> float | None:
        if self.current is None or self.baseline is None or self.baseline == 0:
            return None
        return 100.0 * (self.current - self.baseline) / abs(self.baseline)

    @property
    def fails(self) -> bool:
        return self.status == "regressed" and self.gating


@dataclass
class Baseline:
    label: str
    rows: list[dict[str, Any]]


def resolve_baseline(ref: str, rows: list[dict[str, Any]]) -> Baseline | None:
    """The baseline rows for REF: 'last' (the commit before the newest in `rows`; None if there is none),
    a path to another history file, or a commit-SHA prefix present in `rows`."""
    if ref == "last":
        if not rows:
            return None
        newest = rows[-1]["commit"]
        previous = next((r["commit"] for r in reversed(rows) if r["commit"] != newest), None)
        if previous is None:
            return None
        return Baseline(f"commit {previous[:12]} (previous in history)", [r for r in rows if r["commit"] == previous])
    as_path = Path(ref)
    if as_path.is_file():
        return Baseline(f"history file {as_path}", read_history(as_path))
    matches = [c for c in commits_in_order(rows) if c.startswith(ref)]
    if not matches:
        raise UserInputError(f"unknown baseline {ref!r}: not 'last', not a file, and no commit in the history "
                             "starts with it")
    if len(matches) > 1:
        raise UserInputError(f"baseline {ref!r} is ambiguous: matches commits {', '.join(m[:12] for m in matches)}")
    return Baseline(f"commit {matches[0][:12]}", [r for r in rows if r["commit"] == matches[0]])


def compare(current_rows: list[dict[str, Any]], baseline_rows: list[dict[str, Any]], *, tolerance: float,
            gate_speed: bool = False) -> list[Comparison]:
    """Direction-aware comparison with relative tolerance (absolute when the baseline is 0)."""
    if tolerance < 0:
        raise UserInputError(f"tolerance must be >= 0, got {tolerance}")
    current = latest_per_metric(current_rows)
    baseline = latest_per_metric(baseline_rows)
    out: list[Comparison] = []
    for key, cur in sorted(current.items()):
        base = baseline.get(key)
        deterministic = bool(cur["deterministic"]) and (base is None or bool(base["deterministic"]))
        gating = deterministic or gate_speed
        if base is None:
            out.append(Comparison(*key, cur["unit"], cur["direction"], deterministic, cur["value"], None, "new",
                                  gating))
            continue
        worse = cur["value"] - base["value"] if cur["direction"] == "smaller" else base["value"] - cur["value"]
        allowed = tolerance * abs(base["value"]) if base["value"] != 0 else tolerance
        status = "regressed" if worse > allowed + _EPS else "improved" if -worse > allowed + _EPS else "ok"
        out.append(Comparison(*key, cur["unit"], cur["direction"], deterministic, cur["value"], base["value"],
                              status, gating))
    for key, base in sorted(baseline.items()):
        if key not in current:
            out.append(Comparison(*key, base["unit"], base["direction"], bool(base["deterministic"]), None,
                                  base["value"], "missing", False))
    return out


def run_regress(history: Path, ref: str, *, tolerance: float, gate_speed: bool = False
                ) -> tuple[list[Comparison], str | None]:
    """Load `history`, resolve `ref` and compare; returns (comparisons, baseline label or None if no baseline)."""
    rows = read_history(history)
    baseline = resolve_baseline(ref, rows)
    if baseline is None:
        return [], None
    return compare(rows, baseline.rows, tolerance=tolerance, gate_speed=gate_speed), baseline.label


def format_report(comparisons: list[Comparison], baseline_label: str | None, tolerance: float) -> str:
    """Human-readable verdict table."""
    if baseline_label is None:
        return "regress: no earlier commit in the history to compare against; nothing checked.\n"
    lines = [f"regress: against {baseline_label}, tolerance {tolerance:.2%} (relative; absolute at a zero baseline)"]
    for c in comparisons:
        cur = "—" if c.current is None else f"{c.current:.6g}"
        base = "—" if c.baseline is None else f"{c.baseline:.6g}"
        change = "" if c.change_pct is None else f" ({c.change_pct:+.2f}%)"
        kind = "gating" if c.gating else "not gating (non-deterministic)" if not c.deterministic else "not gating"
        flag = "FAIL" if c.fails else ("FLAG" if c.status == "regressed" else "    ")
        lines.append(f"{flag} {c.status:9s} {c.benchmark} :: {c.metric} [{c.direction}, {kind}] "
                     f"{base} -> {cur} {c.unit}{change}")
    failed = sum(c.fails for c in comparisons)
    flagged = sum(c.status == "regressed" and not c.gating for c in comparisons)
    lines.append(f"regress: {failed} gating regression(s), {flagged} flagged non-gating regression(s), "
                 f"{len(comparisons)} metric(s) compared")
    return "\n".join(lines) + "\n"
