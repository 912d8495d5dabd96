"""Cached vs uncached greedy decoding, the figure every fast-weight model's decode cache is judged by."""

from __future__ import annotations

import time

import torch

from refine_bench.models.base import FastWeightPreTrainedModel


@torch.no_grad()
def decode_speed(model: FastWeightPreTrainedModel, prefix_len: int = 4096, new_tokens: int = 64,
                 nocache_tokens: int = 16, seed: int = 0) -> dict[str, float]:
    """Seconds per greedy token with the recurrent cache (prefill excluded) vs re-running prefix + generated
    tokens for every token, as a model without a decode cache does (timed over `nocache_tokens` tokens).

    Also reports whether both produced the same tokens (1.0) over the uncached stretch.
    """
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
