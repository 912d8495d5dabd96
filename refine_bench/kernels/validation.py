"""Argument checks shared by the kernels: errors name the argument and the shape that was expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(name: str, x: torch.Tensor, expected: Sequence[int | None], layout: str) -> None:
    """Raise ValueError unless `x` has len(expected) dims and every non-None entry matches."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.dim() != len(expected) or any(e is not None and s != e for s, e in zip(x.shape, expected, strict=True)):
        want = "[" + ", ".join("?" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name} must have shape {layout} = {want}, got {list(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
