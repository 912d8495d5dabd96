"""LongBench's middle truncation: an over-long prompt keeps its head and its tail (instruction and question)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from refine_bench.errors import UserInputError

T = TypeVar("T")


def truncate_middle(tokens: Sequence[T], max_tokens: int) -> list[T]:
    """Return `tokens` unchanged if it fits, else its first max//2 and last max - max//2 tokens.

    LongBench keeps `half = max_length // 2` tokens from each end; for an odd budget we give the extra token to
    the tail (it holds the question), so the result is exactly `max_tokens` long.
    """
    if max_tokens <= 0:
        raise UserInputError(f"cannot truncate a prompt to {max_tokens} tokens (no room left for the prompt)")
    if len(tokens) <= max_tokens:
        return list(tokens)
    head = max_tokens // 2
    tail = max_tokens - head
    return list(tokens[:head]) + list(tokens[len(tokens) - tail:])
