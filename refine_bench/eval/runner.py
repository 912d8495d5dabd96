"""The evaluation runner: lm-eval's `simple_evaluate` on our tasks and model, saved as a run record.

A run folder (contract 2) receives:
  lm_eval/results.json          lm-eval's results (without samples)
  lm_eval/samples_<task>.jsonl  lm-eval's logged samples, one line per doc
  scores.jsonl                  tidy scores (contract 3): per length for NIAH / RULER QA, per task for LongBench
  niah_depths.jsonl             one row per NIAH answer needle: task, length, depth (0..1), score (0/1)
  ttt_batches.jsonl             with test-time training: one row per adapted batch (task, doc ids, losses, ...)
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.eval import harness_tasks
from refine_bench.eval.data import checkout_root, resolve_data_dir
from refine_bench.eval.niah import NIAH_TASKS

log = logging.getLogger(__name__)

PAPER_GROUPS = ("niah", "ruler_qa", "longbench")
SANITY_TASKS = ("wikitext", "lambada_openai", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                "swde", "fda")
RULER_QA_TASK_NAMES = ("ruler_qa_squad", "ruler_qa_hotpotqa")
# Context budget for short-context tasks only (the sanity suite): the models' pre-training context.
SHORT_CONTEXT_MAX_LENGTH = 2048


def tasks_dir() -> Path:
    """The lm-eval include_path shipped with the checkout (`tasks/` at the repository root)."""
    folder = checkout_root() / "tasks"
    if not folder.is_dir():
        raise UserInputError(f"task folder {folder} not found; pass --include-path pointing at refine-bench's tasks/")
    return folder


def own_task_names(include_path: str | Path | None = None) -> dict[str, list[str]]:
    """Our groups and their leaf tasks, read from the YAML index (nothing is built)."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(include_path or tasks_dir()), include_defaults=False)
    groups: dict[str, list[str]] = {}
    for name in tm.all_groups:
        groups[name] = leaf_tasks(tm, name)
    return groups


def leaf_tasks(tm: Any, name: str) -> list[str]:
    """Leaf task names of a task, group or tag in a TaskManager's index (without building anything)."""
    from lm_eval.tasks._index import Kind

    entry = tm.task_index.get(name)
    if entry is None:
        return [name]
    if entry.kind == Kind.GROUP:
        out: list[str] = []
        for item in entry.cfg.get("task", []):
            child = item if isinstance(item, str) else item.get("task") or item.get("group")
            out.extend(leaf_tasks(tm, child))
        return out
    if entry.kind == Kind.TAG:
        return sorted(entry.tags)
    return [name]


def expand_tasks(requested: Sequence[str]) -> list[str]:
    """Split comma-separated names and replace `sanity` by lm-eval's short-context suite."""
    names: list[str] = []
    for raw in requested:
        for name in (n.strip() for n in raw.split(",")):
            if name:
                names.extend(SANITY_TASKS if name == "sanity" else [name])
    return list(dict.fromkeys(names))


def resolve_tasks(requested: Sequence[str], tm: Any, include_path: str | Path | None = None) -> list[str]:
    """Expand `sanity`, check every name, and raise a UserInputError listing what exists."""
    names = expand_tasks(requested)
    if not names:
        raise UserInputError("no tasks given; e.g. --tasks niah,ruler_qa,longbench")
    known = set(tm.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        folder = str(Path(include_path or tasks_dir()).resolve())
        own = sorted(n for n, e in tm.task_index.items()
                     if e.yaml_path and folder in str(Path(e.yaml_path).resolve()) and n != "sanity")
        raise UserInputError(
            f"unknown task(s) {', '.join(unknown)}; available: {', '.join(own)}, sanity (= {', '.join(SANITY_TASKS)})"
            ", or any lm-eval task name"
        )
    return list(dict.fromkeys(names))


def task_group(task: str) -> str:
    """The contract-3 group of a leaf task."""
    if task in NIAH_TASKS:
        return "niah"
    if task in RULER_QA_TASK_NAMES:
        return "ruler_qa"
    if task.startswith("longbench_"):
        return "longbench"  # incl. longbench_file
    if task in SANITY_TASKS:
        return "sanity"
    return "other"


def _sample_indices(leaves: Sequence[str], limit: int, meta: dict[str, Any]) -> dict[str, list[int]]:
    """`limit` docs per task and per length (multi-length tasks interleave their lengths), capped at the
    number of docs a task has."""
    out = {}
    for task in leaves:
        want = limit * harness_tasks.docs_per_length(task, meta)
        have = harness_tasks.doc_count(task, meta)
        out[task] = list(range(min(want, have) if have is not None else want))
    return out


# --------------------------------------------------------------------------------------------- tidy outputs


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def score_rows(results: dict[str, Any], samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Contract-3 rows from lm-eval's results: per length for NIAH / RULER QA, per task otherwise."""
    rows: list[dict[str, Any]] = []
    for task, res in results.get("results", {}).items():
        if task not in results.get("n-samples", {}) and task not in samples:
            continue  # a group's aggregate
        group = task_group(task)
        docs = samples.get(task, [])
        if group in ("niah", "ruler_qa"):
            metric = "recall" if group == "niah" else "score"
            counts: dict[int, int] = {}
            for s in docs:
                counts[int(s["doc"]["length"])] = counts.get(int(s["doc"]["length"]), 0) + 1
            for length in sorted(counts):
                value = _number(res.get(f"{metric}_{length},none"))
                if value is None:
                    continue
                rows.append({"task": task, "group": group, "length": length, "metric": metric, "value": value,
                             "stderr": _number(res.get(f"{metric}_{length}_stderr,none")), "n": counts[length]})
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


def _jsonl(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in rows)


# --------------------------------------------------------------------------------------------- the run


def run_eval(
    model: str,
    tasks: Sequence[str] = PAPER_GROUPS,
    *,
    checkpoint: str | None = None,
    lengths: Sequence[int] | None = None,
    limit: int | None = None,
    output: str | Path = Path("results/runs"),
    batch_size: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    seed: int = 42,
    data_dir: str | Path | None = None,
    include_path: str | Path | None = None,
    ruler_qa_paths: Sequence[str] | None = None,
    max_length: int | None = None,
    stages: dict[str, str | None] | None = None,
    lm: Any = None,
    command: list[str] | None = None,
    ttt_adapter: Any = None,
    ttt_batch_size: int = 8,
    ttt_settings: dict[str, Any] | None = None,
    variant: str | None = None,
) -> Path | None:
    """Evaluate `model` on `tasks` with lm-eval and write a run record; returns its folder (None off rank 0).

    Test-time training: `stages["ttt"]` names the arm and `ttt_adapter` is a factory building the adapter for
    the loaded model (`refine_bench.eval.ttt.AdapterFactory`; the CLI makes it from refine_bench.train).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from refine_bench.eval.lm import DEFAULT_MAX_LENGTH, RefineBenchLM
    from refine_bench.records import RunRecord

    stages = dict(stages or {})
    if stages.get("ttt") and ttt_adapter is None and lm is None:
        raise UserInputError(f"test-time training (ttt={stages['ttt']}) needs an adapter; use "
                             f"`refine-bench eval --ttt-arm {stages['ttt']}`")
    if ttt_adapter is not None and not stages.get("ttt"):
        raise UserInputError("a test-time-training adapter was given without its arm (stages['ttt'])")
    if limit is not None and limit <= 0:
        raise UserInputError(f"--limit must be a positive number of samples, got {limit}")
    include = str(include_path or tasks_dir())
    lengths = harness_tasks.parse_lengths(list(lengths) if lengths else None)
    meta: dict[str, Any] = {"pretrained": model, "max_seq_lengths": lengths, "seed": seed}
    if checkpoint:
        meta["checkpoint"] = str(checkpoint)
    if limit:
        meta["num_samples"] = limit
    if data_dir is not None or any("ruler_qa" in t or "longbench" in t or t == "refine_paper" for t in tasks):
        try:
            meta["data_dir"] = str(resolve_data_dir(data_dir))
        except UserInputError:
            if data_dir is not None:
                raise
    if ruler_qa_paths:
        meta["ruler_qa_paths"] = [str(p) for p in ruler_qa_paths]

    own = TaskManager(include_path=include, include_defaults=False)
    requested = expand_tasks(tasks)
    needs_builtin = any(n not in own.all_tasks for n in requested)
    tm = TaskManager(include_path=include, include_defaults=needs_builtin, metadata=meta)
    names = resolve_tasks(requested, tm, include)
    leaves = [leaf for n in names for leaf in leaf_tasks(tm, n)]

    if max_length is None:
        groups = {task_group(t) for t in leaves}
        max_length = max(lengths) if "niah" in groups else SHORT_CONTEXT_MAX_LENGTH
        if groups & {"longbench", "ruler_qa"}:
            max_length = max(max_length, DEFAULT_MAX_LENGTH)
    if stages.get("ttt") and "sanity" in {task_group(t) for t in leaves}:
        raise UserInputError("test-time training applies to generation tasks; evaluate the sanity suite "
                             "without --ttt-arm")
    if lm is None and ttt_adapter is not None:
        from refine_bench.eval.ttt import TestTimeTrainingLM

        lm = TestTimeTrainingLM(ttt_adapter, str(stages["ttt"]), ttt_batch_size=ttt_batch_size,
                                settings=ttt_settings, pretrained=model, checkpoint=checkpoint,
                                batch_size=batch_size, device=device, dtype=dtype, max_length=max_length, seed=0)
    elif lm is None:
        lm = RefineBenchLM(pretrained=model, checkpoint=checkpoint, batch_size=batch_size, device=device,
                           dtype=dtype, max_length=max_length, seed=0)
    samples = _sample_indices(leaves, limit, meta) if limit else None
    config = {"tasks": names, "leaf_tasks": leaves, "lengths": lengths, "limit": limit, "batch_size": batch_size,
              "device": str(lm.device), "dtype": dtype, "max_length": lm.max_length, "checkpoint": checkpoint,
              "data_dir": meta.get("data_dir"), "include_path": include, "world_size": lm.world_size,
              "ruler_qa_paths": meta.get("ruler_qa_paths"), "variant": variant or None}
    if hasattr(lm, "ttt_settings"):
        config["ttt"] = lm.ttt_settings()

    record = None
    if lm.rank == 0:
        record = RunRecord.create(Path(output), kind="eval", model=model, stages=stages, config=config, seed=seed,
                                  command=command if command is not None else list(sys.argv))
    try:
        try:
            results = simple_evaluate(
                model=lm, tasks=names, task_manager=tm, samples=samples, log_samples=True, bootstrap_iters=1000,
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            )
        except ConnectionError as exc:
            raise UserInputError(
                f"a task's data could not be fetched ({exc}); lm-eval's built-in tasks (e.g. the sanity suite) "
                "need the Hugging Face hub or a populated HF datasets cache"
            ) from exc
        if record is None:
            return None
        logged = {task: sorted(docs, key=lambda d: d["doc_id"])
                  for task, docs in (results.pop("samples", {}) or {}).items()}
        record.write_json("lm_eval/results.json", results)
        for task, docs in logged.items():
            record.write_text(f"lm_eval/samples_{task}.jsonl", _jsonl(docs))
        record.write_scores(score_rows(results, logged))
        depths = depth_rows(logged)
        if depths:
            record.write_text("niah_depths.jsonl", _jsonl(depths))
        if getattr(lm, "ttt_log", None):
            record.write_text("ttt_batches.jsonl", _jsonl(lm.ttt_log))
        if getattr(lm, "truncated_prompts", 0):
            log.warning("%d prompt(s) were truncated in the middle to fit max_length %d", lm.truncated_prompts,
                        lm.max_length)
        return record.finish("ok")
    except BaseException:
        if record is not None:
            record.finish("failed")
        raise
