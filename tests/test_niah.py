"""NIAH generator: exact token lengths, needles where asked, determinism; data-loader errors."""

from __future__ import annotations

import json

import pytest

from refine_bench.errors import UserInputError
from refine_bench.eval import data, harness_tasks, niah
from refine_bench.models.tokenizer import load_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tiny_tokenizer()


def _count(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("task", sorted(niah.NIAH_TASKS))
@pytest.mark.parametrize("length", [512, 2048])
def test_exact_length_and_needles_present(tok, task, length):
    for index in range(2):
        s = niah.make_sample(task, length, index, tok)
        assert _count(tok, s["prompt"]) + niah.TOKENS_TO_GENERATE == length
        spec = niah.NIAH_TASKS[task]
        assert len(s["outputs"]) == spec.num_queries * spec.num_values
        for value in s["outputs"]:
            assert f"is: {value}." in s["prompt"]
        assert s["prompt"].endswith("mentioned in the provided text " + ("is" if len(s["outputs"]) == 1 else "are"))


@pytest.mark.parametrize("task", ["niah_single_1", "niah_single_2"])
def test_needle_at_requested_depth(tok, task):
    for index in range(len(niah.DEPTH_GRID)):
        s = niah.make_sample(task, 4096, index, tok)
        assert s["depth"] == niah.DEPTH_GRID[index]
        # the needle sits at the sentence boundary nearest the depth (a sentence is < 4% of a 4K context)
        assert s["needle_positions"][0] == pytest.approx(s["depth"], abs=0.04)


def test_deterministic_per_seed_and_independent_of_count(tok):
    a = niah.make_sample("niah_multikey_2", 1024, 3, tok, seed=7)
    b = niah.generate_samples("niah_multikey_2", tok, lengths=[512, 1024], num_samples=4, seed=7)
    assert b[7] == a  # sample 3 at the second length, interleaved order
    assert [d["length"] for d in b[:4]] == [512, 1024, 512, 1024]
    c = niah.make_sample("niah_multikey_2", 1024, 3, tok, seed=8)
    assert c["prompt"] != a["prompt"]


def test_too_short_length_is_a_clear_error(tok):
    with pytest.raises(UserInputError, match="raise the length"):
        niah.make_sample("niah_single_1", 200, 0, tok)


def test_depth_rows_one_per_answer(tok):
    doc = niah.make_sample("niah_multivalue", 1024, 0, tok)
    pred = f"{doc['outputs'][0]} and {doc['outputs'][2]}"
    rows = harness_tasks.niah_depth_rows("niah_multivalue", doc, pred)
    assert [r["score"] for r in rows] == [1, 0, 1, 0]
    assert [r["depth"] for r in rows] == doc["needle_depths"]
    assert harness_tasks.niah_process_results(doc, [pred]) == {"recall": 0.5, "recall_1024": 0.5}


def test_loader_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(UserInputError, match="nope.parquet"):
        data.load_longbench(missing)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(UserInputError, match="bad.parquet"):
        data.load_longbench(bad)
    cols = tmp_path / "cols.jsonl"
    cols.write_text('{"prompt": "p", "answers": ["a"]}\n', encoding="utf-8")
    with pytest.raises(UserInputError, match="lacks column"):
        data.load_longbench(cols)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "p", "answers": [""], "max_gen_tokens": 8, "task": "hotpotqa"}\n', encoding="utf-8")
    with pytest.raises(UserInputError, match="empty"):
        data.load_longbench(empty)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "caf\xe9", "answers": ["a"], "max_gen_tokens": 8, "task": "hotpotqa"}\n')
    with pytest.raises(UserInputError, match="UTF-8"):
        data.load_longbench(latin)


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    assert data.resolve_data_dir() == tmp_path
    with pytest.raises(UserInputError, match="--data-dir"):
        data.resolve_data_dir(tmp_path / "missing")
    assert data.model_family("lact-760m") == "lact" and data.model_family("deltanet-tiny") == "delta_net"


def test_longbench_file_task_reads_any_schema_file(tmp_path):
    from lm_eval.tasks import TaskManager

    from refine_bench.eval.runner import tasks_dir

    rows = [{"prompt": "Q: where? A:", "answers": ["Paris"], "max_gen_tokens": 32, "task": "musique"},
            {"prompt": "Count: ", "answers": ["4"], "max_gen_tokens": 32, "task": "passage_count"}]
    path = tmp_path / "lb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False, metadata={"longbench_path": str(path)})
    task = tm.load(["longbench_file"])["tasks"]["longbench_file"]
    docs = list(task.test_docs())
    assert [d["task"] for d in docs] == ["musique", "passage_count"]
    assert harness_tasks.longbench_process_results(docs[0], ["Paris\nRome"]) == {"score": 1.0}
    assert harness_tasks.longbench_process_results(docs[1], ["4 or 5"]) == {"score": 0.5}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "task": "nosuch"}) + "\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="no LongBench metric"):
        harness_tasks.longbench_file(longbench_path=str(bad))
