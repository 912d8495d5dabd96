"""The tasks/ folder registers every task and group with lm-eval, and bad names are clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from refine_bench.errors import UserInputError
from refine_bench.eval.task_catalog import leaf_tasks, resolve_tasks, tasks_dir
from refine_bench.protocol import LONGBENCH, TASKS_BY_GROUP

GROUPS = {group: sorted(tasks) for group, tasks in TASKS_BY_GROUP.items()}


@pytest.fixture(scope="module")
def tm():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir()), include_defaults=False)


def test_groups_and_tasks_registered(tm):
    for group, members in GROUPS.items():
        assert group in tm.all_groups
        assert sorted(leaf_tasks(tm, group)) == members
        for task in members:
            assert task in tm.all_subtasks
            assert str(tasks_dir()) in str(tm.task_index[task].yaml_path)
    assert sorted(leaf_tasks(tm, "refine_paper")) == sorted(sum(GROUPS.values(), []))


def test_longbench_generation_lengths_match_protocol(tm):
    for task in LONGBENCH:
        cfg = tm.task_index[task.task].cfg
        assert cfg["generation_kwargs"]["max_gen_toks"] == task.max_new_tokens
        assert cfg["generation_kwargs"]["do_sample"] is False


def test_unknown_task_lists_available(tm):
    with pytest.raises(UserInputError, match="available:.*niah_single_1.*sanity"):
        resolve_tasks(["niah,not_a_task"], tm)
    assert resolve_tasks(["niah, longbench_trec"], tm) == ["niah", "longbench_trec"]


def test_cli_unknown_task_exits_2(tmp_path, capsys):
    from refine_bench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", "deltanet-tiny", "--tasks", "bogus", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown task(s) bogus" in err and "niah_multikey_3" in err
    assert not any(tmp_path.iterdir())


def test_lm_eval_validate_is_clean():
    names = ",".join(["niah", "ruler_qa", "longbench", "refine_paper", "longbench_file", *sum(GROUPS.values(), [])])
    proc = subprocess.run([sys.executable, "-m", "refine_bench.lm_eval", "validate", "--tasks", names],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "All tasks found and valid" in proc.stdout
