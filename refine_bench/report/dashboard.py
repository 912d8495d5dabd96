"""Render the metric history as one self-contained static HTML page (charts as inline base64 PNG, no scripts,
no network): one chart per (benchmark, metric) across commits, regressions against the previous commit flagged."""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from refine_bench.fileio import atomic_write_text  # noqa: E402
from refine_bench.provenance import utc_now  # noqa: E402
from refine_bench.report.history import commits_in_order  # noqa: E402
from refine_bench.report.regress import compare  # noqa: E402

CHART_CLASS = "metric-chart"
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}.summary{margin:.5em 0 1.5em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1em}
figure{margin:0;padding:.6em;background:#fff;border:2px solid #ddd;border-radius:6px}
figure.regressed{border-color:#c62828;background:#fff5f5}
figure.flagged{border-color:#ef6c00}
figcaption{font-weight:600;font-size:.9em;margin-bottom:.3em;word-break:break-all}
.badge{display:inline-block;padding:0 .4em;margin-left:.4em;border-radius:3px;color:#fff;font-size:.8em}
.badge.reg{background:#c62828}.badge.flag{background:#ef6c00}.badge.nd{background:#757575}
img{max-width:100%;height:auto}table{border-collapse:collapse;font-size:.85em}
td,th{padding:.1em .6em;text-align:left}#regressions li,#regressions a{color:#c62828}
"""


def _series(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(benchmark, metric) -> one row per commit (the last row for that commit), in commit order."""
    order = {c: i for i, c in enumerate(commits_in_order(rows))}
    per: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        per[(r["benchmark"], r["metric"])][r["commit"]] = r
    return {k: sorted(v.values(), key=lambda r: order[r["commit"]]) for k, v in sorted(per.items())}


def _point_status(points: list[dict[str, Any]], tolerance: float) -> list[str]:
    """Status of each point against the previous one: ok/regressed/improved ('new' for the first)."""
    out = ["new"]
    for prev, cur in zip(points, points[1:], strict=False):
        out.append(compare([cur], [prev], tolerance=tolerance)[0].status)
    return out


def _chart_png(points: list[dict[str, Any]], statuses: list[str], title: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 2.6))
    xs = list(range(len(points)))
    ys = [p["value"] for p in points]
    ax.plot(xs, ys, "-o", color="#1565c0", markersize=4)
    bad = [i for i, s in enumerate(statuses) if s == "regressed"]
    if bad:
        ax.plot([xs[i] for i in bad], [ys[i] for i in bad], "o", color="#c62828", markersize=9, label="regression")
        ax.legend(fontsize=7)
    ax.set_xticks(xs, [p["commit"][:7] for p in points], rotation=45, fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_dashboard(rows: list[dict[str, Any]], *, tolerance: float = 0.05, title: str = "refine-bench metrics"
                     ) -> str:
    """The dashboard HTML for history `rows`."""
    series = _series(rows)
    commits = commits_in_order(rows)
    figures, regressions = [], []
    judged = [(key, points, _point_status(points, tolerance)) for key, points in series.items()]
    # Gating regressions first, then flagged (non-deterministic) ones, then the rest; by name within each.
    judged.sort(key=lambda item: 2 if item[2][-1] != "regressed" else 0 if item[1][-1]["deterministic"] else 1)
    for idx, ((bench, metric), points, statuses) in enumerate(judged):
        latest = points[-1]
        det = bool(latest["deterministic"])
        regressed_now = statuses[-1] == "regressed"
        cls = CHART_CLASS + (" regressed" if regressed_now and det else " flagged" if regressed_now else "")
        badges = ""
        if regressed_now:
            badges += ('<span class="badge reg">REGRESSION</span>' if det else
                       '<span class="badge flag">REGRESSION (non-deterministic, not gating)</span>')
            label = f"{bench} :: {metric}" + ("" if det else " (non-deterministic, flagged only)")
            regressions.append(f'<li><a href="#chart-{idx}">{html.escape(label)}</a></li>')
        if not det:
            badges += '<span class="badge nd">timing / non-deterministic</span>'
        better = "higher is better" if latest["direction"] == "bigger" else "lower is better"
        png = _chart_png(points, statuses, f"{metric} ({latest['unit'] or 'value'}, {better})")
        prev = f"{points[-2]['value']:.6g}" if len(points) > 1 else "—"
        name = f"{bench} :: {metric}"
        figures.append(
            f'<figure id="chart-{idx}" class="{cls}" data-benchmark="{html.escape(bench)}" '
            f'data-metric="{html.escape(metric)}">'
            f"<figcaption>{html.escape(name)}{badges}</figcaption>"
            f'<img alt="{html.escape(name)} across commits" src="data:image/png;base64,{png}">'
            f"<table><tr><th>latest</th><td>{latest['value']:.6g} {html.escape(latest['unit'])}</td>"
            f"<th>previous</th><td>{prev}</td><th>commit</th><td>{html.escape(latest['commit'][:12])}</td></tr>"
            f"<tr><th>machine</th><td colspan=5>{html.escape(str(latest['machine']))}</td></tr></table></figure>")
    reg_html = ("<p>No regressions against the previous commit.</p>" if not regressions else
                "<ul>" + "".join(regressions) + "</ul>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Forbid every fetch but inline styles and data: images: the page cannot touch the network.
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>'
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="summary">{len(series)} metric(s) across {len(commits)} commit(s); generated '
        f"{utc_now():%Y-%m-%d %H:%M} UTC; regression = worse than the previous commit by more than "
        f"{tolerance:.1%} (relative).</p>"
        f'<section id="regressions"><h2>Regressions at the newest commit</h2>{reg_html}</section>'
        f'<div class="grid">{"".join(figures)}</div></body></html>\n'
    )


def write_dashboard(rows: list[dict[str, Any]], out: Path, *, tolerance: float = 0.05) -> Path:
    atomic_write_text(out, render_dashboard(rows, tolerance=tolerance))
    return Path(out)
