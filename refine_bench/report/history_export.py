"""Export one commit of the metric history for the CI benchmark-dashboard actions (github-action-benchmark)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.fileio import atomic_write_json
from refine_bench.report.history import commits_in_order, latest_per_metric

FORMATS = ("github-action-benchmark",)


def export_github_action_benchmark(rows: list[dict[str, Any]], out: Path, *,
                                   commit: str | None = None) -> tuple[Path, Path]:
    """Write OUT-bigger.json and OUT-smaller.json (customBiggerIsBetter / customSmallerIsBetter lists).

    Each list holds {"name", "unit", "value", "range", "extra"} for the given commit (default: the newest
    commit in the history); name = "<benchmark> :: <metric>". `out` may end in .json; it is stripped.
    """
    if not rows:
        raise UserInputError("history is empty: nothing to export")
    commits = commits_in_order(rows)
    if commit is None:
        commit = commits[-1]
    else:
        matches = [c for c in commits if c.startswith(commit)]
        if len(matches) != 1:
            raise UserInputError(f"commit {commit!r} matches {len(matches)} commits in the history")
        commit = matches[0]
    chosen = latest_per_metric([r for r in rows if r["commit"] == commit])
    lists: dict[str, list[dict[str, Any]]] = {"bigger": [], "smaller": []}
    for (bench, metric), r in sorted(chosen.items()):
        extra = f"commit={r['commit'][:12]} machine={r['machine']} deterministic={str(r['deterministic']).lower()}"
        lists[r["direction"]].append({"name": f"{bench} :: {metric}", "unit": r["unit"], "value": r["value"],
                                      "range": r.get("range", ""), "extra": extra})
    out = Path(out)
    stem = out.name[:-5] if out.name.endswith(".json") else out.name
    bigger, smaller = out.parent / f"{stem}-bigger.json", out.parent / f"{stem}-smaller.json"
    atomic_write_json(bigger, lists["bigger"])
    atomic_write_json(smaller, lists["smaller"])
    return bigger, smaller
