"""NIAH generator: exact token lengths ending on whole sentences, needles where asked, determinism, the lm-eval
length convention; data-loader errors, the data-file record, RULER QA file families, `longbench_file`."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from refine_bench.errors import UserInputError
from refine_bench.eval import data, harness_tasks, niah
from refine_bench.fileio import file_sha256
from refine_bench.models.tokenizer import load_tiny_tokenizer
from refine_bench.protocol import NIAH_TASKS


@pytest.fixture(scope="module")
def tok():
    return load_tiny_tokenizer()


def _count(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _haystack(prompt: str) -> str:
    """The context between the instruction line and the question."""
    return prompt[prompt.index("\n") + 1 : prompt.rindex("\nWhat ")]


def test_specs_cover_the_protocol_tasks():
    assert tuple(niah.NIAH_SPECS) == NIAH_TASKS


@pytest.mark.parametrize("task", NIAH_TASKS)
@pytest.mark.parametrize("length", [512, 2048])
def test_length_and_sentence_boundary_and_needles(tok, task, length):
    for index in range(2):
        s = niah.make_sample(task, length, index, tok)
        tokens = _count(tok, s["prompt"])
        assert tokens == s["prompt_tokens"] and tokens + niah.TOKENS_TO_GENERATE <= length
        if length == 2048 and task != "niah_multikey_3":  # whole sentences reach the exact length
            assert tokens + niah.TOKENS_TO_GENERATE == length
        assert re.search(r"[.!?]$", _haystack(s["prompt"])), "the haystack ends on a sentence boundary"
        spec = niah.NIAH_SPECS[task]
        assert len(s["outputs"]) == spec.num_queries * spec.num_values
        for value in s["outputs"]:
            assert f"is: {value}." in s["prompt"]
        assert s["prompt"].endswith("mentioned in the provided text " + ("is" if len(s["outputs"]) == 1 else "are"))


def test_exact_at_paper_lengths_for_every_task(tok):
    # long distractor needles (uuids: ~90 tiny-tokenizer tokens each) are exact once the haystack has ~20 of them
    for task in NIAH_TASKS:
        s = niah.make_sample(task, 4096, 3, tok)
        assert _count(tok, s["prompt"]) + niah.TOKENS_TO_GENERATE == 4096
        assert re.search(r"[.!?]$", _haystack(s["prompt"]))


def test_closest_subsequence_picks_the_earliest_exact_sum():
    assert niah._closest_subsequence([5, 7, 3, 4], 7) == [1]  # earliest items that make 7: [7] before [3, 4]
    assert niah._closest_subsequence([5, 7, 3, 4], 9) == [0, 3]
    assert niah._closest_subsequence([5, 7], 4) == []  # nothing fits
    assert niah._closest_subsequence([5, 7], 11) == [1]  # sums 0, 5, 7, 12: the closest below 11 is 7


def test_lm_eval_convention_grows_the_haystack_in_lm_evals_steps(tok):
    # noise at 4096: 25-line steps; the prompt fits, and one more step would not
    s = niah.make_sample("niah_single_1", 4096, 0, tok, convention="lm-eval")
    exact = niah.make_sample("niah_single_1", 4096, 0, tok)
    lines = _haystack(s["prompt"]).count(niah.NOISE_UNIT)
    assert lines % niah.LM_EVAL_LINE_STEP == 0 and lines > 0
    line_tokens = _count(tok, "\n" + niah.NOISE_UNIT)
    assert 0 <= (4096 - niah.TOKENS_TO_GENERATE) - s["prompt_tokens"] < niah.LM_EVAL_LINE_STEP * line_tokens
    assert s["prompt_tokens"] == _count(tok, s["prompt"]) < exact["prompt_tokens"]
    essay = niah.make_sample("niah_single_2", 4096, 0, tok, convention="lm-eval")
    assert re.search(r"[.!?]$", _haystack(essay["prompt"]))
    words = len(_haystack(essay["prompt"]).split()) - len(niah.NEEDLE.split())
    assert words <= 500 * (4096 // 500)  # whole sentences within a multiple of 500 words
    with pytest.raises(UserInputError, match="length convention"):
        niah.make_sample("niah_single_1", 4096, 0, tok, convention="ruler")


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
    assert harness_tasks.niah_process_results(doc, [pred]) == {"recall": 0.5}


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


def test_longbench_file_task_reads_any_schema_file_with_each_rows_budget(tmp_path):
    from refine_bench.eval.task_catalog import task_manager

    rows = [{"prompt": "Q: where? A:", "answers": ["Paris"], "max_gen_tokens": 32, "task": "musique"},
            {"prompt": "Q: who? A:", "answers": ["Ada"], "max_gen_tokens": 32, "task": "musique"},
            {"prompt": "Summarise: x", "answers": ["a summary"], "max_gen_tokens": 512, "task": "gov_report"}]
    first, second = tmp_path / "lb1.jsonl", tmp_path / "lb2.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]), encoding="utf-8")
    second.write_text(json.dumps(rows[2]) + "\n", encoding="utf-8")
    tm = task_manager(metadata={"longbench_paths": [str(first), str(second)], "scoring": "longbench"})
    task = tm.load(["longbench_file"])["tasks"]["longbench_file"]
    docs = list(task.test_docs())
    assert [d["task"] for d in docs] == ["musique", "gov_report", "musique"]  # interleaved across datasets
    assert {d["scoring"] for d in docs} == {"longbench"}
    task.build_all_requests(limit=None, rank=0, world_size=1)
    budgets = {inst.doc["prompt"]: inst.arguments[1]["max_gen_toks"] for inst in task.instances}
    assert budgets == {r["prompt"]: r["max_gen_tokens"] for r in rows}  # each row's own max_gen_tokens
    assert harness_tasks.longbench_process_results(docs[0], ["\nParis"]) == {"score": 1.0}  # longbench scoring
    assert harness_tasks.longbench_process_results({**docs[0], "scoring": "paper"}, ["\nParis"]) == {"score": 0.0}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "task": "nosuch"}) + "\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="no LongBench metric for task 'nosuch'; supported tasks"):
        harness_tasks.longbench_file(longbench_paths=[str(bad)])


def _ruler_folder(tmp_path, names: list[str]):
    folder = tmp_path / "ruler_qa"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
    return tmp_path


def test_ruler_qa_uses_another_familys_file_only_when_allowed(tmp_path, caplog):
    root = _ruler_folder(tmp_path, ["ruler_squadqa_delta_net_4096_200_test.parquet",
                                    "ruler_squadqa_lact_8192_200_test.parquet"])
    # 8192 exists only for LaCT: skipped (with a warning naming the flag), 4096 kept
    assert data.ruler_qa_files("squad", [4096, 8192], "delta_net", root) == {
        4096: root / "ruler_qa" / "ruler_squadqa_delta_net_4096_200_test.parquet"}
    assert "--allow-foreign-ruler-file" in caplog.text
    with pytest.raises(UserInputError, match="--allow-foreign-ruler-file"):
        data.ruler_qa_files("squad", [8192], "delta_net", root)
    used = data.ruler_qa_files("squad", [8192], "delta_net", root, allow_foreign=True)
    assert used == {8192: root / "ruler_qa" / "ruler_squadqa_lact_8192_200_test.parquet"}
    assert data.is_foreign_ruler_file(used[8192], "delta_net") and not data.is_foreign_ruler_file(used[8192], "lact")


def test_recording_lists_the_files_read(tmp_path):
    path = tmp_path / "lb.jsonl"
    path.write_text(json.dumps({"prompt": "p", "answers": ["a"], "max_gen_tokens": 8, "task": "hotpotqa"}) + "\n")
    data.load_longbench(path)  # outside a recording: not collected
    with data.recording() as seen:
        data.load_longbench(path)
    assert seen == {path.resolve()}
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
