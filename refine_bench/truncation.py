"""LongBench's middle truncation, shared by evaluation and training: an over-long prompt keeps its head (the
instruction) and its tail (the question)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from refine_bench.errors import UserInputError

T = TypeVar("T")


def truncate_middle(ids: Sequence[T], budget: int) -> list[T]:
    """`ids` unchanged if it fits in `budget`, else its first budget//2 and last budget - budget//2 items.

    LongBench keeps `half = max_length // 2` tokens from each end; for an odd budget the extra token goes to the
    tail (it holds the question), so the result is exactly `budget` long.
    """
    if budget <= 0:
        raise UserInputError(f"cannot truncate a prompt to {budget} tokens (no room left for the prompt)")
    if len(ids) <= budget:
        return list(ids)
    head = budget // 2
    return list(ids[:head]) + list(ids[len(ids) - (budget - head):])
