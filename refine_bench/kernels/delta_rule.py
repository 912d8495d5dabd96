"""The delta rule in PyTorch: chunked (WY/UT form) for training and prefill, token recurrence for decoding.

Layout follows fla: q, k [B, T, H, K]; v [B, T, H, V]; beta [B, T, H]; state S [B, H, K, V].
Per token: S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T and o_t = S_t^T (scale * q_t).
Both paths compute in float32 and return outputs in the input dtype (the state stays float32).
q and k are used as given: the model L2-normalises them before calling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def _initial(initial_state: torch.Tensor | None, B: int, H: int, K: int, V: int, device) -> torch.Tensor:
    if initial_state is None:
        return torch.zeros(B, H, K, V, device=device, dtype=torch.float32)
    return initial_state.float()


def delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token delta rule; returns (o [B, T, H, V], final state [B, H, K, V] float32)."""
    B, T, H, K, V = check_delta_rule_args(q, k, v, beta, initial_state)
    scale = K**-0.5 if scale is None else scale
    S = _initial(initial_state, B, H, K, V, q.device)
    qf, kf, vf, bf = (x.float() for x in (q, k, v, beta))
    outs = []
    for t in range(T):
        # row vectors [B, H, 1, K] / [B, H, 1, V]: batched matmuls cost less per token than einsum
        k_t, v_t, b_t = kf[:, t, :, None, :], vf[:, t, :, None, :], bf[:, t, :, None, None]
        v_err = v_t - k_t @ S
        S = S + k_t.transpose(-1, -2) @ (b_t * v_err)
        outs.append(((qf[:, t, :, None, :] * scale) @ S)[:, :, 0])
    o = torch.stack(outs, dim=1) if outs else vf.new_zeros(B, 0, H, V)
    return o.to(q.dtype), S


def delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked delta rule via the WY/UT transform; same result as `delta_rule_recurrent`.

    Within a chunk, the updates compose into S_end = S_0 + K^T (U - W S_0) with
    T = (I + tril(diag(beta) K K^T, -1))^{-1}, W = T diag(beta) K, U = T diag(beta) V, so only the
    inter-chunk state pass is sequential. The tail is padded with beta = 0, which leaves the state unchanged.
    """
    B, T, H, K, V = check_delta_rule_args(q, k, v, beta, initial_state)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    scale = K**-0.5 if scale is None else scale
    S = _initial(initial_state, B, H, K, V, q.device)
    if T == 0:
        return v.new_zeros(B, 0, H, V), S
    C = chunk_size
    pad = (-T) % C
    # [B, H, N, C, D] in float32
    qf, kf, vf = (F.pad(x.float(), (0, 0, 0, 0, 0, pad)).transpose(1, 2) for x in (q, k, v))
    bf = F.pad(beta.float(), (0, 0, 0, pad)).transpose(1, 2)
    N = (T + pad) // C
    qf = qf.reshape(B, H, N, C, K) * scale
    kf = kf.reshape(B, H, N, C, K)
    vf = vf.reshape(B, H, N, C, V)
    bf = bf.reshape(B, H, N, C, 1)

    k_beta = kf * bf
    strict_lower = torch.tril(torch.ones(C, C, dtype=torch.bool, device=q.device), diagonal=-1)
    A = (k_beta @ kf.transpose(-1, -2)).masked_fill(~strict_lower, 0.0)
    A = A + torch.eye(C, device=q.device, dtype=A.dtype)
    eye = torch.eye(C, device=q.device, dtype=A.dtype).expand_as(A)
    T_inv = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)
    W = T_inv @ k_beta
    U = T_inv @ (vf * bf)
    causal = torch.tril(torch.ones(C, C, dtype=torch.bool, device=q.device))
    QK = (qf @ kf.transpose(-1, -2)).masked_fill(~causal, 0.0)

    outs = []
    for n in range(N):
        u_n = U[:, :, n] - W[:, :, n] @ S
        outs.append(qf[:, :, n] @ S + QK[:, :, n] @ u_n)
        S = S + kf[:, :, n].transpose(-1, -2) @ u_n
    o = torch.stack(outs, dim=2).reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)
    return o.to(q.dtype), S
