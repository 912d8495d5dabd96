"""An evaluation's run record, written once the evaluation has succeeded (a failed one leaves no folder).

The run folder (see refine_bench.records) receives:
  lm_eval/results.json          lm-eval's results (without samples)
  lm_eval/samples_<task>.jsonl  lm-eval's logged samples, one line per doc
  scores.jsonl                  tidy scores: per length for NIAH / RULER QA, per task for LongBench (per dataset
                                for `longbench_file`: task `longbench_file_<dataset>`)
  niah_depths.jsonl             one row per NIAH answer needle: task, length, depth (0..1), score (0/1)
  ttt_batches.jsonl             with test-time training: one row per adapted batch (task, doc ids, losses, ...)
and run.json's config lists the exact data files read (`data_files`: path, bytes, SHA-256) and what resuming
reused (`resume`).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refine_bench.eval import harness_tasks
from refine_bench.eval.task_catalog import task_group
from refine_bench.fileio import file_sha256
from refine_bench.protocol import NIAH_TASKS


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _mean_row(task: str, group: str, length: int | None, metric: str, values: list[float]) -> dict[str, Any]:
    """A score row from per-sample values: their mean, and the standard error lm-eval reports for a mean
    (sample standard deviation over sqrt(n))."""
    stderr = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"task": task, "group": group, "length": length, "metric": metric, "value": sum(values) / len(values),
            "stderr": stderr, "n": len(values)}


def score_rows(results: dict[str, Any], samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Tidy score rows: NIAH and RULER QA per length, `longbench_file` per dataset (both from the logged samples),
    any other task per metric from lm-eval's results."""
    rows: list[dict[str, Any]] = []
    for task, res in results.get("results", {}).items():
        if task not in results.get("n-samples", {}) and task not in samples:
            continue  # a group's aggregate
        group = task_group(task)
        docs = samples.get(task, [])
        if group in ("niah", "ruler_qa"):
            metric = "recall" if group == "niah" else "score"
            by_length: dict[int, list[float]] = {}
            for s in docs:
                by_length.setdefault(int(s["doc"]["length"]), []).append(float(s[metric]))
            rows.extend(_mean_row(task, group, n, metric, by_length[n]) for n in sorted(by_length))
            continue
        if task == harness_tasks.LONGBENCH_FILE_TASK:
            by_dataset: dict[str, list[float]] = {}
            for s in docs:
                by_dataset.setdefault(s["doc"]["task"], []).append(float(s["score"]))
            rows.extend(_mean_row(f"{task}_{name}", group, None, "score", v) for name, v in by_dataset.items())
            continue
        for key, value in res.items():
            if "," not in key or "_stderr" in key or _number(value) is None:
                continue
            metric, _filter = key.split(",", 1)
            rows.append({"task": task, "group": group, "length": None, "metric": metric, "value": float(value),
                         "stderr": _number(res.get(f"{metric}_stderr,{_filter}")), "n": len(docs) or None})
    return rows


def depth_rows(samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """niah_depths.jsonl rows from the logged NIAH samples."""
    rows = []
    for task, docs in samples.items():
        if task not in NIAH_TASKS:
            continue
        for s in sorted(docs, key=lambda s: s["doc_id"]):
            rows.extend(harness_tasks.niah_depth_rows(task, s["doc"], s["filtered_resps"][0]))
    return rows


def data_file_rows(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The data files an evaluation read, with their sizes and SHA-256."""
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(paths)]


def _jsonl(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in rows)


def write_record(output: Path, *, model: str, stages: dict[str, Any], config: dict[str, Any], seed: int,
                 command: list[str], started: str, results: dict[str, Any], ttt_log: list[dict[str, Any]]) -> Path:
    """Write the run record of a finished evaluation and publish it; returns its folder. Should writing fail,
    the half-written folder is removed."""
    from refine_bench.records import RunRecord

    record = RunRecord.create(output, kind="eval", model=model, stages=stages, config=config, seed=seed,
                              command=command)
    try:
        record.meta["start_time"] = started  # the evaluation began before the record was opened
        logged = {task: sorted(docs, key=lambda d: d["doc_id"])
                  for task, docs in (results.pop("samples", {}) or {}).items()}
        record.write_json("lm_eval/results.json", results)
        for task, docs in logged.items():
            record.write_text(f"lm_eval/samples_{task}.jsonl", _jsonl(docs))
        record.write_scores(score_rows(results, logged))
        depths = depth_rows(logged)
        if depths:
            record.write_text("niah_depths.jsonl", _jsonl(depths))
        if ttt_log:
            record.write_text("ttt_batches.jsonl", _jsonl(ttt_log))
        return record.finish("ok")
    except BaseException:
        shutil.rmtree(record.path, ignore_errors=True)
        raise
