"""End to end through lm-eval with the tiny model: scores equal re-scoring the saved outputs."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from refine_bench.errors import UserInputError
from refine_bench.eval import scorers
from refine_bench.eval.data import resolve_data_dir
from refine_bench.eval.runner import run_eval

RULER_4K_NAME = "ruler_squadqa_delta_net_4096_200_test.parquet"
TASKS = ["niah_single_1", "niah_multiquery", "ruler_qa_squad", "longbench_trec", "longbench_hotpotqa",
         "longbench_lcc"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    try:
        ruler_4k = resolve_data_dir() / "ruler_qa" / RULER_4K_NAME
    except UserInputError:
        pytest.skip("evaluation data folder not present")
    out = tmp_path_factory.mktemp("runs")
    path = run_eval("deltanet-tiny", TASKS, lengths=[512, 1024], limit=2, output=out, batch_size=2, device="cpu",
                    ruler_qa_files=[str(ruler_4k)], max_length=1024, seed=3)
    assert path is not None
    return path


def _samples(run: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (run / "lm_eval" / f"samples_{task}.jsonl").read_text().splitlines()]


def _rescore(task: str, doc: dict, pred: str) -> float:
    if task.startswith("niah"):
        return scorers.ruler_recall(pred, doc["outputs"])
    if task.startswith("ruler_qa"):
        return scorers.ruler_qa_score(pred, doc["answers"])
    return scorers.longbench_score(doc["task"], pred, doc["answers"], doc["all_classes"] or None, scoring="paper")


def test_scores_equal_rescoring_saved_outputs(run_dir):
    rows = [json.loads(line) for line in (run_dir / "scores.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "lm_eval" / "results.json").read_text())["results"]
    for task in TASKS:
        samples = _samples(run_dir, task)
        by_length: dict = {}
        for s in samples:
            metric = "recall" if task.startswith("niah") else "score"
            value = _rescore(task, s["doc"], s["filtered_resps"][0])
            assert s[metric] == value
            by_length.setdefault(s["doc"].get("length"), []).append(value)
        task_rows = [r for r in rows if r["task"] == task]
        if task.startswith("longbench"):
            assert len(samples) == 2 and len(task_rows) == 1 and task_rows[0]["length"] is None
            assert task_rows[0]["value"] == pytest.approx(sum(by_length[None]) / 2)
            assert results[task]["score,none"] == pytest.approx(task_rows[0]["value"])
        else:
            lengths = [512, 1024] if task.startswith("niah") else [4096]
            assert sorted(by_length) == lengths and all(len(v) == 2 for v in by_length.values())
            for r in task_rows:
                assert r["value"] == pytest.approx(sum(by_length[r["length"]]) / 2) and r["n"] == 2


def test_prompts_reach_the_model_unchanged_and_record_is_complete(run_dir):
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "ok" and meta["kind"] == "eval" and meta["arm"] == "base"
    assert meta["config"]["scoring"] == "paper" and meta["config"]["variant"] is None
    files = {Path(f["path"]).name: f for f in meta["config"]["data_files"]}  # every file read, with its SHA-256
    assert set(files) == {RULER_4K_NAME, "trec_16384.parquet", "hotpotqa_16384.parquet", "lcc_16384.parquet",
                          "trec_classes.json", "essays.txt"}  # niah_multiquery's essay haystack
    for f in files.values():
        assert f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
    for s in _samples(run_dir, "niah_single_1"):
        assert s["arguments"][0][0] == s["doc"]["prompt"]
        assert s["arguments"][0][1]["max_gen_toks"] == 128
    depth = [json.loads(line) for line in (run_dir / "niah_depths.jsonl").read_text().splitlines()]
    assert len(depth) == 2 * 2 * 1 + 2 * 2 * 4  # single: 1 answer, multiquery: 4 answers per sample
    assert {r["task"] for r in depth} == {"niah_single_1", "niah_multiquery"}
    multi = [r for r in depth if r["task"] == "niah_multiquery"]
    recall = {s["doc_id"]: s["recall"] for s in _samples(run_dir, "niah_multiquery")}
    assert sum(r["score"] for r in multi) / len(multi) == pytest.approx(sum(recall.values()) / len(recall))


LOCAL_TASKS = """\
task: local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
LOCAL_ROLLING = """\
task: local_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""


def test_loglikelihood_and_rolling_on_local_jsonl(tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from refine_bench.eval.lm import RefineBenchLM

    rows = [{"question": "The sky is", "choices": [" blue", " green cheese"], "label": 0,
             "text": "The grass is green. The sky is blue."},
            {"question": "Two plus two is", "choices": [" four", " five"], "label": 0,
             "text": "Here we go. There and back again, and again."}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "local_choice.yaml").write_text(LOCAL_TASKS.format(data=data))
    (tmp_path / "local_rolling.yaml").write_text(LOCAL_ROLLING.format(data=data))
    lm = RefineBenchLM(pretrained="deltanet-tiny", device="cpu", batch_size=2, max_length=64)
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    res = simple_evaluate(model=lm, tasks=["local_choice", "local_rolling"], task_manager=tm, log_samples=True,
                          bootstrap_iters=0)
    tok, model = lm.tokenizer, lm.model

    def logprob(context_ids: list[int], cont_ids: list[int]) -> float:
        ids = torch.tensor([context_ids + cont_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        return sum(logp[len(context_ids) - 1 + i, t].item() for i, t in enumerate(cont_ids))

    for s in res["samples"]["local_choice"]:
        q = s["doc"]["question"]
        for (ctx, cont), resp in zip(s["arguments"], s["resps"], strict=True):
            whole = tok.encode(ctx + cont, add_special_tokens=False)
            ctx_ids = tok.encode(ctx, add_special_tokens=False)
            assert ctx == q
            assert resp[0][0] == pytest.approx(logprob(ctx_ids, whole[len(ctx_ids):]), abs=1e-4)
    for s in res["samples"]["local_rolling"]:
        ids = tok.encode(s["doc"]["text"], add_special_tokens=False)
        expected = logprob([tok.bos_token_id], ids)  # one window: the prefix token, then every text token
        assert s["resps"][0][0] == pytest.approx(expected, abs=1e-4)
        assert math.isfinite(expected)


def test_chunked_prefill_decoding_equals_generate():
    from refine_bench.eval.chunked_generation import greedy_generate
    from refine_bench.models.zoo import load_model

    model = load_model("deltanet-tiny")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (3, 150), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, :37], mask[1, :37] = 2, 0  # left padding
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=2)
    for chunk in (7, 64, 1000):
        got = greedy_generate(model, ids, mask, 10, chunk_size=chunk, eos_token_id=2, pad_token_id=2)
        assert torch.equal(got, ref)


def test_lm_long_prompt_path_matches_plain_generate():
    from lm_eval.api.instance import Instance

    from refine_bench.eval.lm import RefineBenchLM
    from refine_bench.eval.niah import make_sample

    chunked = RefineBenchLM(pretrained="deltanet-tiny", device="cpu", batch_size=2, max_length=1024, prefill_chunk=100)
    plain = RefineBenchLM(pretrained="deltanet-tiny", device="cpu", batch_size=2, max_length=1024, prefill_chunk=0)
    docs = [make_sample("niah_single_1", n, 0, chunked.tokenizer) for n in (600, 1024)]
    reqs = [Instance(request_type="generate_until", doc=d, idx=0,
                     arguments=(d["prompt"], {"until": ["\n\n"], "max_gen_toks": 16, "do_sample": False}))
            for d in docs]
    assert chunked.generate_until(reqs, disable_tqdm=True) == plain.generate_until(reqs, disable_tqdm=True)


def test_ttt_without_an_adapter_is_a_clear_error(tmp_path):
    from refine_bench.eval.lm import RefineBenchLM

    with pytest.raises(UserInputError, match="refine-bench eval --ttt-arm refine"):
        RefineBenchLM(pretrained="deltanet-tiny", ttt="refine")
    with pytest.raises(UserInputError, match="needs an adapter"):
        run_eval("deltanet-tiny", ["niah_single_1"], stages={"ttt": "sft"}, output=tmp_path)
    assert not any(tmp_path.iterdir())  # no run record for a refused run


# ----------------------------------------------------------------------------------------- resume, hygiene


NIAH_RUN = dict(lengths=[512], limit=5, batch_size=1, device="cpu", max_length=512, seed=1)


def _logged(run: Path, task: str) -> list[tuple]:
    return [(s["doc_id"], s["filtered_resps"][0], s.get("recall", s.get("score"))) for s in _samples(run, task)]


def test_killed_run_resumes_from_the_answered_requests(tmp_path, monkeypatch, caplog):
    from refine_bench.eval.lm import RefineBenchLM
    from refine_bench.eval.quiet import CHATTER

    generate = RefineBenchLM._model_generate
    calls: list[int] = []

    def counting(self, context, *args, **kwargs):
        calls.append(int(context.shape[0]))
        return generate(self, context, *args, **kwargs)

    monkeypatch.setattr(RefineBenchLM, "_model_generate", counting)
    reference = run_eval("deltanet-tiny", ["niah_single_1"], output=tmp_path / "reference", **NIAH_RUN)
    assert len(calls) == 5
    assert not any(text in caplog.text for text in CHATTER)  # lm-eval's per-task chatter is silenced

    def killed_after_two(self, context, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the process were killed while answering the third request
        return counting(self, context, *args, **kwargs)

    out = tmp_path / "runs"
    calls.clear()
    monkeypatch.setattr(RefineBenchLM, "_model_generate", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_eval("deltanet-tiny", ["niah_single_1"], output=out, **NIAH_RUN)
    assert [p.name for p in out.iterdir()] == [".eval-cache"]  # a failed evaluation leaves no run folder

    calls.clear()
    monkeypatch.setattr(RefineBenchLM, "_model_generate", counting)
    resumed = run_eval("deltanet-tiny", ["niah_single_1"], output=out, **NIAH_RUN)
    assert len(calls) == 3  # only the three unanswered requests reach the model
    meta = json.loads((resumed / "run.json").read_text())
    assert {k: meta["config"]["resume"][k] for k in ("reused", "computed")} == {"reused": 2, "computed": 3}
    assert _logged(resumed, "niah_single_1") == _logged(reference, "niah_single_1")
    assert (resumed / "scores.jsonl").read_text() == (reference / "scores.jsonl").read_text()

    calls.clear()
    again = run_eval("deltanet-tiny", ["niah_single_1"], output=out, resume=False, **NIAH_RUN)
    assert len(calls) == 5 and json.loads((again / "run.json").read_text())["config"]["resume"]["reused"] == 0


def test_niah_only_runs_need_no_data_folder(tmp_path):
    from refine_bench.eval.plan import EvalRequest, make_plan

    plan = make_plan(EvalRequest("deltanet-tiny", ["niah_single_1"], data_dir=tmp_path / "missing", lengths=[512]))
    assert plan.data_dir is None and "data_dir" not in plan.metadata
    with pytest.raises(UserInputError, match="--data-dir"):
        make_plan(EvalRequest("deltanet-tiny", ["ruler_qa_squad"], data_dir=tmp_path / "missing"))


def test_bad_requests_name_their_flags(tmp_path):
    from refine_bench.eval.plan import EvalRequest, make_plan

    for options, message in (({"limit": 0}, "--limit"), ({"lengths": [0]}, "--lengths"),
                             ({"scoring": "exact"}, "unknown scoring"),
                             ({"niah_length_convention": "ruler"}, "length convention"),
                             ({"ruler_qa_files": [str(tmp_path / "x.parquet")]}, "--ruler-qa-file"),
                             ({"tasks": ["longbench_musique"]}, "--longbench-file PATH"),
                             ({"tasks": ["niah_single_9"]}, "niah tasks are niah_multikey_1")):
        with pytest.raises(UserInputError, match=message):
            make_plan(EvalRequest("deltanet-tiny", **{"tasks": ["niah_single_1"], **options}))


def test_cli_unknown_longbench_dataset_is_one_line_exit_2(tmp_path, capsys):
    from refine_bench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", "deltanet-tiny", "--tasks", "longbench_musique", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "unknown task longbench_musique" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_ruler_qa_file_of_another_family_only_with_the_flag():
    from refine_bench.eval.plan import EvalRequest, make_plan

    try:
        folder = resolve_data_dir() / "ruler_qa"
    except UserInputError:
        pytest.skip("evaluation data folder not present")
    # deltanet-tiny reads the delta_net files; 8192 exists only for LaCT
    with pytest.raises(UserInputError, match="--allow-foreign-ruler-file"):
        make_plan(EvalRequest("deltanet-tiny", ["ruler_qa_squad"], lengths=[8192]))
    plan = make_plan(EvalRequest("deltanet-tiny", ["ruler_qa_squad"], lengths=[4096, 8192]))
    assert plan.metadata["ruler_qa_paths"] == [str(folder / RULER_4K_NAME)] and plan.variant == ""
    plan = make_plan(EvalRequest("deltanet-tiny", ["ruler_qa_squad"], lengths=[4096, 8192],
                                 allow_foreign_ruler_file=True))
    assert [Path(p).name for p in plan.metadata["ruler_qa_paths"]] == [
        RULER_4K_NAME, "ruler_squadqa_lact_8192_200_test.parquet"]
    assert plan.variant == "ruler_qa_file=foreign"


def test_longbench_file_end_to_end(tmp_path):
    rows = [{"prompt": "Passage: Ada lives in Paris.\nQuestion: where does Ada live?\nAnswer:", "answers": ["Paris"],
             "max_gen_tokens": 8, "task": "musique"},
            {"prompt": "Report: the grass is green.\nSummary:", "answers": ["green grass"], "max_gen_tokens": 12,
             "task": "gov_report"},
            {"prompt": "Passage: Bo lives in Rome.\nQuestion: where does Bo live?\nAnswer:", "answers": ["Rome"],
             "max_gen_tokens": 8, "task": "musique"}]
    path = tmp_path / "lb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = run_eval("deltanet-tiny", [""], longbench_files=[str(path)], data_dir=tmp_path / "missing",
                   scoring="longbench", output=tmp_path / "runs", device="cpu", max_length=256)
    samples = _samples(run, "longbench_file")
    assert [s["arguments"][0][1]["max_gen_toks"] for s in samples] == [8, 12, 8]
    for s in samples:
        assert s["score"] == scorers.longbench_score(s["doc"]["task"], s["filtered_resps"][0], s["doc"]["answers"],
                                                     scoring="longbench")
    scores = {r["task"]: r for r in map(json.loads, (run / "scores.jsonl").read_text().splitlines())}
    assert set(scores) == {"longbench_file_musique", "longbench_file_gov_report"}
    assert scores["longbench_file_musique"]["n"] == 2 and scores["longbench_file_musique"]["group"] == "longbench"
    meta = json.loads((run / "run.json").read_text())
    assert meta["config"]["variant"] == "scoring=longbench"
    assert [f["path"] for f in meta["config"]["data_files"]] == [str(path.resolve())]
