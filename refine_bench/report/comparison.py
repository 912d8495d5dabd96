"""One run beside its base model: task x length scores with the difference, and the run's NIAH heatmap
(what `refine-bench run --compare-base` prints at the end)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from refine_bench.report.loader import load_run
from refine_bench.report.plots import niah_heatmap, safe_name


def compare_scores(base_dir: Path, run_dir: Path) -> list[dict[str, Any]]:
    """Rows {task, length, metric, base, run, diff} (values in %) for every score both records hold."""
    def table(path: Path) -> dict[tuple[str, Any, str], float]:
        return {(r["task"], r.get("length"), r["metric"]): float(r["value"]) for r in load_run(path).scores}

    base, run = table(Path(base_dir)), table(Path(run_dir))
    rows = []
    for key in sorted(run, key=lambda k: (k[0], k[1] or 0, k[2])):
        if key in base:
            task, length, metric = key
            rows.append({"task": task, "length": length, "metric": metric, "base": 100 * base[key],
                         "run": 100 * run[key], "diff": 100 * (run[key] - base[key])})
    return rows


def run_heatmap(run_dir: Path, out_dir: Path) -> list[Path]:
    """The run's NIAH recall heatmap (length x needle depth) under `out_dir`; [] without depth rows."""
    run = load_run(Path(run_dir))
    title = f"NIAH recall (%): {run.meta.get('model')} {run.meta.get('arm')}"
    return niah_heatmap(run.niah_depths(), title, Path(out_dir) / f"niah_heatmap_{safe_name(run.run_id)}")
