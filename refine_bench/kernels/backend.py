"""Kernel backend selection for the delta rule: `torch` (the project's PyTorch path, any device), `cpp` (the
project's fused CPU kernel, compiled on first use) or `fla` (Triton, CUDA only).

`auto` picks fla when the tensors are on CUDA and fla imports, cpp on the CPU when it builds, else torch.
Callers pass the backend as an argument (the models take it from their config's `kernel_backend`).
"""

from __future__ import annotations

import functools

import torch

from refine_bench.kernels.cpu_kernels import cpu_kernel_available, load_cpu_kernel

BACKENDS = ("auto", "torch", "cpp", "fla")


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
    """Return the concrete backend ('torch', 'cpp' or 'fla') for tensors on `device`.

    Resolving 'auto' or 'cpp' on the CPU builds the fused kernel if this process has not tried yet.
    """
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            return "fla" if fla_available() else "torch"
        return "cpp" if device.type == "cpu" and cpu_kernel_available() else "torch"
    if backend == "fla" and (device.type != "cuda" or not fla_available()):
        raise ValueError("kernel backend 'fla' needs a CUDA device and flash-linear-attention with triton installed")
    if backend == "cpp":
        if device.type != "cpu":
            raise ValueError(f"kernel backend 'cpp' runs on the CPU only, got tensors on {device}")
        load_cpu_kernel()  # raises RuntimeError naming why it cannot be built
    return backend
