"""The Python side of the lm-eval tasks in `tasks/`: dataset builders (`custom_dataset`) and scorers.

lm-eval calls each builder with the task metadata as keyword arguments: the YAML's `metadata`, overridden by
TaskManager metadata (`--metadata` JSON on the lm-eval CLI) and, on the lm-eval CLI, the `--model_args`.
Keys read here:

* tokenizer / checkpoint / pretrained: whose tokenizer sizes NIAH prompts (first present wins);
* max_seq_lengths: lengths for NIAH and RULER QA (list, or comma-separated string; default 4096,8192,16384);
  ruler_qa_lengths overrides it for RULER QA alone (its files exist for fixed lengths only);
* num_samples (NIAH samples per length, default 500), seed (NIAH, default 42);
* data_dir: the evaluation data folder (else $REFINE_BENCH_DATA, else ../shared/data of the checkout);
* ruler_qa_family (delta_net / lact; default from the model name), ruler_qa_paths (files to use instead of
  the data folder's, list or comma-separated);
* longbench_path: a file to use instead of the data folder's for a LongBench task (only sensible when running
  one LongBench task); the task `longbench_file` reads any LongBench-schema file from it (other LongBench tasks
  such as musique or gov_report), scored by each row's `task`, generating up to 128 tokens unless
  `--gen_kwargs max_gen_toks=N` says otherwise.

Docs of multi-length tasks are interleaved across lengths, so lm-eval's `--limit k*len(lengths)` keeps k per
length. Each sample's metrics carry its length in the metric name (`recall_4096`, `score_8192`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.eval import data, niah, scorers

log = logging.getLogger(__name__)
DEFAULT_LENGTHS = niah.DEFAULT_LENGTHS


# --------------------------------------------------------------------------------------------- metadata helpers


def parse_lengths(value: Any, default: Sequence[int] = DEFAULT_LENGTHS) -> list[int]:
    """Lengths from metadata: a list of ints or a comma-separated string."""
    if value is None or value == "":
        return list(default)
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, Sequence) else [value]
    try:
        lengths = [int(str(v).strip()) for v in items if str(v).strip()]
    except ValueError as exc:
        raise UserInputError(f"max_seq_lengths must be integers, got {value!r}") from exc
    if not lengths or any(n <= 0 for n in lengths):
        raise UserInputError(f"max_seq_lengths must be positive integers, got {value!r}")
    return lengths


def _paths(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return [str(p) for p in value]


def model_name(meta: dict[str, Any]) -> str | None:
    """The model a task is being built for (tokenizer, then checkpoint, then pretrained)."""
    for key in ("tokenizer", "checkpoint", "pretrained"):
        value = meta.get(key)
        if isinstance(value, str) and value:
            return value
    return None


@lru_cache(maxsize=4)
def _tokenizer(name: str) -> Any:
    from refine_bench.models.zoo import load_tokenizer

    return load_tokenizer(name)


def _dataset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    import datasets

    return {"test": datasets.Dataset.from_list(docs)}


# --------------------------------------------------------------------------------------------- NIAH


def niah_docs(task: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """NIAH docs for `task` from the metadata (see module docstring)."""
    name = model_name(meta)
    if name is None:
        raise UserInputError(
            f"{task} sizes its prompts with the evaluated model's tokenizer: pass --model_args pretrained=NAME "
            "(refine-bench model) or --metadata '{\"tokenizer\": NAME}'"
        )
    num = int(meta.get("num_samples") or niah.DEFAULT_NUM_SAMPLES)
    seed = int(meta.get("seed") if meta.get("seed") is not None else niah.DEFAULT_SEED)
    lengths = parse_lengths(meta.get("max_seq_lengths"))
    return niah.generate_samples(task, _tokenizer(name), lengths=lengths, num_samples=num, seed=seed)


def _niah_builder(task: str):  # noqa: ANN202 - a custom_dataset callable
    def build(**meta: Any) -> dict[str, Any]:
        return _dataset(niah_docs(task, meta))

    build.__name__ = task
    return build


niah_single_1 = _niah_builder("niah_single_1")
niah_single_2 = _niah_builder("niah_single_2")
niah_single_3 = _niah_builder("niah_single_3")
niah_multikey_1 = _niah_builder("niah_multikey_1")
niah_multikey_2 = _niah_builder("niah_multikey_2")
niah_multikey_3 = _niah_builder("niah_multikey_3")
niah_multivalue = _niah_builder("niah_multivalue")
niah_multiquery = _niah_builder("niah_multiquery")


def niah_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """RULER recall of one sample, overall and under its length."""
    score = scorers.ruler_recall(results[0], doc["outputs"])
    return {"recall": score, f"recall_{doc['length']}": score}


def niah_depth_rows(task: str, doc: dict[str, Any], prediction: str) -> list[dict[str, Any]]:
    """One row per answer needle: its depth and whether the prediction holds its value (for the heatmap)."""
    pred = scorers.ruler_clean(prediction).lower()
    return [
        {"task": task, "length": int(doc["length"]), "depth": float(depth), "score": int(value.lower() in pred)}
        for value, depth in zip(doc["outputs"], doc["needle_depths"], strict=True)
    ]


# --------------------------------------------------------------------------------------------- RULER QA


def ruler_qa_sources(dataset: str, meta: dict[str, Any]) -> list[str]:
    """The files a RULER QA task reads: `ruler_qa_paths`, else the data folder's files for the lengths."""
    explicit = _paths(meta.get("ruler_qa_paths"))
    if explicit:
        return explicit
    family = meta.get("ruler_qa_family") or data.model_family(model_name(meta))
    lengths = parse_lengths(meta.get("ruler_qa_lengths") or meta.get("max_seq_lengths"))
    files = data.ruler_qa_files(dataset, lengths, family, meta.get("data_dir"))
    return [str(files[k]) for k in sorted(files)]


def ruler_qa_docs(dataset: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """RULER QA docs, interleaved across lengths (explicit files may hold any lengths)."""
    by_length: dict[int, list[dict[str, Any]]] = {}
    for path in ruler_qa_sources(dataset, meta):
        for doc in data.load_ruler_qa(path, dataset):
            by_length.setdefault(doc["length"], []).append(doc)
    if not by_length:
        raise UserInputError(f"RULER QA {dataset}: the selected files hold no {data.RULER_QA_TASKS[dataset]} rows")
    columns = [by_length[k] for k in sorted(by_length)]
    docs = []
    for i in range(max(len(c) for c in columns)):
        docs.extend(c[i] for c in columns if i < len(c))
    return docs


def ruler_qa_squad(**meta: Any) -> dict[str, Any]:
    return _dataset(ruler_qa_docs("squad", meta))


def ruler_qa_hotpotqa(**meta: Any) -> dict[str, Any]:
    return _dataset(ruler_qa_docs("hotpotqa", meta))


def ruler_qa_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """RULER QA score of one sample, overall and under its length."""
    score = scorers.ruler_qa_score(results[0], doc["answers"])
    return {"score": score, f"score_{doc['length']}": score}


# --------------------------------------------------------------------------------------------- LongBench


def longbench_docs(task: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """LongBench docs for `task` (TREC docs carry the class names its score needs)."""
    path = meta.get("longbench_path") or data.longbench_file(task, meta.get("data_dir"))
    docs = data.load_longbench(path, task)
    classes = data.load_trec_classes(meta.get("data_dir")) if task in scorers.CLASSIFICATION_TASKS else []
    for doc in docs:
        doc["all_classes"] = classes
        if doc["max_gen_tokens"] != scorers.LONGBENCH_GEN_TOKENS[task]:
            log.warning("%s row %d: max_gen_tokens %d differs from the protocol's %d (the YAML's value is used)",
                        task, doc["row"], doc["max_gen_tokens"], scorers.LONGBENCH_GEN_TOKENS[task])
    return docs


def _longbench_builder(task: str):  # noqa: ANN202 - a custom_dataset callable
    def build(**meta: Any) -> dict[str, Any]:
        return _dataset(longbench_docs(task, meta))

    build.__name__ = f"longbench_{task}"
    return build


longbench_narrativeqa = _longbench_builder("narrativeqa")
longbench_qasper = _longbench_builder("qasper")
longbench_multifieldqa_en = _longbench_builder("multifieldqa_en")
longbench_hotpotqa = _longbench_builder("hotpotqa")
longbench_2wikimqa = _longbench_builder("2wikimqa")
longbench_qmsum = _longbench_builder("qmsum")
longbench_multi_news = _longbench_builder("multi_news")
longbench_samsum = _longbench_builder("samsum")
longbench_trec = _longbench_builder("trec")
longbench_triviaqa = _longbench_builder("triviaqa")
longbench_lcc = _longbench_builder("lcc")
longbench_repobench_p = _longbench_builder("repobench-p")


def longbench_file(**meta: Any) -> dict[str, Any]:
    """Docs of any LongBench-schema file (`longbench_path`), scored by each row's `task` column."""
    path = meta.get("longbench_path")
    if not path:
        raise UserInputError("longbench_file reads the file given as metadata longbench_path (a LongBench-schema "
                             ".parquet or .jsonl)")
    docs = data.load_longbench(path)
    needs_classes = any(d["task"] in scorers.CLASSIFICATION_TASKS for d in docs)
    classes = data.load_trec_classes(meta.get("data_dir")) if needs_classes else []
    for doc in docs:
        scorers.longbench_metric(doc["task"])  # unknown tasks fail now, not after generation
        doc["all_classes"] = classes if doc["task"] in scorers.CLASSIFICATION_TASKS else []
    return _dataset(docs)


def longbench_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """LongBench score of one sample (post-processing and metric from the doc's task)."""
    score = scorers.longbench_score(doc["task"], results[0], doc["answers"], doc.get("all_classes") or None)
    return {"score": score}


# --------------------------------------------------------------------------------------------- sizes for --limit


def doc_count(task: str, meta: dict[str, Any]) -> int | None:
    """Number of docs a task will have (None when unknown without building it)."""
    if task in niah.NIAH_TASKS:
        return int(meta.get("num_samples") or niah.DEFAULT_NUM_SAMPLES) * docs_per_length(task, meta)
    if task in ("ruler_qa_squad", "ruler_qa_hotpotqa"):
        return len(ruler_qa_docs(task.removeprefix("ruler_qa_"), meta))
    if task.startswith("longbench_") and task.removeprefix("longbench_") in scorers.LONGBENCH_TASKS:
        import pyarrow.parquet as pq

        name = task.removeprefix("longbench_")
        path = meta.get("longbench_path") or data.longbench_file(name, meta.get("data_dir"))
        if str(path).endswith(".parquet"):
            try:
                return pq.ParquetFile(path).metadata.num_rows
            except Exception:  # noqa: BLE001 - the loader reports a broken file properly later
                return None
    return None


def docs_per_length(task: str, meta: dict[str, Any]) -> int:
    """How many lengths a task's docs are interleaved over (1 for single-length tasks)."""
    if task in niah.NIAH_TASKS:
        return len(parse_lengths(meta.get("max_seq_lengths")))
    if task in ("ruler_qa_squad", "ruler_qa_hotpotqa"):
        dataset = task.removeprefix("ruler_qa_")
        if meta.get("ruler_qa_paths"):
            return len({d["length"] for d in ruler_qa_docs(dataset, meta)})
        return len(ruler_qa_sources(dataset, meta))
    return 1
