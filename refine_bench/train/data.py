"""Training data: documents from local files (or a built-in corpus), packed into fixed-length sequences.

Files: `.jsonl` (field `text`), `.txt` (one document per file), `.parquet` (column `text`), or a folder of
them. Nothing is downloaded: for the paper's mid-training data (long-data-collections, or SlimPajama
documents of >= 16K tokens) download them yourself and pass the folder.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from refine_bench.errors import UserInputError
from refine_bench.fileio import read_jsonl

BUILTIN = "builtin"
# Standard-library modules whose docstrings form the built-in corpus (English prose with code and numbers,
# present on every machine). Good enough to exercise training on tiny models; not a research corpus.
_BUILTIN_MODULES = ("argparse", "collections", "json", "pathlib", "functools", "itertools", "typing", "logging",
                    "subprocess", "threading", "email", "unittest", "decimal", "statistics", "random", "datetime",
                    "textwrap", "string", "re", "os", "shutil", "tarfile", "csv", "sqlite3", "heapq", "inspect")


def builtin_documents() -> list[str]:
    """Docstrings of a fixed list of standard-library modules, one document per module."""
    import importlib

    docs = []
    for name in _BUILTIN_MODULES:
        module = importlib.import_module(name)
        parts = [inspect.getdoc(obj) or "" for _, obj in sorted(inspect.getmembers(module), key=lambda kv: kv[0])]
        docs.append("\n\n".join(p for p in parts if p))
    return docs


def read_documents(source: str | Path) -> list[str]:
    """Documents from a file, a folder of files, or `builtin`."""
    if str(source) == BUILTIN:
        return builtin_documents()
    path = Path(source)
    if not path.exists():
        raise UserInputError(f"training data {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    docs: list[str] = []
    for file in files:
        docs.extend(_read_file(file))
    if not docs:
        raise UserInputError(f"no documents found in {path} (expected .jsonl with 'text', .txt or .parquet)")
    return docs


def _read_file(file: Path) -> list[str]:
    try:
        if file.suffix == ".jsonl":
            rows = read_jsonl(file)
            for i, row in enumerate(rows, 1):
                if "text" not in row:
                    raise UserInputError(f"{file} row {i} has no 'text' field")
            return [str(row["text"]) for row in rows]
        if file.suffix == ".txt":
            return [file.read_text(encoding="utf-8")]
        if file.suffix == ".parquet":
            import pandas as pd

            frame = pd.read_parquet(file)
            if "text" not in frame.columns:
                raise UserInputError(f"{file} has no 'text' column (columns: {list(frame.columns)})")
            return [str(t) for t in frame["text"]]
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{file} is not valid UTF-8: {exc}") from exc
    return []


def pack_documents(docs: Iterable[str], tokenizer, seq_len: int) -> torch.Tensor:
    """Tokenize (no BOS), join documents with EOS, cut into [N, seq_len] sequences (the tail is dropped)."""
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // seq_len
    if n == 0:
        raise UserInputError(f"the training data has {len(ids)} tokens: fewer than one sequence of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@dataclass
class BatchStream:
    """Deterministic batches over packed sequences: a fixed permutation per epoch, resumable by position."""

    sequences: torch.Tensor
    batch_size: int
    seed: int = 0
    position: int = 0  # batches drawn so far

    def __post_init__(self) -> None:
        if self.batch_size > len(self.sequences):
            raise UserInputError(
                f"batch size {self.batch_size} exceeds the {len(self.sequences)} packed sequences in the data"
            )

    def _order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.sequences), generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        per_epoch = len(self.sequences) // self.batch_size
        epoch, index = divmod(self.position, per_epoch)
        idx = self._order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        self.position += 1
        return self.sequences[idx]


@dataclass
class Example:
    """One training sequence without padding; `targets` marks the positions whose token is a training
    target (None: every token after the first)."""

    ids: torch.Tensor  # [S]
    targets: torch.Tensor | None = None  # [S] bool

    def target_count(self) -> int:
        return int(self.targets[1:].sum()) if self.targets is not None else len(self.ids) - 1


def read_qa_pairs(source: str | Path) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from .jsonl or .parquet files with `prompt` and `answer` (a string, or a list
    whose first element is the training answer) — the RULER QA schema."""
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


def encode_qa_pairs(pairs: list[tuple[str, str]], tokenizer, max_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Token ids of (prompt, answer + EOS); prompts longer than the budget lose their middle (LongBench's
    convention), keeping the head with the instructions and the tail with the question."""
    out = []
    for prompt, answer in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        budget = max_len - len(a)
        if budget < 2:
            raise UserInputError(f"answer of {len(a)} tokens does not fit seq_len {max_len}")
        if len(p) > budget:
            p = p[: budget // 2] + p[len(p) - (budget - budget // 2) :]
        out.append((torch.tensor(p, dtype=torch.long), torch.tensor(a, dtype=torch.long)))
    return out


@dataclass
class PairStream:
    """Deterministic batches of (prompt, answer) pairs, resumable by position (like BatchStream)."""

    pairs: list[tuple[torch.Tensor, torch.Tensor]]
    batch_size: int
    seed: int = 0
    position: int = 0

    def __post_init__(self) -> None:
        if self.batch_size > len(self.pairs):
            raise UserInputError(f"batch size {self.batch_size} exceeds the {len(self.pairs)} examples in the data")

    def __iter__(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        return self

    def __next__(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        per_epoch = len(self.pairs) // self.batch_size
        epoch, index = divmod(self.position, per_epoch)
        order = torch.randperm(len(self.pairs), generator=torch.Generator().manual_seed(self.seed + epoch))
        self.position += 1
        return [self.pairs[int(i)] for i in order[index * self.batch_size : (index + 1) * self.batch_size]]
