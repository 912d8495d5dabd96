"""Paper plots with matplotlib (Agg): NIAH depth heatmaps, LongBench bars, RULER QA by length, training curves.

Every function writes PNG and PDF side by side and returns the paths written (empty when there is nothing to
plot); none of them raises on missing data.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from statistics import fmean
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from refine_bench.fileio import atomic_path  # noqa: E402
from refine_bench.protocol import LONGBENCH  # noqa: E402
from refine_bench.report.loader import Run, stages_key  # noqa: E402
from refine_bench.report.paper import model_label  # noqa: E402
from refine_bench.report.tables import Table  # noqa: E402

TRAIN_KEYS = ("loss", "reward_mean", "reward_std", "frac_reward_zero_std")
DEPTH_BINS = 10


def safe_name(text: str) -> str:
    """`text` as a file-name part: runs of other characters become one underscore."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def save_figure(fig: Any, stem: Path) -> list[Path]:
    """Save `fig` as stem.png and stem.pdf atomically and close it; the same figure gives the same bytes (no
    creation date in the PDF), so rebuilt plots of unchanged records leave a committed copy unchanged."""
    fig.tight_layout()
    paths = []
    stem.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        path = stem.parent / f"{stem.name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight",
                        metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def _newest_per_key(runs: list[Run], has_data: Any) -> dict[str, Run]:
    out: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: (r.created, r.run_id)):
        if has_data(run):
            out[f"{model_label(run.meta['model'])}__{stages_key(run.stages)}"] = run
    return out


def niah_depth_grid(rows: list[dict[str, Any]]) -> tuple[list[int], list[float], list[list[float | None]]]:
    """Mean score x 100 per (length, depth bin); depth bins of width 1/DEPTH_BINS, labelled by their centre."""
    acc: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r in rows:
        try:
            length, depth, score = int(r["length"]), float(r["depth"]), float(r["score"])
        except (KeyError, TypeError, ValueError):
            continue
        if not (0.0 <= depth <= 1.0) or math.isnan(score):
            continue
        acc[(length, min(int(depth * DEPTH_BINS), DEPTH_BINS - 1))].append(score)
    lengths = sorted({k[0] for k in acc})
    bins = sorted({k[1] for k in acc})
    grid = [[(100.0 * fmean(acc[(L, b)]) if (L, b) in acc else None) for L in lengths] for b in bins]
    return lengths, [(b + 0.5) / DEPTH_BINS for b in bins], grid


def niah_heatmap(rows: list[dict[str, Any]], title: str, stem: Path) -> list[Path]:
    """One heatmap (context length x needle depth, mean recall %) of NIAH depth rows; [] when none are usable."""
    lengths, depths, grid = niah_depth_grid(rows)
    if not lengths:
        return []
    # at least 4.5 x 2.5 inches, so a run with one length and two depths still has a readable title
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 + 1.1 * len(lengths)), max(2.5, 0.5 + 0.45 * len(depths))))
    data = [[float("nan") if v is None else v for v in row] for row in grid]
    im = ax.imshow(data, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v is not None:
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return save_figure(fig, stem)


def niah_heatmaps(runs: list[Run], out_dir: Path) -> list[Path]:
    """One heatmap per model and stages, from the newest run's niah_depths.jsonl."""
    paths: list[Path] = []
    for key, run in _newest_per_key(runs, lambda r: bool(r.niah_depths())).items():
        title = f"NIAH recall (%): {model_label(run.meta['model'])} {stages_key(run.stages)}"
        paths += niah_heatmap(run.niah_depths(), title, out_dir / f"niah_heatmap_{safe_name(key)}")
    return paths


def _series_by_model(table: Table, value_key: str) -> dict[str, dict[str, dict[tuple[str, str], float]]]:
    """model -> series label -> (family, length) -> value."""
    out: dict[str, dict[str, dict[tuple[str, str], float]]] = defaultdict(lambda: defaultdict(dict))
    for c in table.cells:
        if c[value_key] is not None:
            out[c["model"]]["/".join(a or "-" for a in (c["mid"], c["post"], c["ttt"]))][(c["family"], c["length"])] = \
                c[value_key]
    return out


def longbench_bars(table: Table, out_dir: Path) -> list[Path]:
    """Per model: grouped bars, one group per LongBench task, one bar per stages combo; paper and measured panels."""
    paths: list[Path] = []
    sources = {"paper": _series_by_model(table, "paper"), "measured": _series_by_model(table, "ours")}
    models = sorted(set(sources["paper"]) | set(sources["measured"]))
    labels = [t.label for t in LONGBENCH] + ["avg"]
    families = [t.task for t in LONGBENCH] + ["avg"]
    for model in models:
        panels = [(name, data[model]) for name, data in sources.items() if data.get(model)]
        fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), squeeze=False)
        for ax, (name, series) in zip(axes[:, 0], panels, strict=True):
            width = 0.8 / max(len(series), 1)
            for i, (stages, vals) in enumerate(sorted(series.items())):
                xs = [j + i * width for j in range(len(families))]
                ax.bar(xs, [vals.get((f, ""), float("nan")) for f in families], width=width, label=stages)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(families))], labels)
            ax.set_ylabel("score (%)")
            ax.set_title(f"LongBench, {model} ({name}; stages mid/post/ttt)", fontsize=9)
            ax.legend(fontsize=7, ncol=3)
        paths += save_figure(fig, out_dir / f"longbench_bars_{safe_name(model)}")
    return paths


def ruler_qa_by_length(table: Table, out_dir: Path) -> list[Path]:
    """Per model: score vs context length for SQuAD and HotpotQA, paper dashed, measured solid."""
    paths: list[Path] = []
    sources = {"paper": _series_by_model(table, "paper"), "measured": _series_by_model(table, "ours")}
    models = sorted(set(sources["paper"]) | set(sources["measured"]))
    for model in models:
        fig, axes = plt.subplots(1, len(table.spec.families), figsize=(11, 3.6), squeeze=False)
        for ax, (family, label) in zip(axes[0], table.spec.families, strict=True):
            for name, style in (("paper", "--"), ("measured", "-")):
                for stages, vals in sorted(sources[name].get(model, {}).items()):
                    pts = sorted((int(ln), v) for (f, ln), v in vals.items() if f == family and ln.isdigit())
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=f"{name} {stages}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context length (tokens)")
            ax.set_ylabel("score (%)")
            ax.set_title(f"RULER QA {label}, {model}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
        paths += save_figure(fig, out_dir / f"ruler_qa_{safe_name(model)}")
    return paths


def training_curves(runs: list[Run], out_dir: Path) -> list[Path]:
    """Per run with train_metrics.jsonl: loss, reward mean/std and frac_reward_zero_std against step."""
    paths: list[Path] = []
    for run in runs:
        rows = [r for r in run.train_metrics() if isinstance(r.get("step"), int)]
        keys = [k for k in TRAIN_KEYS if any(isinstance(r.get(k), (int, float)) for r in rows)]
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            pts = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts])
            ax.set_xlabel("step")
            ax.set_title(key, fontsize=9)
        fig.suptitle(f"{run.meta['model']} {stages_key(run.stages)} ({run.run_id})", fontsize=9)
        paths += save_figure(fig, out_dir / f"train_{safe_name(run.run_id)}")
    return paths


def gain_bars(bars: list[tuple[str, str, float, float | None]], title: str, stem: Path,
              ylabel: str = "difference (points)") -> list[Path]:
    """Grouped bars of differences: `bars` holds (series, group, value, CI half-width or None) and each group
    (e.g. a NIAH family) gets one bar per series (e.g. "REFINE − SFT"), with its CI as a whisker."""
    if not bars:
        return []
    groups = list(dict.fromkeys(g for _, g, _, _ in bars))
    series = list(dict.fromkeys(s for s, _, _, _ in bars))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(groups) * max(1, len(series)) / 2 + 1.5), 3.4))
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        points = {g: (v, hw) for s, g, v, hw in bars if s == name}
        xs = [j + (i - (len(series) - 1) / 2) * width for j, g in enumerate(groups) if g in points]
        values = [points[g][0] for g in groups if g in points]
        errors = [points[g][1] if points[g][1] is not None else 0.0 for g in groups if g in points]
        ax.bar(xs, values, width=width, yerr=errors, capsize=3, label=name)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, stem)
