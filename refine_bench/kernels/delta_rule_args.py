"""The delta rule's argument check and start, shared by every path (PyTorch, the fused CPU kernel, fla)."""

from __future__ import annotations

import torch

from refine_bench.kernels.validation import check_tensor


def check_delta_rule_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, initial_state: torch.Tensor | None
) -> tuple[int, int, int, int, int]:
    """Validate shapes; return (B, T, H, K, V)."""
    check_tensor("q", q, [None, None, None, None], "[B, T, H, K]")
    B, T, H, K = q.shape
    check_tensor("k", k, [B, T, H, K], "[B, T, H, K] (same as q)")
    check_tensor("v", v, [B, T, H, None], "[B, T, H, V]")
    V = v.shape[-1]
    check_tensor("beta", beta, [B, T, H], "[B, T, H]")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, [B, H, K, V], "[B, H, K, V]")
    return B, T, H, K, V


def start_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                     initial_state: torch.Tensor | None, scale: float | None
                     ) -> tuple[tuple[int, int, int, int, int], float, torch.Tensor]:
    """Checked dims, the query scale (1/sqrt(K) by default) and the float32 initial state (zeros when None)."""
    B, T, H, K, V = dims = check_delta_rule_args(q, k, v, beta, initial_state)
    if initial_state is None:
        state = torch.zeros(B, H, K, V, device=q.device, dtype=torch.float32)
    else:
        state = initial_state.float()
    return dims, K**-0.5 if scale is None else scale, state
