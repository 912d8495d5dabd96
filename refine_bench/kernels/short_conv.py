"""Causal depthwise short convolution with a carried state, as used on DeltaNet's q, k and v."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine_bench.kernels.validation import check_tensor

_UNFOLD_MAX_LEN = 32


def causal_depthwise_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t = act(sum_j weight[:, 0, j] * x_{t - W + 1 + j}) over x [B, T, C] with weight [C, 1, W].

    `state` [B, C, W - 1] holds the inputs before x (zeros when None); the returned state holds the last
    W - 1 inputs, so running x in two pieces with the state in between equals one run.
    """
    check_tensor("x", x, [None, None, None], "[B, T, C]")
    B, T, C = x.shape
    check_tensor("weight", weight, [C, 1, None], "[C, 1, W]")
    W = weight.shape[-1]
    xt = x.transpose(1, 2)
    if state is None:
        state = xt.new_zeros(B, C, W - 1)
    else:
        check_tensor("state", state, [B, C, W - 1], "[B, C, W - 1]")
        state = state.to(xt.dtype)
    full = torch.cat([state, xt], dim=-1)
    if T <= _UNFOLD_MAX_LEN:
        # For decoding, one window product is several times cheaper than conv1d's per-call set-up on CPU.
        y = (full.unfold(-1, W, 1) * weight.to(xt.dtype)[None, :, 0, None, :]).sum(-1)
    else:
        y = F.conv1d(full, weight.to(xt.dtype), groups=C)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
    new_state = full[..., full.shape[-1] - (W - 1) :] if W > 1 else full[..., :0]
    return y.transpose(1, 2).contiguous(), new_state
