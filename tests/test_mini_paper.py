"""The mini-paper: Table 3 over seeds with t-intervals, paired tests and plots, from records written through the
RunRecord API. Every number checked below is computed by hand in the comments."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from refine_bench import records
from refine_bench.records import RunRecord
from refine_bench.report.build import build_mini_paper
from refine_bench.report.mini_paper import compute_mini_paper
from tests.report_cli import run_cli

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
T2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{0.975, 2} in closed form (4.3027)
T1 = math.tan(math.pi * 0.475)  # t_{0.975, 1} (12.706)


def _p_df2(t: float) -> float:
    return 1 - abs(t) / math.sqrt(2 + t * t)  # two-sided p at 2 degrees of freedom, closed form


class Writer:
    """Writes eval records the way refine_bench.eval does, one minute apart."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.monkeypatch, self.minute = root, monkeypatch, 0

    def eval(self, model: str, arm: str, seed: int, recall: dict[tuple[str, int], float], *,
             variant: str | None = None, stages: dict | None = None) -> str:
        self.minute += 1
        self.monkeypatch.setattr(records, "utc_now", lambda: T0 + timedelta(minutes=self.minute))
        stages = stages if stages is not None else ({} if arm == "base" else {"mid": arm})
        rec = RunRecord.create(self.root, kind="eval", model=model, stages=stages, seed=seed,
                               config={"device": "cpu", "variant": variant})
        rec.write_scores([{"task": t, "group": "niah", "length": ln, "metric": "recall", "value": v, "stderr": None,
                           "n": 10} for (t, ln), v in recall.items()])
        depths = [{"task": t, "length": ln, "depth": 0.25, "score": 1 if v >= 0.5 else 0} for (t, ln), v in
                  recall.items()]
        rec.write_text("niah_depths.jsonl", "".join(json.dumps(r) + "\n" for r in depths))
        rec.finish()
        return rec.run_id


S1, S2, MQ = "niah_single_1", "niah_single_2", "niah_multiquery"


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "runs"
    w = Writer(root, monkeypatch)
    # deltanet-small, lengths 1024 and 2048 (nothing at the paper's 4096: the lengths come from the records).
    # S-NIAH per seed = mean of niah_single_1/2 at 1024 (x 100); only niah_single_1 at 2048.
    w.eval("deltanet-small", "base", 0, {(S1, 1024): 0.5, (S2, 1024): 0.5})  # base 50 at 1K, nothing at 2K
    for seed, (a, b, c) in enumerate([(0.5, 0.7, 0.4), (0.6, 0.8, 0.5), (0.7, 0.9, 0.6)]):
        w.eval("deltanet-small", "sft", seed, {(S1, 1024): a, (S2, 1024): b, (S1, 2048): c})  # 60/70/80, 40/50/60
    w.eval("deltanet-small", "refine", 2, {(S1, 1024): 0.1, (S2, 1024): 0.1, (S1, 2048): 0.1})  # superseded below
    for seed, (a, b, c) in enumerate([(0.70, 0.74, 0.48), (0.70, 0.80, 0.55), (0.90, 0.90, 0.60)]):
        w.eval("deltanet-small", "refine", seed, {(S1, 1024): a, (S2, 1024): b, (S1, 2048): c})  # 72/75/90, 48/55/60
    w.eval("deltanet-small", "refine", 0, {(S1, 1024): 0.3}, variant="reward=binary")  # an ablation: its own row
    # a second model with two seeds: MQ-NIAH at 1024 only
    w.eval("lact-small", "sft", 0, {(MQ, 1024): 0.2})
    w.eval("lact-small", "sft", 1, {(MQ, 1024): 0.3})
    w.eval("lact-small", "refine", 0, {(MQ, 1024): 0.3})
    w.eval("lact-small", "refine", 1, {(MQ, 1024): 0.3})
    # not mid-training rows: a test-time-training eval is passed over with a warning
    w.eval("lact-small", "refine", 5, {(MQ, 1024): 0.9}, stages={"mid": "refine", "ttt": "refine"})
    return root


def _cell(paper, model: str, arm: str, family: str, length: str):
    return paper.cells[((model, arm), family, length)]


def _test(paper, model: str, minuend: str, family: str, length: str):
    return next(c for c in paper.comparisons if (c.model, c.minuend, c.family, c.length) == (model, minuend, family,
                                                                                               length))


def test_cells_are_means_over_seeds_with_t_intervals(runs: Path) -> None:
    paper = compute_mini_paper(runs)
    assert paper.lengths == [1024, 2048]
    assert paper.rows == [("deltanet-small", "base"), ("deltanet-small", "sft"), ("deltanet-small", "refine"),
                          ("deltanet-small [reward=binary]", "refine"), ("lact-small", "sft"), ("lact-small", "refine")]
    sft = _cell(paper, "deltanet-small", "sft", "niah_single", "1024")
    assert sft.per_seed == pytest.approx({0: 60.0, 1: 70.0, 2: 80.0}) and sft.tasks == [S1, S2]
    est = sft.estimate  # mean 70, sd 10, half-width t_{.975,2} * 10 / sqrt(3) = 24.84
    assert est.n == 3 and est.mean == pytest.approx(70.0) and est.half_width == pytest.approx(T2 * 10 / math.sqrt(3))
    # the newest REFINE record of seed 2 replaced the older one (values 0.1)
    refine = _cell(paper, "deltanet-small", "refine", "niah_single", "1024")
    assert refine.per_seed == pytest.approx({0: 72.0, 1: 75.0, 2: 90.0})
    assert any("seed 2: 2 records" in w for w in paper.warnings)
    assert any("not a mid-training row" in w for w in paper.warnings)
    # average over lengths, per seed then across seeds: SFT (60+40)/2, (70+50)/2, (80+60)/2 = 50, 60, 70
    assert _cell(paper, "deltanet-small", "sft", "niah_single", "avg").estimate.mean == pytest.approx(60.0)
    base_avg = _cell(paper, "deltanet-small", "base", "niah_single", "avg")
    assert base_avg.per_seed == {0: 50.0} and base_avg.notes  # over 1024 only, footnoted
    assert _cell(paper, "deltanet-small", "base", "niah_single", "2048").estimate is None
    assert _cell(paper, "deltanet-small", "sft", "niah_multikey", "1024").estimate is None


def test_paired_tests_hand_computed(runs: Path) -> None:
    paper = compute_mini_paper(runs)
    # REFINE - SFT, S-NIAH 1K: differences 12, 5, 10 -> mean 9, sd sqrt(13), t = 9 / (sqrt(13)/sqrt(3)) = 4.32
    c = _test(paper, "deltanet-small", "refine", "niah_single", "1024")
    t = 9 / (math.sqrt(13) / math.sqrt(3))
    assert c.seeds == [0, 1, 2] and c.pairing == "paired by seed"
    assert c.test.difference.mean == pytest.approx(9.0) and c.test.t == pytest.approx(t) and c.test.df == 2
    assert c.test.p == pytest.approx(_p_df2(t)) and c.test.difference.half_width == pytest.approx(
        T2 * math.sqrt(13) / math.sqrt(3))
    # REFINE - SFT on the average: per-seed averages REFINE 60, 65, 75 vs SFT 50, 60, 70 -> differences 10, 5, 5
    avg = _test(paper, "deltanet-small", "refine", "niah_single", "avg")
    sd = math.sqrt(((10 - 20 / 3) ** 2 + 2 * (5 - 20 / 3) ** 2) / 2)
    assert avg.test.difference.mean == pytest.approx(20 / 3) and avg.test.t == pytest.approx(
        (20 / 3) / (sd / math.sqrt(3)))
    # SFT - base: the one base record (seed 0) is held fixed: 60-50, 70-50, 80-50 -> mean 20, sd 10, t = 3.46
    base = _test(paper, "deltanet-small", "sft", "niah_single", "1024")
    assert base.pairing.startswith("base: one record (seed 0)") and base.seeds == [0, 1, 2]
    assert base.test.t == pytest.approx(20 / (10 / math.sqrt(3)))
    # ... and its average is taken over the length both arms have (1024), not SFT's 1024+2048 average
    base_avg = _test(paper, "deltanet-small", "sft", "niah_single", "avg")
    assert base_avg.test.difference.mean == pytest.approx(20.0) and "avg over 1024 only" in base_avg.pairing
    # lact-small, two seeds: differences 10, 0 -> mean 5, sd 7.07, t = 1, df 1, p = 0.5 (Cauchy)
    lact = _test(paper, "lact-small", "refine", "niah_multiquery", "1024")
    assert lact.test.t == pytest.approx(1.0) and lact.test.df == 1 and lact.test.p == pytest.approx(0.5)
    assert lact.test.difference.half_width == pytest.approx(T1 * 5.0)
    assert not any(c.model == "lact-small" and c.minuend == "sft" for c in paper.comparisons)  # no base row
    # nothing measured in MK-NIAH, nor base at 2K: no test rows (the table already shows "—")
    assert not any(c.family == "niah_multikey" for c in paper.comparisons)
    assert not any(c.minuend == "sft" and c.length == "2048" for c in paper.comparisons)


def test_written_tables_and_plots(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "mini"
    result = build_mini_paper(runs, out)
    names = {p.relative_to(out).as_posix() for p in result.paths}
    assert {"table3.md", "table3.csv", "table3.tex", "paired_tests.md", "paired_tests.csv", "paired_tests.tex",
            "index.md"} <= names
    assert {"plots/niah_heatmap_deltanet-small_refine.png", "plots/niah_heatmap_lact-small_sft.pdf",
            "plots/gains_deltanet-small.png", "plots/gains_lact-small.pdf"} <= names
    first = {path: path.read_bytes() for path in result.paths}
    assert {path: path.read_bytes() for path in build_mini_paper(runs, out).paths} == first  # byte for byte
    assert not any(b"/CreationDate" in data for path, data in first.items() if path.suffix == ".pdf")
    md = (out / "table3.md").read_text().splitlines()
    header = [c.strip() for c in next(x for x in md if x.startswith("| model |")).strip("|").split("|")]
    assert header[:7] == ["model", "arm", "seeds", "S-NIAH 1K", "S-NIAH 2K", "S-NIAH avg", "MK-NIAH 1K"]
    cells = {}
    for line in md:
        if line.startswith("| deltanet-small | "):
            parts = [c.strip() for c in line.strip("|").split("|")]
            cells[parts[1]] = dict(zip(header, parts, strict=True))
    hw = f"{T2 * 10 / math.sqrt(3):.1f}"  # 24.8
    assert cells["SFT"]["seeds"] == "3 (0, 1, 2)"
    assert cells["SFT"]["S-NIAH 1K"] == f"70.0 ± {hw}" and cells["SFT"]["S-NIAH 2K"] == f"50.0 ± {hw}"
    assert cells["base"]["S-NIAH 1K"] == "50.0 (n=1)" and cells["base"]["S-NIAH 2K"] == "—"
    assert cells["base"]["S-NIAH avg"].startswith("50.0 (n=1)<sup>")
    assert cells["SFT"]["MK-NIAH 1K"] == "—"
    csv = pd.read_csv(out / "table3.csv")
    row = csv[(csv.model == "deltanet-small") & (csv.arm == "refine") & (csv.family == "niah_single")
              & (csv.length == "1024")].iloc[0]
    assert row.n == 3 and row["mean"] == pytest.approx(79.0) and row.per_seed == "0:72;1:75;2:90"
    tests = pd.read_csv(out / "paired_tests.csv")
    hit = tests[(tests.model == "deltanet-small") & (tests.minuend == "refine") & (tests.family == "niah_single")
                & (tests.length == "1024")].iloc[0]
    t = 9 / (math.sqrt(13) / math.sqrt(3))
    assert hit.t == pytest.approx(t) and hit.p == pytest.approx(_p_df2(t)) and hit.n == 3
    assert hit.ci_low == pytest.approx(9 - T2 * math.sqrt(13 / 3))
    tests_md = (out / "paired_tests.md").read_text()
    assert f"| deltanet-small | REFINE − SFT | S-NIAH | 1K | 3 | +9.0 | [{9 - T2 * math.sqrt(13 / 3):+.1f}, " \
           f"{9 + T2 * math.sqrt(13 / 3):+.1f}] | {t:.2f} (2) | {_p_df2(t):.3f} | paired by seed |" in tests_md
    tex = (out / "table3.tex").read_text()
    assert rf"70.0 $\pm$ {hw}" in tex and r"\begin{tabular}" in tex
    index = (out / "index.md").read_text()
    assert "plots/gains_deltanet-small.png" in index and "seed 2: 2 records" in index


def test_cli_and_bad_input(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-out"
    code, text = run_cli(capsys, "tables", "--mini-paper", "--runs-dir", runs, "--out", out, "--no-plots")
    assert code == 0, text
    assert "12 record(s) in 6 row(s)" in text and (out / "table3.md").is_file() and not (out / "plots").exists()
    code, text = run_cli(capsys, "tables", "--mini-paper", "--runs-dir", tmp_path / "nowhere", "--out", out)
    assert code == 2 and "no runs folder" in text
    (tmp_path / "empty").mkdir()
    code, text = run_cli(capsys, "tables", "--mini-paper", "--runs-dir", tmp_path / "empty", "--out", out)
    assert code == 2 and "no NIAH evaluation records" in text
