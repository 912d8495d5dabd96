"""Training text: where documents come from, and how they become fixed-length token sequences.

Sources (`--data`):
- a local `.jsonl` (field `text`), `.txt` (one document per file) or `.parquet` (column `text`) file, or a
  folder of them (parquet shards included);
- a folder written by `datasets.save_to_disk`;
- `hf:NAME[:CONFIG][@SPLIT]`, a hub dataset read through `datasets` in streaming mode (needs the network, or
  `datasets`' cache with HF_DATASETS_OFFLINE=1);
- `builtin`, a small corpus of standard-library docstrings for smoke runs;
- `corpus[:SEED]`, the project's generated corpus (natural text + synthetic recall documents,
  `pretrain_corpus.py`), each document sized to the training length; SEED picks another stream (default 0).
  Its synthetic documents train on their answers only (the natural text after them too with `tail_targets`): the keys
  and values a document states are random, so predicting them teaches nothing and, in a toy check (8
  key-value pairs, DeltaNet 2 x 128), drowned the recall signal: loss on every token left recall at chance
  after 800 steps where loss on the answers reached 98% in 300.

Sequence modes: `document` (the paper's): one document per sequence, documents with at least seq_len tokens
only, their first seq_len tokens; `packed`: documents joined with EOS and cut into seq_len pieces.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from refine_bench.errors import UserInputError
from refine_bench.fileio import read_jsonl

BUILTIN = "builtin"
HF_PREFIX = "hf:"
CORPUS = "corpus"
# Standard-library modules whose docstrings form the built-in corpus (English prose with code and numbers,
# present on every machine). Good enough to exercise training; not a research corpus.
_BUILTIN_MODULES = ("argparse", "collections", "json", "pathlib", "functools", "itertools", "typing", "logging",
                    "subprocess", "threading", "email", "unittest", "decimal", "statistics", "random", "datetime",
                    "textwrap", "string", "re", "os", "shutil", "tarfile", "csv", "sqlite3", "heapq", "inspect")


@dataclass
class DataStats:
    """How many documents were read, kept and dropped (too short), and the sequences made."""

    mode: str
    documents_read: int = 0
    documents_kept: int = 0
    documents_dropped: int = 0
    sequences: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def builtin_documents() -> list[str]:
    """Docstrings of a fixed list of standard-library modules, one document per module."""
    import importlib

    docs = []
    for name in _BUILTIN_MODULES:
        module = importlib.import_module(name)
        parts = [inspect.getdoc(obj) or "" for _, obj in sorted(inspect.getmembers(module), key=lambda kv: kv[0])]
        docs.append("\n\n".join(p for p in parts if p))
    return docs


def parse_hub_source(source: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:CONFIG][@SPLIT]` -> (name, config or None, split; default 'train')."""
    spec = source[len(HF_PREFIX):]
    spec, _, split = spec.partition("@")
    name, _, config = spec.partition(":")
    if not name:
        raise UserInputError(f"--data {source!r}: expected hf:NAME[:CONFIG][@SPLIT]")
    return name, config or None, split or "train"


def _text_of(row: dict, field: str, where: str) -> str:
    if field not in row:
        raise UserInputError(f"{where} has no {field!r} field (fields: {sorted(row)}); choose one with --text-field")
    return str(row[field])


def _hub_documents(source: str, text_field: str) -> Iterator[str]:
    import datasets

    name, config, split = parse_hub_source(source)
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
        for row in stream:
            yield _text_of(row, text_field, f"dataset {name}")
    except UserInputError:
        raise
    except Exception as exc:  # offline, unknown dataset or split: the user sees one line either way
        raise UserInputError(f"cannot read the hub dataset {name!r} (config {config}, split {split}): "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Offline, "
                             "download it elsewhere and pass a local folder (parquet shards or save_to_disk)") from exc


def _saved_dataset_documents(path: Path, text_field: str) -> Iterator[str]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise UserInputError(f"{path} holds splits {sorted(loaded)} but no 'train' split")
        loaded = loaded["train"]
    if text_field not in loaded.column_names:
        raise UserInputError(f"{path} has no {text_field!r} column (columns: {loaded.column_names}); choose one "
                             "with --text-field")
    for row in loaded:
        yield str(row[text_field])


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def _file_documents(file: Path, text_field: str) -> Iterator[str]:
    try:
        if file.suffix == ".jsonl":
            for i, row in enumerate(read_jsonl(file), 1):
                yield _text_of(row, text_field, f"{file} row {i}")
        elif file.suffix == ".txt":
            yield file.read_text(encoding="utf-8")
        elif file.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.ParquetFile(file)
            if text_field not in table.schema_arrow.names:
                raise UserInputError(f"{file} has no {text_field!r} column (columns: {table.schema_arrow.names}); "
                                     "choose one with --text-field")
            for batch in table.iter_batches(columns=[text_field], batch_size=256):
                yield from (str(t) for t in batch.column(0).to_pylist())
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{file} is not valid UTF-8: {exc}") from exc


def read_documents(source: str | Path, text_field: str = "text") -> Iterator[str]:
    """Documents from `source` (see the module docstring), lazily, in a fixed order."""
    text = str(source)
    if text == BUILTIN:
        yield from builtin_documents()
        return
    if text.startswith(HF_PREFIX):
        yield from _hub_documents(text, text_field)
        return
    path = Path(source)
    if not path.exists():
        raise UserInputError(f"training data {path} does not exist")
    if _is_saved_dataset(path):
        yield from _saved_dataset_documents(path, text_field)
        return
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    found = False
    for file in files:
        for doc in _file_documents(file, text_field):
            found = True
            yield doc
    if not found:
        raise UserInputError(f"no documents found in {path} (expected .jsonl with {text_field!r}, .txt, .parquet, "
                             "or a datasets.save_to_disk folder)")


def document_sequences(docs: Iterable[str], tokenizer, seq_len: int, limit: int | None = None
                       ) -> tuple[torch.Tensor, DataStats]:
    """The paper's mode: one sequence per document of >= seq_len tokens, its first seq_len tokens (no BOS, no
    EOS); shorter documents are dropped. Stops after `limit` sequences."""
    stats = DataStats("document")
    rows: list[list[int]] = []
    for doc in docs:
        stats.documents_read += 1
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if len(ids) < seq_len:
            stats.documents_dropped += 1
            continue
        stats.documents_kept += 1
        rows.append(ids[:seq_len])
        if limit is not None and len(rows) >= limit:
            break
    stats.sequences = len(rows)
    if not rows:
        raise UserInputError(f"none of the {stats.documents_read} training documents has {seq_len} tokens or more "
                             "(document mode keeps only those); use shorter --seq-len or --data-mode packed")
    return torch.tensor(rows, dtype=torch.long), stats


def packed_sequences(docs: Iterable[str], tokenizer, seq_len: int, limit: int | None = None
                     ) -> tuple[torch.Tensor, DataStats]:
    """Documents joined with EOS (no BOS) and cut into [N, seq_len] sequences; the tail is dropped."""
    stats = DataStats("packed")
    ids: list[int] = []
    for doc in docs:
        stats.documents_read += 1
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
        if limit is not None and len(ids) >= limit * seq_len:
            break
    n = len(ids) // seq_len if limit is None else min(len(ids) // seq_len, limit)
    stats.documents_kept = stats.documents_read
    stats.sequences = n
    if n == 0:
        raise UserInputError(f"the training data has {len(ids)} tokens: fewer than one sequence of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len), stats


def corpus_seed(source: str) -> int | None:
    """The seed of a generated-corpus source (`PROFILE[:SEED]` for a profile of `pretrain_corpus.PROFILES`:
    corpus, corpus-dense, corpus-tables, corpus-far), or None for any other source."""
    from refine_bench.train.pretrain_corpus import PROFILES

    name, _, seed = str(source).partition(":")
    if name not in PROFILES:
        return None
    if seed and not seed.isdigit():
        raise UserInputError(f"--data {source!r}: expected {name} or {name}:SEED (a non-negative integer)")
    return int(seed or 0)


def corpus_profile(source: str) -> str:
    """The profile name of a generated-corpus source (see `corpus_seed`)."""
    return str(source).partition(":")[0]


def answer_targets(text: str, spans: list[tuple[int, int]], tokenizer, seq_len: int) -> tuple[list[int], list[bool]]:
    """The first seq_len token ids of `text` and, per token, whether it overlaps one of the character `spans`
    (the tokens the loss trains on)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:seq_len], enc["offset_mapping"][:seq_len]
    return ids, [any(lo < end and hi > start for start, end in spans) for lo, hi in offsets]


def corpus_sequences(seed: int, tokenizer, seq_len: int, count: int, tail_targets: bool = False,
                     start: int = 0, profile: str = CORPUS) -> tuple[torch.Tensor, torch.Tensor, DataStats]:
    """Documents `start` .. `start + count - 1` of the generated corpus as sequences [N, seq_len] and their loss
    targets [N, seq_len]: every token of a natural document; the answers of a synthetic one, and its natural tail
    when `tail_targets` (without it, answers are a larger share of the loss and recall is learnt sooner).
    `profile` names the mix (`pretrain_corpus.PROFILES`)."""
    from refine_bench.train.pretrain_corpus import PROFILES, make_document

    stats = DataStats("document")
    rows, masks = [], []
    for index in range(start, start + count):
        doc = make_document(seed, index, seq_len, tokenizer, profile=PROFILES[profile])
        stats.documents_read += 1
        spans = [(0, len(doc.text))] if not doc.qas else [(doc.synthetic_end, len(doc.text))] if tail_targets else []
        for qa in doc.qas:
            end = qa.prompt_end
            for value in qa.answers:
                found = doc.text.find(value, end)
                end = found + len(value) if found >= 0 else end
            spans.append((qa.prompt_end, end))
        ids, mask = answer_targets(doc.text, spans, tokenizer, seq_len)
        if len(ids) < seq_len:
            stats.documents_dropped += 1
            continue
        rows.append(ids)
        masks.append(mask)
    stats.documents_kept = stats.sequences = len(rows)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.bool), stats


def make_sequences(source: str | Path, tokenizer, seq_len: int, mode: str, text_field: str = "text",
                   limit: int | None = None) -> tuple[torch.Tensor, DataStats]:
    """Sequences [N, seq_len] from `source` in `mode` (document | packed)."""
    docs = read_documents(source, text_field)
    if mode == "document":
        return document_sequences(docs, tokenizer, seq_len, limit)
    return packed_sequences(docs, tokenizer, seq_len, limit)


def write_documents_parquet(docs: Iterable[str], out_dir: Path, shard_size: int = 1000) -> int:
    """Write documents as parquet shards with a `text` column (what `refine-bench data prepare` makes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    shard, count, index = [], 0, 0
    for doc in docs:
        shard.append(doc)
        count += 1
        if len(shard) == shard_size:
            pq.write_table(pa.table({"text": shard}), out_dir / f"shard-{index:05d}.parquet")
            shard, index = [], index + 1
    if shard:
        pq.write_table(pa.table({"text": shard}), out_dir / f"shard-{index:05d}.parquet")
    return count


def read_qa_pairs(source: str | Path) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from .jsonl or .parquet files with `prompt` and `answer` (a string, or a list whose
    first element is the training answer) — the RULER QA schema."""
    path = Path(source)
    if not path.exists():
        raise UserInputError(f"post-training data {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".parquet")) if path.is_dir() else [path]
    pairs: list[tuple[str, str]] = []
    for file in files:
        if file.suffix == ".parquet":
            import pandas as pd

            rows = pd.read_parquet(file).to_dict("records")
        else:
            rows = read_jsonl(file)
        for i, row in enumerate(rows, 1):
            if "prompt" not in row or "answer" not in row:
                raise UserInputError(f"{file} row {i} needs 'prompt' and 'answer' fields, has {sorted(row)}")
            answer = row["answer"]
            if not isinstance(answer, str):
                answer = list(answer)[0] if len(answer) else ""
            if not str(answer).strip():
                raise UserInputError(f"{file} row {i} has an empty answer")
            pairs.append((str(row["prompt"]), str(answer)))
    if not pairs:
        raise UserInputError(f"no (prompt, answer) pairs found in {path}")
    return pairs
