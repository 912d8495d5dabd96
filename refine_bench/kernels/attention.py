"""Rotary position embeddings and sliding-window causal attention with a window KV cache for decoding.

Attention goes through `torch.nn.functional.scaled_dot_product_attention`; flash-attn is used only when it is
installed, the tensors are 16-bit on CUDA and there is neither padding nor a cache. Positions are explicit
(per row, per token; -1 marks padding), so left-padded rows behave like unpadded ones: a query at position p
attends to the keys at positions p - window + 1 .. p (flash-attn's window_size=(window - 1, 0)).

The cache keeps the last window - 1 keys/values of every row, right-aligned: {'k', 'v': [B, H, W-1, D],
'pos': [B, W-1] (-1 = empty slot)}; one decoding step costs O(window).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, T, 1, dim] (float32) for integer positions [B, T] (GPT-NeoX 'rotate half' layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    freqs = positions.clamp(min=0).float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by the angles of `rope_cos_sin` (computed in float32, returned in x's dtype)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


@functools.cache
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except Exception:  # not installed or broken build: SDPA is always available
        return None
    return flash_attn_func


def empty_window_cache(batch: int, heads: int, head_dim: int, window: int, like: torch.Tensor) -> dict:
    """A cache with no tokens: window - 1 empty slots per row."""
    slots = max(window - 1, 0)
    return {
        "k": like.new_zeros(batch, heads, slots, head_dim),
        "v": like.new_zeros(batch, heads, slots, head_dim),
        "pos": torch.full((batch, slots), -1, dtype=torch.long, device=like.device),
    }


def _masked_sdpa(q, k, v, q_pos, k_pos, window):
    """SDPA with the window/causal/validity mask built from positions; q [B,H,Tq,D], k/v [B,H,Tk,D]."""
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]
    allowed = (kp >= 0) & (kp <= qp) & (kp > qp - window)
    allowed = allowed | (qp < 0)  # pad queries see everything (finite output, discarded by the caller)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    window: int,
    cache: dict | None = None,
    return_cache: bool = False,
    num_pads: int = 0,
    query_block: int = 64,
) -> tuple[torch.Tensor, dict | None]:
    """Sliding-window causal attention.

    q, k, v [B, T, H, D] (RoPE applied); positions [B, T] long, -1 at padding; cache as in the module doc or
    None; num_pads: an upper bound on padded tokens per row in this call (0 = no padding). Returns
    (o [B, T, H, D], the new cache when return_cache else None). Output rows at padding are not meaningful.

    Queries go in blocks of max(query_block, window), each against the block + window - 1 keys it can reach:
    a query scores about twice the window (plus the padding) at the default, however long the sequence.
    """
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    B, T, H, D = q.shape
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    flash = _flash_attn_func()
    if cache is None and num_pads == 0:
        if flash is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            o = flash(q, k, v, causal=True, window_size=(window - 1, 0))
            return o, (_new_cache(None, kh, vh, positions, window, 0) if return_cache else None)
        if T <= window:
            o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
            return o.transpose(1, 2), (_new_cache(None, kh, vh, positions, window, 0) if return_cache else None)
    if cache is not None:
        keys_k = torch.cat([cache["k"].to(kh.dtype), kh], dim=2)
        keys_v = torch.cat([cache["v"].to(vh.dtype), vh], dim=2)
        keys_pos = torch.cat([cache["pos"], positions], dim=1)
        n_cache = cache["pos"].shape[1]
    else:
        keys_k, keys_v, keys_pos, n_cache = kh, vh, positions, 0
    block = max(query_block, window)
    outs = []
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        # keys that can be within the window of a query in [t0, t1): padding only widens the span
        lo = max(0, t0 - window + 1 - num_pads)
        use_cache = n_cache > 0 and t0 < window - 1 + num_pads
        sel = slice(0 if use_cache else n_cache + lo, n_cache + t1)
        outs.append(_masked_sdpa(qh[:, :, t0:t1], keys_k[:, :, sel], keys_v[:, :, sel],
                                 positions[:, t0:t1], keys_pos[:, sel], window))
    o = torch.cat(outs, dim=2) if outs else qh
    new_cache = _new_cache(cache, kh, vh, positions, window, num_pads) if return_cache else None
    return o.transpose(1, 2), new_cache


def _new_cache(cache: dict | None, kh: torch.Tensor, vh: torch.Tensor, positions: torch.Tensor, window: int,
               num_pads: int) -> dict:
    """Keep the last window - 1 real keys of every row, right-aligned."""
    B, H, T, D = kh.shape
    slots = max(window - 1, 0)
    if cache is None:
        cache = empty_window_cache(B, H, D, window, kh)
    ck = torch.cat([cache["k"].to(kh.dtype), kh], dim=2)
    cv = torch.cat([cache["v"].to(vh.dtype), vh], dim=2)
    cp = torch.cat([cache["pos"], positions], dim=1)
    if num_pads == 0:  # real tokens are contiguous and right-aligned already
        return {"k": ck[:, :, ck.shape[2] - slots:], "v": cv[:, :, cv.shape[2] - slots:],
                "pos": cp[:, cp.shape[1] - slots:]}
    total = cp.max(dim=1).values + 1  # [B] tokens consumed so far
    slot = cp - (total - slots)[:, None]
    slot = torch.where((cp >= 0) & (slot >= 0), slot, torch.full_like(slot, slots))
    index = slot[:, None, :, None].expand(B, H, -1, D)
    k_new = ck.new_zeros(B, H, slots + 1, D).scatter(2, index, ck)[:, :, :slots]
    v_new = cv.new_zeros(B, H, slots + 1, D).scatter(2, index, cv)[:, :, :slots]
    p_new = torch.full((B, slots + 1), -1, dtype=torch.long, device=cp.device).scatter(1, slot, cp)[:, :slots]
    return {"k": k_new, "v": v_new, "pos": p_new}
