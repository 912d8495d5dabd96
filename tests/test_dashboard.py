"""The dashboard: one self-contained HTML page, one chart per metric, regressions flagged; checked in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from refine_bench.report.dashboard import CHART_CLASS, render_dashboard
from tests.report_cli import run_cli

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
                  "--v=0", "--dump-dom"]


def _row(commit: str, metric: str, value: float, *, direction: str = "bigger", deterministic: bool = True,
         benchmark: str = "eval/deltanet-tiny") -> dict:
    return {"commit": commit, "date": "2026-01-01", "benchmark": benchmark, "metric": metric, "value": value,
            "unit": "%", "direction": direction, "machine": "ci", "deterministic": deterministic}


def _rows() -> list[dict]:
    rows = []
    for i, (recall, loss, speed) in enumerate([(50.0, 2.0, 3.0), (52.0, 1.9, 3.1), (40.0, 1.8, 1.5)]):
        commit = f"{i}" * 40
        rows += [_row(commit, "niah_single_1@4096/recall", recall),
                 _row(commit, "train/loss@final", loss, direction="smaller"),
                 _row(commit, "speedup", speed, deterministic=False, benchmark="bench/kernels")]
    return rows


def _figures(html: str) -> dict[str, str]:
    """data-metric -> class attribute of each chart figure."""
    pattern = r'<figure id="chart-\d+" class="([^"]*)" data-benchmark="[^"]*" data-metric="([^"]*)"'
    return {m: c for c, m in re.findall(pattern, html) if CHART_CLASS in c.split()}


def test_dashboard_html_is_self_contained_and_flags_regressions() -> None:
    html = render_dashboard(_rows(), tolerance=0.05)
    figs = _figures(html)
    assert set(figs) == {"niah_single_1@4096/recall", "train/loss@final", "speedup"}
    assert "regressed" in figs["niah_single_1@4096/recall"].split()  # 52 -> 40, deterministic
    assert figs["train/loss@final"] == CHART_CLASS  # 1.9 -> 1.8 is an improvement for a loss
    assert "flagged" in figs["speedup"].split()  # timing regression: flagged, not a gating failure
    assert html.count('src="data:image/png;base64,') == 3
    first = re.search(r'data-metric="([^"]*)"', html)
    assert first is not None and first.group(1) == "niah_single_1@4096/recall"  # gating regression listed first
    assert '<a href="#chart-0">eval/deltanet-tiny :: niah_single_1@4096/recall</a>' in html
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html
    assert "default-src 'none'" in html


def test_dashboard_command_writes_the_page_and_refuses_a_missing_history(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    hist = tmp_path / "history.jsonl"
    hist.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / "dash" / "index.html"
    code, output = run_cli(capsys, "dashboard", "--history", hist, "--out", out)
    assert code == 0 and f"wrote {out}" in output
    assert set(_figures(out.read_text())) == {"niah_single_1@4096/recall", "train/loss@final", "speedup"}
    code, output = run_cli(capsys, "dashboard", "--history", tmp_path / "none.jsonl", "--out", out)
    assert code == 2 and "history file not found" in output


def _chromium_check(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # With --enable-logging, every console message of the page (errors, CSP violations, failed loads) is logged
    # as a CONSOLE line; the dashboard has no scripts, so it must produce none.
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def test_dashboard_opens_in_chromium_without_console_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    hist = tmp_path / "history.jsonl"
    hist.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / "dash" / "index.html"
    code, output = run_cli(capsys, "dashboard", "--history", hist, "--out", out)
    assert code == 0, output
    dom, console = _chromium_check(out, tmp_path)
    assert console == []
    assert len(_figures(dom)) == 3  # one chart element per tracked metric, as rendered by the browser
    assert len(re.findall(r"<img [^>]*src=\"data:image/png", dom)) == 3


def test_chromium_check_catches_console_errors(tmp_path: Path) -> None:
    """The console check above can fail: a page with a script error and a blocked fetch is caught."""
    page = tmp_path / "bad.html"
    csp = "default-src 'none'; img-src data:; script-src 'unsafe-inline'"
    page.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{csp}">'
                    '<link rel="icon" href="data:,"></head><body><img src="http://example.invalid/x.png">'
                    "<script>undefinedFunction();</script></body></html>")
    _, console = _chromium_check(page, tmp_path)
    assert any("undefinedFunction" in line for line in console)
    assert any("example.invalid" in line and "Content Security Policy" in line for line in console)
