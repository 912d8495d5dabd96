"""The naive reference for `window_attention`: a loop over queries, each a softmax over its own window."""

from __future__ import annotations

import math

import torch


def window_attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Causal sliding-window attention over unpadded rows: query i attends to keys j with i - window < j <= i.

    q, k, v [B, T, H, D] (RoPE already applied); returns o [B, T, H, D] in float32.
    """
    q, k, v = q.float(), k.float(), v.float()
    out = torch.zeros_like(q)
    for i in range(q.shape[1]):
        lo = max(0, i - window + 1)
        scores = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, lo : i + 1]) / math.sqrt(q.shape[-1])
        out[:, i] = torch.einsum("bhj,bjhd->bhd", scores.softmax(-1), v[:, lo : i + 1])
    return out
