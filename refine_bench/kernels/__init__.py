"""Fast-weight kernels shared by every model: delta rule, short convolution, LaCT update, attention."""

from __future__ import annotations

import torch

from refine_bench.kernels.backend import resolve_backend
from refine_bench.kernels.delta_rule import check_delta_rule_args, delta_rule_chunked, delta_rule_recurrent
from refine_bench.kernels.short_conv import causal_depthwise_conv1d

__all__ = [
    "causal_depthwise_conv1d",
    "delta_rule",
    "delta_rule_chunked",
    "delta_rule_recurrent",
    "resolve_backend",
]


def delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    *,
    mode: str = "chunk",
    backend: str | None = None,
    chunk_size: int = 64,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Delta rule over a sequence; returns (o [B, T, H, V], final state [B, H, K, V]).

    mode: 'chunk' (training, prefill) or 'recurrent' (decoding). On the fla backend the state is returned in
    float32 like the torch path; fla's chunk kernel needs 16-bit inputs, so float32 inputs take the recurrent
    fla kernel there.
    """
    if mode not in ("chunk", "recurrent"):
        raise ValueError(f"mode must be 'chunk' or 'recurrent', got {mode!r}")
    if resolve_backend(backend, q.device) == "fla":
        check_delta_rule_args(q, k, v, beta, initial_state)  # the torch kernels check their own arguments
        from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule

        state = None if initial_state is None else initial_state.float()
        if mode == "chunk" and q.dtype != torch.float32:
            o, final = chunk_delta_rule(q, k, v, beta.to(q.dtype), scale=scale, initial_state=state,
                                        output_final_state=True)
        else:
            o, final = fused_recurrent_delta_rule(q, k, v, beta.to(q.dtype), scale=scale, initial_state=state,
                                                  output_final_state=True)
        return o, final.float()
    if mode == "recurrent":
        return delta_rule_recurrent(q, k, v, beta, initial_state, scale=scale)
    return delta_rule_chunked(q, k, v, beta, initial_state, scale=scale, chunk_size=chunk_size)
