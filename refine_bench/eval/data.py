"""Where the evaluation data lives, and strict loaders for the RULER QA and LongBench files.

Data directory, first match wins: an explicit `data_dir` (CLI `--data-dir`, lm-eval metadata `data_dir`), the
environment variable `REFINE_BENCH_DATA`, then `../shared/data` next to the repository root when running from a
checkout. Installed users set one of the first two (the folder layout is `longbench/*.parquet`,
`longbench/trec_classes.json`, `ruler_qa/*.parquet`).

Loaders accept `.parquet` and `.jsonl` files of the same schema. Problems are reported with the file name:
missing or unreadable file, missing columns, non-UTF-8 text, empty prompts or references.

Every file a loader reads is noted; `recording()` collects them (the run record lists them with their SHA-256).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.fileio import read_jsonl

log = logging.getLogger(__name__)

ENV_VAR = "REFINE_BENCH_DATA"
LONGBENCH_COLUMNS = ("prompt", "answers", "max_gen_tokens", "task")
RULER_QA_COLUMNS = ("prompt", "answer", "max_seq_length", "task")
RULER_QA_TASKS = {"squad": "ruler_squadqa", "hotpotqa": "ruler_hotpotqa"}
RULER_QA_FAMILIES = ("delta_net", "lact")


_recorders: list[set[Path]] = []


@contextmanager
def recording() -> Iterator[set[Path]]:
    """Collect the paths of the data files read inside the block (resolved, in a set)."""
    seen: set[Path] = set()
    _recorders.append(seen)
    try:
        yield seen
    finally:
        _recorders.remove(seen)


def note_read(path: str | os.PathLike[str]) -> None:
    """Tell the open `recording()` blocks that `path` was read."""
    for seen in _recorders:
        seen.add(Path(path).resolve())


def checkout_root() -> Path:
    """The repository root this package was imported from (meaningful for a source checkout)."""
    return Path(__file__).resolve().parents[2]


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The evaluation data folder (see the module docstring for the order)."""
    if data_dir:
        candidate, origin = Path(data_dir).expanduser(), "--data-dir"
    elif os.environ.get(ENV_VAR):
        candidate, origin = Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    else:
        candidate, origin = checkout_root().parent / "shared" / "data", "the checkout default"
    if not candidate.is_dir():
        raise UserInputError(
            f"evaluation data folder {candidate} (from {origin}) does not exist; pass --data-dir DIR or set "
            f"{ENV_VAR} to the folder holding longbench/ and ruler_qa/"
        )
    return candidate


# --------------------------------------------------------------------------------------------- reading files


def read_records(path: str | os.PathLike[str], required: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of a .parquet or .jsonl file as dicts, checking that `required` columns exist."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"data file {path} does not exist")
    note_read(path)
    if path.suffix == ".parquet":
        rows = _read_parquet(path)
    elif path.suffix in (".jsonl", ".json"):
        rows = read_jsonl(path)
    else:
        raise UserInputError(f"data file {path}: unsupported format (use .parquet or .jsonl)")
    if not rows:
        raise UserInputError(f"data file {path} has no rows")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise UserInputError(f"data file {path} lacks column(s) {', '.join(missing)} (has {', '.join(rows[0])})")
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"data file {path} is not a readable parquet file: {exc}") from exc
    try:
        return table.to_pylist()
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        raise UserInputError(f"data file {path}: cannot decode its contents ({exc}); is the text UTF-8?") from exc


def _text(path: Path, row: int, column: str, value: Any) -> str:
    if not isinstance(value, str):
        raise UserInputError(f"data file {path}, row {row}: column {column!r} is {type(value).__name__}, not text")
    if not value.strip():
        raise UserInputError(f"data file {path}, row {row}: column {column!r} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserInputError(f"data file {path}, row {row}: column {column!r} is not valid UTF-8 text") from exc
    return value


def _references(path: Path, row: int, column: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise UserInputError(f"data file {path}, row {row}: column {column!r} must be a list of strings")
    refs = [_text(path, row, column, v) for v in value]
    if not refs:
        raise UserInputError(f"data file {path}, row {row}: column {column!r} has no reference answer")
    return refs


# --------------------------------------------------------------------------------------------- LongBench


def longbench_file(task: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The parquet file of LongBench `task` in the data folder."""
    folder = resolve_data_dir(data_dir) / "longbench"
    matches = sorted(folder.glob(f"{task}_*.parquet")) or sorted(folder.glob(f"{task}.parquet"))
    matches = [m for m in matches if re.fullmatch(rf"{re.escape(task)}(_\d+)?\.parquet", m.name)]
    if not matches:
        raise UserInputError(f"no LongBench file for task {task!r} in {folder} (expected {task}_16384.parquet)")
    return matches[-1]


def load_longbench(path: str | os.PathLike[str], task: str | None = None) -> list[dict[str, Any]]:
    """Validated LongBench docs: prompt, answers (non-empty strings), max_gen_tokens, task, row."""
    path = Path(path)
    docs = []
    for i, row in enumerate(read_records(path, LONGBENCH_COLUMNS)):
        row_task = _text(path, i, "task", row["task"])
        if task is not None and row_task != task:
            continue
        gen = row["max_gen_tokens"]
        if not isinstance(gen, int) or gen <= 0:
            raise UserInputError(f"data file {path}, row {i}: max_gen_tokens must be a positive integer, got {gen!r}")
        docs.append({
            "row": i,
            "task": row_task,
            "prompt": _text(path, i, "prompt", row["prompt"]),
            "answers": _references(path, i, "answers", row["answers"]),
            "max_gen_tokens": gen,
            "prompt_length": int(row.get("prompt_length") or 0),
        })
    if not docs:
        raise UserInputError(f"data file {path} holds no rows for task {task!r}")
    return docs


def load_trec_classes(data_dir: str | os.PathLike[str] | None = None, path: str | os.PathLike[str] | None = None
                      ) -> list[str]:
    """TREC's class names (for LongBench's classification score)."""
    file = Path(path) if path else resolve_data_dir(data_dir) / "longbench" / "trec_classes.json"
    if not file.is_file():
        raise UserInputError(f"TREC class list {file} does not exist")
    note_read(file)
    try:
        classes = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"TREC class list {file} is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise UserInputError(f"TREC class list {file} must be a non-empty JSON list of strings")
    return classes


# --------------------------------------------------------------------------------------------- RULER QA


def model_family(model: str | None) -> str:
    """The RULER QA file family for a model name: `lact` for LaCT models, else `delta_net`."""
    return "lact" if model and "lact" in str(model).lower() else "delta_net"


def ruler_qa_files(dataset: str, lengths: Sequence[int], family: str, data_dir: str | os.PathLike[str] | None = None,
                   allow_foreign: bool = False) -> dict[int, Path]:
    """{length: file} for `dataset` (squad/hotpotqa) and the model `family`.

    RULER QA files are built per model family (prompts sized with its tokenizer). A length with no file of the
    family is skipped with a warning; another family's file is used only with `allow_foreign` (the CLI's
    --allow-foreign-ruler-file). An error if no length is left.
    """
    if dataset not in RULER_QA_TASKS:
        raise UserInputError(f"unknown RULER QA dataset {dataset!r}; known: {', '.join(RULER_QA_TASKS)}")
    if family not in RULER_QA_FAMILIES:
        raise UserInputError(f"unknown RULER QA family {family!r}; known: {', '.join(RULER_QA_FAMILIES)}")
    folder = resolve_data_dir(data_dir) / "ruler_qa"
    stem = RULER_QA_TASKS[dataset]
    found: dict[int, Path] = {}
    skipped: list[str] = []
    for length in lengths:
        own = sorted(folder.glob(f"{stem}_{family}_{length}_*.parquet"))
        foreign = [p for fam in RULER_QA_FAMILIES if fam != family
                   for p in sorted(folder.glob(f"{stem}_{fam}_{length}_*.parquet"))]
        if own:
            found[int(length)] = own[0]
        elif foreign and allow_foreign:
            log.warning("RULER QA %s: no %s file for length %d; using %s (--allow-foreign-ruler-file)", dataset,
                        family, length, foreign[0].name)
            found[int(length)] = foreign[0]
        elif foreign:
            skipped.append(f"{length} (only {foreign[0].name}, built for another model family; "
                           "--allow-foreign-ruler-file uses it)")
        else:
            skipped.append(f"{length} (no file)")
    if skipped and found:
        log.warning("RULER QA %s: skipping length(s) %s in %s", dataset, "; ".join(skipped), folder)
    if not found:
        raise UserInputError(f"no {family} RULER QA {dataset} file in {folder} for --lengths "
                             f"{','.join(map(str, lengths))}: {'; '.join(skipped)}; or pass --ruler-qa-file FILE")
    return found


def is_foreign_ruler_file(path: str | os.PathLike[str], family: str) -> bool:
    """Whether a data-folder RULER QA file was built for another model family than `family`."""
    name = Path(path).name
    return any(f"_{fam}_" in name for fam in RULER_QA_FAMILIES if fam != family) and f"_{family}_" not in name


def load_ruler_qa(path: str | os.PathLike[str], dataset: str) -> list[dict[str, Any]]:
    """Validated RULER QA docs of one file for `dataset`: prompt, answers, length, index, row."""
    path = Path(path)
    want = RULER_QA_TASKS[dataset]
    docs = []
    for i, row in enumerate(read_records(path, RULER_QA_COLUMNS)):
        if _text(path, i, "task", row["task"]) != want:
            continue
        length = row["max_seq_length"]
        if not isinstance(length, int) or length <= 0:
            raise UserInputError(f"data file {path}, row {i}: max_seq_length must be a positive integer")
        docs.append({
            "row": i,
            "index": int(row.get("index", i)),
            "prompt": _text(path, i, "prompt", row["prompt"]),
            "answers": _references(path, i, "answer", row["answer"]),
            "length": length,
            "source": path.name,
        })
    return docs
