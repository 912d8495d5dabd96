"""LaCT figures for `refine-bench bench kernels`: cached vs uncached greedy decoding, and the fast-weight
update's GFLOP/s. Both sides of every ratio are measured in the same process."""

from __future__ import annotations

import time

import torch

from refine_bench.bench.timing import best_time
from refine_bench.kernels.lact import init_lact_state, lact_flops, lact_swiglu
from refine_bench.models.lact import LaCTForCausalLM, lact_tiny_config


@torch.no_grad()
def lact_decode_speed(model: LaCTForCausalLM, prefix_len: int = 4096, new_tokens: int = 64,
                      nocache_tokens: int | None = None, seed: int = 0) -> dict[str, float]:
    """Seconds per greedy token: with the decode cache (prefill excluded) vs re-running the whole sequence
    for every token (what the LaCT repo's `generate` does), the latter over `nocache_tokens` tokens
    (default: all `new_tokens`). Also checks that both produce the same tokens."""
    nocache_tokens = new_tokens if nocache_tokens is None else nocache_tokens
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (1, prefix_len), generator=g)
    out = model(ids, use_cache=True, logits_to_keep=1)
    cache, nxt = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    cached_tokens = [nxt]
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(nxt, cache=cache, use_cache=True)
        cache, nxt = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        cached_tokens.append(nxt)
    cached = (time.perf_counter() - start) / new_tokens
    seq = ids
    start = time.perf_counter()
    for _ in range(nocache_tokens):
        nxt = model(seq, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    uncached = (time.perf_counter() - start) / nocache_tokens
    same = torch.equal(seq[0, prefix_len:], torch.cat(cached_tokens, dim=1)[0, :nocache_tokens])
    return {"cached_s_per_token": cached, "nocache_s_per_token": uncached, "speedup": uncached / cached,
            "same_tokens": float(same)}


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
    torch.manual_seed(0)
    model = LaCTForCausalLM(lact_tiny_config()).eval()
    dec = lact_decode_speed(model, prefix_len=1024 if quick else 4096, new_tokens=16 if quick else 64,
                            nocache_tokens=4 if quick else 16)
    return {
        "lact_cached_s_per_token": dec["cached_s_per_token"],
        "lact_nocache_s_per_token": dec["nocache_s_per_token"],
        "lact_cached_vs_nocache_decode_speedup": dec["speedup"],
        "lact_cached_equals_nocache_tokens": dec["same_tokens"],
        "lact_update_gflops": lact_update_gflops(T=1024 if quick else 4096, chunk=512 if quick else 2048),
    }
