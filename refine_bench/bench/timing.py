"""Small timing helpers for benchmarks (wall clock, best-of-n, device synchronised)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def best_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, device: str | None = None) -> float:
    """Smallest wall time of `repeats` calls after `warmup` calls, in seconds."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_gflops(n: int = 1024, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """GFLOP/s of an n x n matmul on this machine, as a ceiling to compare kernels against."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    seconds = best_time(lambda: a @ b, repeats=5, warmup=2, device=device)
    return 2 * n**3 / seconds / 1e9
