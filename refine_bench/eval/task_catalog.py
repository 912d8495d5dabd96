"""The task folder (`tasks/`, lm-eval's include_path) and the names in it: groups, leaf tasks, the sanity suite,
and the checks that turn a bad task name into a one-line error."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.eval.data import checkout_root
from refine_bench.protocol import SANITY_TASKS, TASK_GROUPS, group_of

SANITY = "sanity"


def tasks_dir() -> Path:
    """The lm-eval include_path shipped with the checkout (`tasks/` at the repository root)."""
    folder = checkout_root() / "tasks"
    if not folder.is_dir():
        raise UserInputError(f"task folder {folder} not found; pass --include-path pointing at refine-bench's tasks/")
    return folder


def task_manager(include_path: str | Path | None = None, *, builtin: bool = False,
                 metadata: dict[str, Any] | None = None) -> Any:
    """An lm-eval TaskManager over our task folder (plus lm-eval's own tasks with `builtin`)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_path or tasks_dir()), include_defaults=builtin, metadata=metadata)


def own_task_names(include_path: str | Path | None = None) -> dict[str, list[str]]:
    """Our groups and their leaf tasks, read from the YAML index (nothing is built)."""
    tm = task_manager(include_path)
    return {name: leaf_tasks(tm, name) for name in tm.all_groups}


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
                names.extend(SANITY_TASKS if name == SANITY else [name])
    return list(dict.fromkeys(names))


def _own_names(tm: Any, include_path: str | Path | None) -> list[str]:
    folder = str(Path(include_path or tasks_dir()).resolve())
    return sorted(n for n, e in tm.task_index.items()
                  if e.yaml_path and folder in str(Path(e.yaml_path).resolve()) and n != SANITY)


def check_own_families(names: Sequence[str], own: Any, include_path: str | Path | None = None) -> None:
    """A name in one of our task families (niah_*, ruler_qa_*, longbench_*) that is not one of our tasks is a
    mistake, not a request for lm-eval's task of that name (which would download data or need extra packages)."""
    for name in names:
        family = group_of(name)
        if family in TASK_GROUPS and name not in own.all_tasks:
            ours = [n for n in _own_names(own, include_path) if group_of(n) == family]
            hint = (" (another LongBench dataset in a LongBench-schema file: --longbench-file PATH)"
                    if family == "longbench" else "")
            raise UserInputError(f"unknown task {name}; refine-bench's {family} tasks are {', '.join(ours)}{hint}")


def resolve_tasks(requested: Sequence[str], tm: Any, include_path: str | Path | None = None) -> list[str]:
    """Expand `sanity`, check every name, and raise a UserInputError listing what exists."""
    names = expand_tasks(requested)
    if not names:
        raise UserInputError("no tasks given; e.g. --tasks niah,ruler_qa,longbench")
    unknown = [n for n in names if n not in set(tm.all_tasks)]
    if unknown:
        raise UserInputError(
            f"unknown task(s) {', '.join(unknown)}; available: {', '.join(_own_names(tm, include_path))}, "
            f"{SANITY} (= {', '.join(SANITY_TASKS)}), or any lm-eval task name"
        )
    return names


def task_group(task: str) -> str:
    """The group of a leaf task in score rows: a paper group, `sanity`, or `other`."""
    group = group_of(task)
    if group is not None:
        return group  # incl. longbench_file
    return SANITY if task in SANITY_TASKS else "other"
