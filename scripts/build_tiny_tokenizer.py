"""Rebuild the tiny tokenizer shipped in refine_bench/models/assets/tiny-tokenizer.

The training text is the docstrings of a fixed list of Python standard-library modules: English prose with
code and numbers, available on every machine without a download. Rebuilding on another Python version can
give a different tokenizer; the committed file is the reference.
"""

from __future__ import annotations

import importlib
import inspect

from refine_bench.models.tokenizer import build_tiny_tokenizer, tiny_tokenizer_path

MODULES = [
    "argparse", "collections", "json", "pathlib", "functools", "itertools", "typing", "dataclasses", "logging",
    "subprocess", "threading", "asyncio", "email", "http.client", "unittest", "decimal", "fractions", "statistics",
    "random", "datetime", "calendar", "textwrap", "string", "re", "os", "shutil", "tarfile", "zipfile", "csv",
    "sqlite3", "heapq", "bisect", "math", "socket", "inspect", "ast", "pickle", "copy", "pprint", "difflib",
]


def corpus() -> list[str]:
    texts = []
    for name in MODULES:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc:
                texts.append(doc)
    return texts


def main() -> None:
    tok = build_tiny_tokenizer(corpus())
    out = tiny_tokenizer_path()
    out.mkdir(parents=True, exist_ok=True)
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    print(f"wrote {out / 'tokenizer.json'} (vocab {tok.vocab_size})")


if __name__ == "__main__":
    main()
