"""What an evaluation will do, settled before any model is loaded: the request (what the user asked for, in the
CLI's terms) and the plan made from it (tasks, lengths, lm-eval metadata, context budget, data, labels).

Every problem with the request is found here and named by its flag, so a bad request fails before the
(expensive) model load and leaves nothing behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.eval import data, harness_tasks, niah, scorers
from refine_bench.eval.task_catalog import (
    check_own_families,
    expand_tasks,
    leaf_tasks,
    resolve_tasks,
    task_group,
    task_manager,
    tasks_dir,
)
from refine_bench.protocol import PAPER_LENGTHS, RULER_QA_TASKS, TASK_GROUPS

log = logging.getLogger(__name__)

# Context budget for short-context tasks alone (the sanity suite): the models' pre-training context.
SHORT_CONTEXT_MAX_LENGTH = 2048
LONG_CONTEXT_MAX_LENGTH = max(PAPER_LENGTHS)  # RULER QA and LongBench prompts go up to the paper's longest


@dataclass(frozen=True)
class TestTimeTraining:
    """Test-time training for an evaluation: the arm, a factory building the adapter for the loaded model
    (the CLI makes it from refine_bench.train), the prompts per adapted batch, the settings for the record,
    and how they depart from the paper's preset (a variant label; empty when they do not)."""

    __test__ = False  # not a pytest class

    arm: str
    adapter: Callable[[Any], Any]
    batch_size: int
    settings: dict[str, Any] = field(default_factory=dict)
    departures: str = ""


@dataclass
class EvalRequest:
    """One `refine-bench eval` (or the evaluation half of `refine-bench run`), in the CLI's terms."""

    model: str
    tasks: Sequence[str] = (",".join(TASK_GROUPS),)
    checkpoint: str | None = None
    lengths: Sequence[int] | None = None  # --lengths (NIAH, RULER QA)
    limit: int | None = None  # --limit: samples per task and per length
    output: str | Path = Path("results/runs")
    batch_size: int = 1
    device: str | None = "auto"
    dtype: str | None = None
    seed: int = 42
    data_dir: str | Path | None = None
    include_path: str | Path | None = None
    ruler_qa_files: Sequence[str] = ()  # --ruler-qa-file
    allow_foreign_ruler_file: bool = False
    longbench_files: Sequence[str] = ()  # --longbench-file
    scoring: str = scorers.PAPER
    niah_length_convention: str = niah.EXACT
    max_length: int | None = None
    stages: dict[str, str | None] = field(default_factory=dict)
    command: list[str] | None = None
    variant: str | None = None  # the user's own label (e.g. for a checkpoint trained off-preset)
    ttt: TestTimeTraining | None = None
    resume: bool = True  # reuse the answers of an earlier run with the same identity (a killed one)
    lm: Any = None  # a ready lm-eval model (tests); otherwise the runner builds one


@dataclass
class EvalPlan:
    """The settled evaluation (see `make_plan`)."""

    tasks: list[str]  # names handed to lm-eval (groups allowed)
    leaves: list[str]  # their leaf tasks
    lengths: list[int]
    metadata: dict[str, Any]  # lm-eval TaskManager metadata, read by the task builders (harness_tasks)
    max_length: int
    include_path: str
    task_manager: Any
    samples: dict[str, list[int]] | None  # doc indices per task for --limit
    data_dir: Path | None
    variant: str  # the user's label plus every departure from the paper's protocol ("" when none)
    stages: dict[str, str | None]


def _check_request(request: EvalRequest) -> None:
    if request.limit is not None and request.limit <= 0:
        raise UserInputError(f"--limit must be a positive number of samples, got {request.limit}")
    if request.batch_size < 1:
        raise UserInputError(f"--batch-size must be >= 1, got {request.batch_size}")
    if request.max_length is not None and request.max_length <= 0:
        raise UserInputError(f"--max-length must be a positive number of tokens, got {request.max_length}")
    scorers.check_scoring(request.scoring)
    niah.check_convention(request.niah_length_convention)
    for flag, files in (("--ruler-qa-file", request.ruler_qa_files), ("--longbench-file", request.longbench_files)):
        for path in files:
            if not Path(path).is_file():
                raise UserInputError(f"{flag} {path} does not exist")
    ttt_stage = (request.stages or {}).get("ttt")
    if request.ttt is not None and ttt_stage not in (None, request.ttt.arm):
        raise UserInputError(f"test-time training arm {request.ttt.arm} differs from stages['ttt'] = {ttt_stage}")
    if ttt_stage and request.ttt is None and request.lm is None:
        raise UserInputError(f"test-time training (ttt={ttt_stage}) needs an adapter; use "
                             f"`refine-bench eval --ttt-arm {ttt_stage}`")


def _lengths(request: EvalRequest) -> list[int]:
    if request.lengths is not None and any(int(n) <= 0 for n in request.lengths):
        raise UserInputError(f"--lengths must be positive integers, got {list(request.lengths)}")
    return harness_tasks.parse_lengths(list(request.lengths) if request.lengths else None)


def _max_length(request: EvalRequest, groups: set[str], lengths: list[int]) -> int:
    if request.max_length is not None:
        return int(request.max_length)
    budget = max(lengths) if "niah" in groups else SHORT_CONTEXT_MAX_LENGTH
    if groups & {"longbench", "ruler_qa"}:
        budget = max(budget, LONG_CONTEXT_MAX_LENGTH)
    return budget


def _needs_data_folder(leaves: Sequence[str], request: EvalRequest) -> bool:
    """RULER QA without its own files and the paper's LongBench tasks read the data folder; so does TREC's class
    list for a LongBench file (resolved lazily then). NIAH never does."""
    for task in leaves:
        if task in RULER_QA_TASKS and not request.ruler_qa_files:
            return True
        if task_group(task) == "longbench" and task != harness_tasks.LONGBENCH_FILE_TASK:
            return True
    return False


def _ruler_qa_files(leaves: Sequence[str], meta: dict[str, Any]) -> tuple[list[str], bool]:
    """The data-folder RULER QA files the plan's tasks read, and whether any was built for another model family."""
    files: list[str] = []
    for task in leaves:
        if task in RULER_QA_TASKS:
            files.extend(harness_tasks.ruler_qa_sources(task.removeprefix("ruler_qa_"), meta))
    family = harness_tasks.ruler_qa_family(meta)
    return list(dict.fromkeys(files)), any(data.is_foreign_ruler_file(f, family) for f in files)


def _sample_indices(leaves: Sequence[str], limit: int, meta: dict[str, Any]) -> dict[str, list[int]]:
    """`limit` docs per task and per length (multi-length tasks interleave their lengths), capped at the
    number of docs a task has."""
    out = {}
    for task in leaves:
        want = limit * harness_tasks.docs_per_length(task, meta)
        have = harness_tasks.doc_count(task, meta)
        out[task] = list(range(min(want, have) if have is not None else want))
    return out


def _variant(request: EvalRequest, foreign_ruler_file: bool) -> str:
    parts = [request.variant] if request.variant else []
    if request.scoring != scorers.PAPER:
        parts.append(f"scoring={request.scoring}")
    if request.niah_length_convention != niah.EXACT:
        parts.append(f"niah_length={request.niah_length_convention}")
    if foreign_ruler_file:
        parts.append("ruler_qa_file=foreign")
    if request.ttt is not None and request.ttt.departures:
        parts.append(request.ttt.departures)
    return ",".join(parts)


def make_plan(request: EvalRequest) -> EvalPlan:
    """Check `request` and settle everything the evaluation needs (see the module docstring)."""
    _check_request(request)
    include = str(request.include_path or tasks_dir())
    lengths = _lengths(request)
    requested = expand_tasks(request.tasks)
    if request.longbench_files and harness_tasks.LONGBENCH_FILE_TASK not in requested:
        requested.append(harness_tasks.LONGBENCH_FILE_TASK)
    own = task_manager(include)
    check_own_families(requested, own, include)
    if harness_tasks.LONGBENCH_FILE_TASK in requested and not request.longbench_files:
        raise UserInputError("longbench_file evaluates the files given with --longbench-file PATH[,PATH]")
    builtin = any(n not in own.all_tasks for n in requested)
    index = task_manager(include, builtin=True) if builtin else own
    names = resolve_tasks(requested, index, include)
    leaves = [leaf for n in names for leaf in leaf_tasks(index, n)]
    groups = {task_group(t) for t in leaves}
    stages = {**(request.stages or {})}
    if request.ttt is not None:
        stages["ttt"] = request.ttt.arm
    if stages.get("ttt") and "sanity" in groups:
        raise UserInputError("test-time training applies to generation tasks; evaluate the sanity suite without "
                             "--ttt-arm")

    meta: dict[str, Any] = {"pretrained": request.model, "max_seq_lengths": lengths, "seed": request.seed,
                            "scoring": request.scoring, "niah_length_convention": request.niah_length_convention,
                            "allow_foreign_ruler_file": bool(request.allow_foreign_ruler_file)}
    if request.checkpoint:
        meta["checkpoint"] = str(request.checkpoint)
    if request.limit:
        meta["num_samples"] = request.limit
    data_dir = None
    if _needs_data_folder(leaves, request):
        data_dir = data.resolve_data_dir(request.data_dir)
        meta["data_dir"] = str(data_dir)
    elif request.data_dir is not None:
        if harness_tasks.LONGBENCH_FILE_TASK in leaves and Path(request.data_dir).is_dir():
            meta["data_dir"] = str(request.data_dir)  # for TREC's class list, should a file hold trec rows
        else:
            log.info("--data-dir %s is not used by these tasks", request.data_dir)
    if request.longbench_files:
        meta["longbench_paths"] = [str(p) for p in request.longbench_files]
    foreign = False
    if request.ruler_qa_files:
        meta["ruler_qa_paths"] = [str(p) for p in request.ruler_qa_files]
    elif groups & {"ruler_qa"}:
        files, foreign = _ruler_qa_files(leaves, meta)
        meta["ruler_qa_paths"] = files  # settled once here (with its warnings); the builders read these
    return EvalPlan(
        tasks=names, leaves=leaves, lengths=lengths, metadata=meta,
        max_length=_max_length(request, groups, lengths), include_path=include,
        task_manager=task_manager(include, builtin=builtin, metadata=meta),
        samples=_sample_indices(leaves, request.limit, meta) if request.limit else None,
        data_dir=data_dir, variant=_variant(request, foreign), stages=stages,
    )
