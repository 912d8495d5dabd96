"""Kernel backend selection: `torch` (the project's own path, any device) or `fla` (Triton, CUDA only).

`auto` picks fla when the tensors are on CUDA and fla imports, else torch. Callers pass the backend as an
argument (the models take it from their config's `kernel_backend`).
"""

from __future__ import annotations

import functools

import torch

BACKENDS = ("auto", "torch", "fla")


@functools.cache
def fla_available() -> bool:
    """True when fla and triton import and a CUDA device is present (never imports anything on CPU)."""
    if not torch.cuda.is_available():
        return False
    try:
        import fla.ops.delta_rule  # noqa: F401
    except Exception:  # fla missing or broken: fall back to torch
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return the concrete backend ('torch' or 'fla') for tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "fla" if device.type == "cuda" and fla_available() else "torch"
    if backend == "fla" and (device.type != "cuda" or not fla_available()):
        raise ValueError("kernel backend 'fla' needs a CUDA device and flash-linear-attention with triton installed")
    return backend
