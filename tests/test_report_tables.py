"""Paper numbers (baselines/), table cells from constructed runs, newest-wins, corrupt folders, plots' data."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from refine_bench import records
from refine_bench.records import RunRecord
from refine_bench.report.build import build_paper
from refine_bench.report.loader import load_runs
from refine_bench.report.paper import load_paper_ablations, load_paper_results, model_label
from refine_bench.report.plots import niah_depth_grid
from refine_bench.report.render import table_markdown
from refine_bench.report.tables import build_tables, relative_gains

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _paper_value(paper: pd.DataFrame, table: str, model: str, stages: tuple, task: str, length: str) -> float:
    mid, post, ttt = stages
    sel = paper[(paper.table == table) & (paper.model == model) & (paper.task == task) & (paper.length == length)]
    sel = sel[[(a, b, c) == (mid, post, ttt) for a, b, c in zip(sel.mid, sel.post, sel.ttt, strict=True)]]
    assert len(sel) == 1, (table, model, stages, task, length)
    return float(sel.value.iloc[0])


def test_paper_csv_counts_and_hand_typed_cells() -> None:
    paper = load_paper_results()
    assert paper.groupby("table").size().to_dict() == {"3": 96, "4": 128, "5": 130}
    assert len(load_paper_ablations()) == 24
    checks = [
        ("3", "LaCT-760M", ("sft", None, None), "niah_multiquery", "4096", 40.7),
        ("3", "LaCT-760M", (None, None, None), "niah_multikey", "avg", 46.2),
        ("3", "DeltaNet-1.3B", ("refine", None, None), "niah_single", "16384", 99.8),
        ("3", "DeltaNet-1.3B", (None, None, None), "niah_multivalue", "8192", 5.4),
        ("4", "DeltaNet-1.3B", ("refine", "nested_sft", None), "ruler_qa_squad", "16384", 5.0),
        ("4", "LaCT-760M", ("refine", "nested_refine", "refine"), "ruler_qa_hotpotqa", "avg", 23.0),
        ("4", "LaCT-760M", ("refine", "nested_refine", "sft"), "ruler_qa_hotpotqa", "8192", 24.0),
        ("5", "DeltaNet-1.3B", ("refine", None, "sft"), "longbench_trec", "", 28.0),
        ("5", "LaCT-760M", (None, None, None), "longbench_avg", "", 13.1),
        ("5", "LaCT-760M", ("refine", None, "refine"), "longbench_2wikimqa", "", 22.8),
        ("5", "DeltaNet-1.3B", ("sft", None, None), "longbench_repobench-p", "", 29.2),
    ]
    for table, model, stages, task, length, want in checks:
        assert _paper_value(paper, table, model, stages, task, length) == want
    abl = load_paper_ablations()
    row = abl[(abl.ablation == "mid_selection") & (abl.setting == "argmin") & (abl.model == "DeltaNet-1.3B")]
    assert float(row.value.iloc[0]) == 16.8


def test_paper_averages_match_their_cells() -> None:
    """Transcription check: each printed average is the mean of its printed cells (Table 3 has 3 known slips)."""
    paper = load_paper_results()
    slips = 0
    for table in ("3", "4"):
        sel = paper[paper.table == table].fillna("")
        for _, grp in sel.groupby(["model", "mid", "post", "ttt", "task"], dropna=False):
            avg = grp[grp.length == "avg"].value.iloc[0]
            slips += abs(avg - grp[grp.length != "avg"].value.mean()) > 0.051
    assert slips == 3  # LaCT base MK (46.2 vs 46.4), LaCT base MQ, LaCT SFT MV: as printed in the source
    lb = paper[paper.table == "5"].fillna("")
    for _, grp in lb.groupby(["model", "mid", "ttt"]):
        avg = grp[grp.task == "longbench_avg"].value.iloc[0]
        assert abs(avg - grp[grp.task != "longbench_avg"].value.mean()) <= 0.051


def test_model_labels() -> None:
    assert model_label("lact-760m") == "LaCT-760M"
    assert model_label("deltanet-1.3b") == "DeltaNet-1.3B"
    assert model_label("fla-hub/delta_net-1.3B-100B") == "DeltaNet-1.3B"
    assert model_label("deltanet-tiny") == "deltanet-tiny"
    assert model_label("lact-tiny") == "lact-tiny"


def _run(root: Path, minutes: int, model: str, stages: dict, scores: list[dict], monkeypatch: pytest.MonkeyPatch,
         extra: dict | None = None, variant: str | None = None) -> str:
    monkeypatch.setattr(records, "utc_now", lambda: T0 + timedelta(minutes=minutes))
    rec = RunRecord.create(root, kind="eval", model=model, stages=stages, config={"device": "cpu", "variant": variant},
                           seed=0)
    rows = [{"stderr": None, "n": 10, **s} for s in scores]
    rec.write_scores(rows)
    for name, text in (extra or {}).items():
        rec.write_text(name, text)
    rec.finish()
    return rec.run_id


def _niah(task: str, length: int, value: float) -> dict:
    return {"task": task, "group": "niah", "length": length, "metric": "recall", "value": value}


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "runs"
    # Older run, then a newer one that re-measures niah_single_1@4096: the newer value must win.
    _run(root, 1, "deltanet-1.3b", {"mid": "refine"},
         [_niah("niah_single_1", 4096, 0.9), _niah("niah_single_2", 4096, 0.8), _niah("niah_multikey_1", 4096, 0.5)],
         monkeypatch)
    _run(root, 2, "deltanet-1.3b", {"mid": "refine"}, [_niah("niah_single_1", 4096, 0.7)], monkeypatch)
    depths = "".join(json.dumps({"task": "niah_multiquery", "length": 1024, "depth": d, "score": s}) + "\n"
                     for d, s in ((0.02, 1), (0.07, 0), (0.95, 1), (1.0, 1)))
    _run(root, 3, "deltanet-tiny", {}, [_niah("niah_multiquery", 1024, 0.25)], monkeypatch,
         extra={"niah_depths.jsonl": depths, "train_metrics.jsonl": '{"step": 1, "loss": 3.0}\n'})
    _run(root, 4, "lact-760m", {"mid": "refine", "post": "nested_refine", "ttt": "refine"},
         [{"task": "ruler_qa_squad", "group": "ruler_qa", "length": 4096, "metric": "score", "value": 0.5}],
         monkeypatch)
    lb = {"group": "longbench", "length": None, "metric": "score"}
    _run(root, 5, "deltanet-1.3b", {}, [{**lb, "task": "longbench_trec", "value": 0.2}], monkeypatch)
    _run(root, 6, "deltanet-1.3b", {"mid": "refine"}, [{**lb, "task": "longbench_trec", "value": 0.3}], monkeypatch)
    # Broken folders: bad JSON, no run.json, failed status, a bad scores line.
    (root / "bad-json").mkdir()
    (root / "bad-json" / "run.json").write_text("{not json")
    (root / "no-meta").mkdir()
    failed = _run(root, 7, "deltanet-1.3b", {"mid": "sft"}, [_niah("niah_single_1", 4096, 0.1)], monkeypatch)
    meta = json.loads((root / failed / "run.json").read_text())
    (root / failed / "run.json").write_text(json.dumps({**meta, "status": "failed"}))
    bad_scores = _run(root, 8, "deltanet-1.3b", {"mid": "sft"}, [_niah("niah_single_1", 4096, 0.1)], monkeypatch)
    with open(root / bad_scores / "scores.jsonl", "a") as fh:
        fh.write('{"task": "niah_single_2", "group": "niah"\n')
    return root


def test_cells_newest_wins_missing_and_extra_rows(runs_dir: Path) -> None:
    runset = load_runs(runs_dir)
    assert len(runset.runs) == 6
    assert len(runset.warnings) == 4
    assert all(any(name in w for w in runset.warnings) for name in ("bad-json", "no-meta", "failed", "scores.jsonl"))
    tables = build_tables(runset.frame(), load_paper_results())
    t3 = tables["3"]
    dn_refine = ("DeltaNet-1.3B", "refine", None, None)
    s4k = t3.cell(dn_refine, "niah_single", "4096")
    assert s4k["ours"] == pytest.approx(75.0)  # mean(70 newest, 80): the older 90 is not used
    assert s4k["paper"] == 100.0 and s4k["delta"] == pytest.approx(-25.0)
    assert s4k["n_runs"] == 2 and s4k["tasks"] == "niah_single_1;niah_single_2"
    assert t3.cell(dn_refine, "niah_multikey", "4096")["ours"] == pytest.approx(50.0)
    missing = t3.cell(dn_refine, "niah_multikey", "8192")
    assert missing["ours"] is None and missing["paper"] == 21.4 and missing["delta"] is None
    assert t3.cell(dn_refine, "niah_single", "avg")["ours"] == pytest.approx(75.0)
    assert t3.cell(("LaCT-760M", None, None, None), "niah_single", "4096")["ours"] is None
    # The tiny model is its own row, never set against the paper's DeltaNet numbers.
    tiny = ("deltanet-tiny", None, None, None)
    assert tiny in t3.rows and ("DeltaNet-1.3B", None, None, None) in t3.rows
    tiny_mq = t3.cell(tiny, "niah_multiquery", "1024")
    assert tiny_mq["ours"] == pytest.approx(25.0) and tiny_mq["paper"] is None
    assert t3.cell(("DeltaNet-1.3B", None, None, None), "niah_multiquery", "avg")["ours"] is None
    t4 = tables["4"]
    squad = t4.cell(("LaCT-760M", "refine", "nested_refine", "refine"), "ruler_qa_squad", "4096")
    assert squad["ours"] == pytest.approx(50.0) and squad["delta"] == pytest.approx(4.5)
    t5 = tables["5"]
    base_tc = t5.cell(("DeltaNet-1.3B", None, None, None), "longbench_trec", "")
    assert base_tc["ours"] == pytest.approx(20.0) and base_tc["paper"] == 17.7
    assert t5.cell(("DeltaNet-1.3B", None, None, None), "longbench_qasper", "")["ours"] is None
    avg = t5.cell(("DeltaNet-1.3B", None, None, None), "avg", "")
    assert avg["ours"] == pytest.approx(20.0) and avg["paper"] == 14.2 and avg["notes"]
    gains = relative_gains(tables)
    g = gains[(gains.table == "5") & (gains.model == "DeltaNet-1.3B") & (gains["mid"] == "refine")
              & gains["ttt"].isna()]
    assert len(g) == 1
    assert g.ours_gain_pct.iloc[0] == pytest.approx(50.0)
    assert g.paper_gain_pct.iloc[0] == pytest.approx(100 * (17.0 - 14.2) / 14.2)


def test_markdown_shows_counts_dashes_and_footnotes(runs_dir: Path) -> None:
    runset = load_runs(runs_dir)
    tables = build_tables(runset.frame(), load_paper_results())
    md = table_markdown(tables["3"], runset.warnings)
    lines = md.splitlines()
    header = [c.strip() for c in next(x for x in lines if x.startswith("| model |")).strip("|").split("|")]
    assert header[4:9] == ["S-NIAH 1K", "S-NIAH 4K", "S-NIAH 8K", "S-NIAH 16K", "S-NIAH avg"]  # 1K from a run
    row = next(line for line in lines if line.startswith("| DeltaNet-1.3B | REFINE |"))
    cells = dict(zip(header, (c.strip() for c in row.strip("|").split("|")), strict=True))
    assert cells["S-NIAH 4K"].startswith("75.0 [2 runs]") and cells["S-NIAH 4K"].endswith("/ 100.0 (-25.0)")
    assert cells["S-NIAH 8K"] == "— / 100.0"  # no run: the paper value is kept, nothing invented
    assert cells["S-NIAH 1K"] == "— / —"
    assert "niah_single_1, niah_single_2" in md  # footnote naming the S-NIAH variants averaged
    tiny = next(line for line in md.splitlines() if line.startswith("| deltanet-tiny |"))
    assert "25.0 / —" in tiny
    assert "bad-json" in md and "no-meta" in md


def test_build_on_fresh_clone_has_paper_numbers_only(tmp_path: Path) -> None:
    out = tmp_path / "paper"
    result = build_paper(tmp_path / "no-runs", out, with_plots=False)
    assert result.n_runs == 0 and result.warnings == []
    t3 = pd.read_csv(out / "table3.csv")
    assert len(t3) == 6 * 16 and t3.ours.isna().all() and t3.paper.notna().all()
    t5 = pd.read_csv(out / "table5.csv")
    assert len(t5) == 10 * 13 and t5.ours.isna().all()
    md = (out / "table4.md").read_text()
    assert md.count("| LaCT-760M |") == 8 and md.count("| DeltaNet-1.3B |") == 8
    assert "— / 45.5 |" in md
    tex = (out / "table5.tex").read_text()
    assert r"\begin{tabular}" in tex and "--- / 13.1" in tex


def test_niah_depth_grid_hand_computed() -> None:
    rows = [{"task": "t", "length": 4096, "depth": d, "score": s} for d, s in ((0.02, 1), (0.07, 0), (1.0, 1))]
    rows += [{"task": "t", "length": 8192, "depth": 0.55, "score": 1}, {"length": 8192, "depth": 2.0, "score": 1}]
    lengths, depths, grid = niah_depth_grid(rows)
    assert lengths == [4096, 8192]
    assert depths == pytest.approx([0.05, 0.55, 0.95])
    assert grid == [[50.0, None], [None, 100.0], [100.0, None]]


def test_build_with_runs_writes_tables_and_plots(runs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "paper"
    result = build_paper(runs_dir, out)
    assert result.n_runs == 6 and len(result.warnings) == 4
    names = {p.name for p in (out / "plots").iterdir()}
    tiny_heatmap = "niah_heatmap_deltanet-tiny__-_-_-"
    assert {f"{tiny_heatmap}.png", f"{tiny_heatmap}.pdf"} <= names
    assert sum(n.startswith("niah_heatmap_") for n in names) == 2  # only the run with niah_depths.jsonl
    assert sum(n.startswith("train_") for n in names) == 2  # png + pdf for the one run with train metrics
    assert {"longbench_bars_DeltaNet-1.3B.png", "ruler_qa_LaCT-760M.pdf"} <= names
    csv3 = pd.read_csv(out / "table3.csv")
    hit = csv3[(csv3.model == "DeltaNet-1.3B") & (csv3["mid"] == "refine") & (csv3.family == "niah_single")
               & (csv3.length == "4096")]
    assert hit.ours.iloc[0] == pytest.approx(75.0) and hit.n_runs.iloc[0] == 2


def test_ablation_runs_get_their_own_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A newer run with non-preset settings (here the binary reward) must not replace the preset REFINE cell."""
    root = tmp_path / "runs"
    _run(root, 1, "deltanet-1.3b", {"mid": "refine"}, [_niah("niah_single_1", 4096, 0.5)], monkeypatch)
    _run(root, 2, "deltanet-1.3b", {"mid": "refine"}, [_niah("niah_single_1", 4096, 0.25)], monkeypatch,
         variant="reward=binary")
    tables = build_tables(load_runs(root).frame(), load_paper_results())
    preset = tables["3"].cell(("DeltaNet-1.3B", "refine", None, None), "niah_single", "4096")
    ablation = tables["3"].cell(("DeltaNet-1.3B [reward=binary]", "refine", None, None), "niah_single", "4096")
    assert preset["ours"] == 50.0 and preset["n_runs"] == 1
    assert ablation["ours"] == 25.0 and ablation["paper"] is None
