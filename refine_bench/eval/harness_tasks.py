"""The Python side of the lm-eval tasks in `tasks/`: dataset builders (`custom_dataset`) and scorers.

lm-eval calls each builder with the task metadata as keyword arguments: the YAML's `metadata`, overridden by
TaskManager metadata (`--metadata` JSON on the lm-eval CLI) and, on the lm-eval CLI, the `--model_args`.
`refine-bench eval` sets them from its flags (in brackets). Keys read here:

* tokenizer / checkpoint / pretrained: whose tokenizer sizes NIAH prompts (first present wins) [--model];
* max_seq_lengths: lengths for NIAH and RULER QA (list, or comma-separated string; default 4096,8192,16384)
  [--lengths]; ruler_qa_lengths overrides it for RULER QA alone (its files exist for fixed lengths only);
* num_samples (NIAH samples per length, default 500) [--limit], seed (NIAH, default 42) [--seed];
* niah_length_convention: `exact` (default) or `lm-eval` [--niah-length-convention], see `niah`;
* scoring: `paper` (default) or `longbench` [--scoring], see `scorers`; stored in every doc;
* data_dir: the evaluation data folder (else $REFINE_BENCH_DATA, else ../shared/data of the checkout)
  [--data-dir];
* ruler_qa_family (delta_net / lact; default from the model name), ruler_qa_paths: files to use instead of the
  data folder's (list or comma-separated) [--ruler-qa-file], allow_foreign_ruler_file: use another family's
  file for a length the model's family lacks [--allow-foreign-ruler-file];
* longbench_paths (or longbench_path): LongBench-schema files for the task `longbench_file`, which reads any
  LongBench dataset (e.g. musique or gov_report), scores each row by its `task` column and generates each row's
  `max_gen_tokens` [--longbench-file]. The paper's twelve LongBench tasks read the data folder.

Docs of multi-length tasks are interleaved across lengths (and `longbench_file` docs across their datasets), so
lm-eval's `--limit k*len(lengths)` keeps k per length. Each sample's score carries its length in the doc;
refine-bench's run record averages per length from the logged samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from lm_eval.api.task import ConfigurableTask

from refine_bench.errors import UserInputError
from refine_bench.eval import data, niah, scorers
from refine_bench.protocol import LONGBENCH_BY_NAME, NIAH_TASKS, RULER_QA_TASKS

log = logging.getLogger(__name__)
DEFAULT_LENGTHS = niah.DEFAULT_LENGTHS
LONGBENCH_FILE_TASK = "longbench_file"


# --------------------------------------------------------------------------------------------- metadata helpers


def parse_lengths(value: Any, default: Sequence[int] = DEFAULT_LENGTHS) -> list[int]:
    """Lengths from metadata: a list of ints or a comma-separated string."""
    if value is None or value == "":
        return list(default)
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, Sequence) else [value]
    try:
        lengths = [int(str(v).strip()) for v in items if str(v).strip()]
    except ValueError as exc:
        raise UserInputError(f"--lengths (metadata max_seq_lengths) must be integers, got {value!r}") from exc
    if not lengths or any(n <= 0 for n in lengths):
        raise UserInputError(f"--lengths (metadata max_seq_lengths) must be positive integers, got {value!r}")
    return lengths


def paths(value: Any) -> list[str]:
    """File paths from metadata: a list, or a comma-separated string."""
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


def scoring(meta: dict[str, Any]) -> str:
    """The scoring definition the metadata asks for (`paper` unless said otherwise)."""
    return scorers.check_scoring(str(meta.get("scoring") or scorers.PAPER))


@lru_cache(maxsize=4)
def _tokenizer(name: str) -> Any:
    from refine_bench.models.zoo import load_tokenizer

    return load_tokenizer(name)


def _dataset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    import datasets

    return {"test": datasets.Dataset.from_list(docs)}


def _interleave(columns: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Doc 0 of every column, then doc 1 of every column, ... (so any prefix is balanced across columns)."""
    docs = []
    for i in range(max((len(c) for c in columns), default=0)):
        docs.extend(c[i] for c in columns if i < len(c))
    return docs


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
    convention = niah.check_convention(str(meta.get("niah_length_convention") or niah.EXACT))
    return niah.generate_samples(task, _tokenizer(name), lengths=lengths, num_samples=num, seed=seed,
                                 convention=convention)


def _niah_builder(task: str):  # noqa: ANN202 - a custom_dataset callable
    def build(**meta: Any) -> dict[str, Any]:
        return _dataset(niah_docs(task, meta))

    build.__name__ = task
    return build


# One module-level name per task on purpose: lm-eval YAML configs name their dataset builder as
# `!function refine_bench.eval.harness_tasks.<name>`, so every task needs its own attribute.
niah_single_1 = _niah_builder("niah_single_1")
niah_single_2 = _niah_builder("niah_single_2")
niah_single_3 = _niah_builder("niah_single_3")
niah_multikey_1 = _niah_builder("niah_multikey_1")
niah_multikey_2 = _niah_builder("niah_multikey_2")
niah_multikey_3 = _niah_builder("niah_multikey_3")
niah_multivalue = _niah_builder("niah_multivalue")
niah_multiquery = _niah_builder("niah_multiquery")


def niah_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """RULER recall of one sample (the run record averages it per length, `doc["length"]`)."""
    return {"recall": scorers.ruler_recall(results[0], doc["outputs"])}


def niah_depth_rows(task: str, doc: dict[str, Any], prediction: str) -> list[dict[str, Any]]:
    """One row per answer needle: its depth and whether the prediction holds its value (for the heatmap)."""
    pred = scorers.ruler_clean(prediction).lower()
    return [
        {"task": task, "length": int(doc["length"]), "depth": float(depth), "score": int(value.lower() in pred)}
        for value, depth in zip(doc["outputs"], doc["needle_depths"], strict=True)
    ]


# --------------------------------------------------------------------------------------------- RULER QA


def ruler_qa_family(meta: dict[str, Any]) -> str:
    """The model family whose RULER QA files fit the evaluated model's tokenizer."""
    return str(meta.get("ruler_qa_family") or data.model_family(model_name(meta)))


def ruler_qa_sources(dataset: str, meta: dict[str, Any]) -> list[str]:
    """The files a RULER QA task reads: `ruler_qa_paths`, else the data folder's files for the lengths."""
    explicit = paths(meta.get("ruler_qa_paths"))
    if explicit:
        return explicit
    lengths = parse_lengths(meta.get("ruler_qa_lengths") or meta.get("max_seq_lengths"))
    files = data.ruler_qa_files(dataset, lengths, ruler_qa_family(meta), meta.get("data_dir"),
                                allow_foreign=bool(meta.get("allow_foreign_ruler_file")))
    return [str(files[k]) for k in sorted(files)]


def ruler_qa_docs(dataset: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """RULER QA docs, interleaved across lengths (explicit files may hold any lengths)."""
    by_length: dict[int, list[dict[str, Any]]] = {}
    for path in ruler_qa_sources(dataset, meta):
        for doc in data.load_ruler_qa(path, dataset):
            by_length.setdefault(doc["length"], []).append(doc)
    if not by_length:
        raise UserInputError(f"RULER QA {dataset}: the selected files hold no {data.RULER_QA_TASKS[dataset]} rows")
    docs = _interleave([by_length[k] for k in sorted(by_length)])
    mode = scoring(meta)
    for doc in docs:
        doc["scoring"] = mode
    return docs


def ruler_qa_squad(**meta: Any) -> dict[str, Any]:
    return _dataset(ruler_qa_docs("squad", meta))


def ruler_qa_hotpotqa(**meta: Any) -> dict[str, Any]:
    return _dataset(ruler_qa_docs("hotpotqa", meta))


def ruler_qa_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """RULER QA score of one sample under the doc's scoring (the run record averages it per length)."""
    return {"score": scorers.ruler_qa_score(results[0], doc["answers"], doc.get("scoring") or scorers.PAPER)}


# --------------------------------------------------------------------------------------------- LongBench


def longbench_paths(meta: dict[str, Any]) -> list[str]:
    """The LongBench files named in the metadata (`longbench_paths`, or the older single `longbench_path`)."""
    return paths(meta.get("longbench_paths")) or paths(meta.get("longbench_path"))


def _with_classes(docs: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Add the scoring definition and, for TREC rows, the class names its score needs."""
    needs_classes = any(scorers.longbench_metric_name(d["task"]) == "classification" for d in docs)
    classes = data.load_trec_classes(meta.get("data_dir")) if needs_classes else []
    mode = scoring(meta)
    for doc in docs:
        doc["all_classes"] = classes if scorers.longbench_metric_name(doc["task"]) == "classification" else []
        doc["scoring"] = mode
    return docs


def longbench_docs(task: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Docs of one of the paper's LongBench tasks (its generation budget is the YAML's, the protocol's)."""
    docs = data.load_longbench(data.longbench_file(task, meta.get("data_dir")), task)
    budget = LONGBENCH_BY_NAME[task].max_new_tokens
    for doc in docs:
        if doc["max_gen_tokens"] != budget:
            log.warning("%s row %d: max_gen_tokens %d differs from the protocol's %d (the protocol's is used)",
                        task, doc["row"], doc["max_gen_tokens"], budget)
    return _with_classes(docs, meta)


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


def longbench_file_docs(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Docs of the LongBench-schema files in the metadata, interleaved across the datasets they hold; every
    row's dataset must have a known metric (checked before anything is generated)."""
    files = longbench_paths(meta)
    if not files:
        raise UserInputError("longbench_file reads the files given with --longbench-file PATH[,PATH] (lm-eval "
                             "metadata longbench_paths): LongBench-schema .parquet or .jsonl")
    by_task: dict[str, list[dict[str, Any]]] = {}
    for path in files:
        for doc in data.load_longbench(path):
            scorers.longbench_metric_name(doc["task"])
            doc["source"] = str(path)
            by_task.setdefault(doc["task"], []).append(doc)
    return _with_classes(_interleave(list(by_task.values())), meta)


def longbench_file(**meta: Any) -> dict[str, Any]:
    """Docs of any LongBench-schema files (see `longbench_file_docs`)."""
    return _dataset(longbench_file_docs(meta))


class LongBenchFileTask(ConfigurableTask):
    """`longbench_file`: like any LongBench task, except that each request generates its row's own
    `max_gen_tokens` (a file may mix datasets with different budgets, e.g. musique 32 and gov_report 512)."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        # lm-eval hands the YAML over whole; its `class` key names this class and is no TaskConfig field
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"}, **kwargs)

    def construct_requests(self, doc: dict[str, Any], ctx: Any, **kwargs: Any) -> Any:
        requests = super().construct_requests(doc, ctx, **kwargs)
        for request in requests if isinstance(requests, list) else [requests]:
            request.arguments[1]["max_gen_toks"] = int(doc["max_gen_tokens"])
        return requests


def longbench_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """LongBench score of one sample (post-processing and metric from the doc's task and scoring)."""
    score = scorers.longbench_score(doc["task"], results[0], doc["answers"], doc.get("all_classes") or None,
                                    scoring=doc.get("scoring") or scorers.PAPER)
    return {"score": score}


# --------------------------------------------------------------------------------------------- sizes for --limit


def doc_count(task: str, meta: dict[str, Any]) -> int | None:
    """Number of docs a task will have (None when unknown without building it)."""
    if task in NIAH_TASKS:
        return int(meta.get("num_samples") or niah.DEFAULT_NUM_SAMPLES) * docs_per_length(task, meta)
    if task in RULER_QA_TASKS:
        return len(ruler_qa_docs(task.removeprefix("ruler_qa_"), meta))
    if task == LONGBENCH_FILE_TASK:
        return len(longbench_file_docs(meta))
    name = task.removeprefix("longbench_")
    if task.startswith("longbench_") and name in LONGBENCH_BY_NAME:
        import pyarrow.parquet as pq

        path = data.longbench_file(name, meta.get("data_dir"))
        if str(path).endswith(".parquet"):
            try:
                return pq.ParquetFile(path).metadata.num_rows
            except Exception:  # noqa: BLE001 - the loader reports a broken file properly later
                return None
    return None


def docs_per_length(task: str, meta: dict[str, Any]) -> int:
    """How many columns (lengths, or datasets for longbench_file) a task's docs are interleaved over."""
    if task in NIAH_TASKS:
        return len(parse_lengths(meta.get("max_seq_lengths")))
    if task in RULER_QA_TASKS:
        dataset = task.removeprefix("ruler_qa_")
        if meta.get("ruler_qa_paths"):
            return len({d["length"] for d in ruler_qa_docs(dataset, meta)})
        return len(ruler_qa_sources(dataset, meta))
    if task == LONGBENCH_FILE_TASK:
        return len({d["task"] for d in longbench_file_docs(meta)})
    return 1
