"""LaCT figures for `refine-bench bench kernels`: cached vs uncached greedy decoding, and the fast-weight
update's GFLOP/s. Both sides of every ratio are measured in the same process."""

from __future__ import annotations

import torch

from refine_bench.bench.decode import decode_speed
from refine_bench.bench.timing import best_time
from refine_bench.kernels import init_lact_state, lact_flops, lact_swiglu
from refine_bench.models.zoo import load_model


@torch.no_grad()
def lact_update_gflops(T: int = 4096, chunk: int = 2048, heads: int = 4, d: int = 384, B: int = 1) -> float:
    """GFLOP/s of the fast-weight kernel (apply + chunk updates, momentum) at LaCT-760M's head shape."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, heads, d, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(B, T, heads, d, generator=g)
    lr = torch.full((B, T, heads, 3), 1e-3)
    mom = torch.full((B, T, heads), 0.5)
    w0, w1, w2 = (torch.randn(heads, d, d, generator=g) / d**0.5 for _ in range(3))
    state = init_lact_state(w0, w1, w2, batch_size=B, chunk_size=chunk, use_momentum=True)
    seconds = best_time(lambda: lact_swiglu(q, k, v, lr, state, mom), repeats=3)
    updated = (T // chunk) * chunk
    return lact_flops(B * heads, d, d, T, updated) / seconds / 1e9


def lact_bench(quick: bool = False) -> dict[str, float]:
    """The LaCT entries of `refine-bench bench kernels --json`: tiny LaCT, 4096-token prefix, 64 cached greedy
    tokens; the uncached side is timed over the first 16 of them (as the DeltaNet figure is)."""
    dec = decode_speed(load_model("lact-tiny"), prefix_len=1024 if quick else 4096, new_tokens=16 if quick else 64,
                       nocache_tokens=4 if quick else 16)
    return {
        "lact_cached_s_per_token": dec["cached_s_per_token"],
        "lact_nocache_s_per_token": dec["nocache_s_per_token"],
        "lact_cached_vs_nocache_decode_speedup": dec["speedup"],
        "lact_cached_equals_nocache_tokens": dec["same_tokens"],
        "lact_update_gflops": lact_update_gflops(T=1024 if quick else 4096, chunk=512 if quick else 2048),
    }
