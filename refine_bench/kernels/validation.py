"""What every kernel shares: argument checks whose errors name the argument and the expected shape, and the
switch that keeps a kernel's float32 arithmetic float32 under autocast."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(name: str, x: torch.Tensor, expected: Sequence[int | None], layout: str) -> None:
    """Raise ValueError unless `x` has len(expected) dims and every non-None entry matches."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    shape = x.shape  # a plain loop: this runs several times per decoded token
    matches = len(shape) == len(expected)
    if matches:
        for size, want in zip(shape, expected):
            if want is not None and size != want:
                matches = False
                break
    if not matches:
        want = "[" + ", ".join("?" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name} must have shape {layout} = {want}, got {list(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")


def check_chunk_size(chunk_size: object) -> None:
    """Raise ValueError unless `chunk_size` is a positive int (every chunked kernel's argument)."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast disabled on `device`'s type while it is enabled there (a no-op otherwise).

    The kernels cast their inputs to float32 on purpose; under autocast every matmul would otherwise run in
    the autocast dtype again.
    """
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
