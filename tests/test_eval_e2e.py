"""End to end through lm-eval with the tiny model: scores equal re-scoring the saved outputs."""

from __future__ import annotations

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
                    ruler_qa_paths=[str(ruler_4k)], max_length=1024, seed=3)
    assert path is not None
    return path


def _samples(run: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (run / "lm_eval" / f"samples_{task}.jsonl").read_text().splitlines()]


def _rescore(task: str, doc: dict, pred: str) -> float:
    if task.startswith("niah"):
        return scorers.ruler_recall(pred, doc["outputs"])
    if task.startswith("ruler_qa"):
        return scorers.ruler_qa_score(pred, doc["answers"])
    return scorers.longbench_score(doc["task"], pred, doc["answers"], doc["all_classes"] or None)


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
    from refine_bench.eval.decode import greedy_generate
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
