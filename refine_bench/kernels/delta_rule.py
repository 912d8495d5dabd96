"""The delta rule in PyTorch: the token recurrence (the naive reference, and the decoding path) and the chunked
WY/UT form for training and prefill, plus `delta_rule`, which dispatches to fla's Triton kernels on CUDA.

Layout follows fla: q, k [B, T, H, K]; v [B, T, H, V]; beta [B, T, H]; state S [B, H, K, V].
Per token: S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T and o_t = S_t^T (scale * q_t).
Both paths compute in float32 (also under autocast) and return outputs in q's dtype; the state stays float32.
q and k are used as given: the model L2-normalises them before calling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from refine_bench.kernels.backend import BACKENDS, resolve_backend
from refine_bench.kernels.cpu_kernels import delta_rule_fused_cpu
from refine_bench.kernels.delta_rule_args import check_delta_rule_args, start_delta_rule
from refine_bench.kernels.validation import autocast_off, check_chunk_size


def delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token delta rule; returns (o [B, T, H, V], final state [B, H, K, V] float32).

    The reference every other path is checked against, and the decoding path (one token per call).
    """
    (B, T, H, K, V), scale, S = start_delta_rule(q, k, v, beta, initial_state, scale)
    with autocast_off(q.device):
        qf, kf, vf, bf = q.float(), k.float(), v.float(), beta.float()
        outs = []
        for t in range(T):
            o_t, S = delta_rule_step(qf[:, t], kf[:, t], vf[:, t], bf[:, t], S, scale)
            outs.append(o_t)
        if T == 1:  # decoding
            return outs[0][:, None].to(q.dtype), S
        o = torch.stack(outs, dim=1) if outs else S.new_zeros(B, 0, H, V)
        return o.to(q.dtype), S


def delta_rule_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, state: torch.Tensor,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence, unchecked, in float32: q, k [B, H, K], v [B, H, V], beta [B, H], state
    [B, H, K, V] -> (o [B, H, V], new state). The body of `delta_rule_recurrent`, and a model's decode step.

    Broadcast products and sums, not matmuls: a [1, K] x [K, V] product per head is all a token needs, and
    batched matmuls that small cost more (much more with several threads on a busy CPU).
    """
    k = k[..., None]  # [B, H, K, 1]
    u = (v - (k * state).sum(-2)) * beta[..., None]  # beta (v - S^T k)  [B, H, V]
    state = torch.addcmul(state, k, u[:, :, None, :])
    return (q[..., None] * state).sum(-2) * scale, state


class _UnitLowerInverse(torch.autograd.Function):
    """(I + strict_lower(P))^-1 for a batch of square P; the gradient reaches only P's strict lower part."""

    @staticmethod
    def forward(ctx, P: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device).expand_as(P)
        # unitriangular=True reads only the strict lower triangle of P: no masking pass needed
        inverse = torch.linalg.solve_triangular(P, eye, upper=False, unitriangular=True)
        ctx.save_for_backward(inverse)
        return inverse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # d(A^-1) = -A^-1 dA A^-1; torch's own backward of solve_triangular is far slower on CPU
        (inverse,) = ctx.saved_tensors
        it = inverse.transpose(-1, -2)
        with autocast_off(grad.device):
            return torch.tril(-(it @ grad @ it), -1)


class _ChunkRecurrence(torch.autograd.Function):
    """The sequential part of the chunked delta rule, chunk by chunk (all [N, G, ...], G = batch x heads):
    u_n = U_n - W_n S_n and S_{n+1} = S_n + K_n^T u_n, from S_0 [G, K, V].

    Returns u [N, G, C, V] and every state [N + 1, G, K, V]. Two batched matmuls per chunk forward, four
    backward, written by hand so that the autograd graph holds one node instead of two per chunk.
    """

    @staticmethod
    def forward(ctx, W: torch.Tensor, U: torch.Tensor, Kt: torch.Tensor, S0: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        states = S0.new_empty(W.shape[0] + 1, *S0.shape)
        u = torch.empty_like(U)
        states[0] = S0
        for n in range(W.shape[0]):
            torch.baddbmm(U[n], W[n], states[n], alpha=-1, out=u[n])
            torch.baddbmm(states[n], Kt[n], u[n], out=states[n + 1])
        ctx.save_for_backward(W, Kt, states, u)
        return u, states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_u: torch.Tensor, grad_states: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        W, Kt, states, u = ctx.saved_tensors
        grad_W, grad_U, grad_Kt = torch.empty_like(W), torch.empty_like(u), torch.empty_like(Kt)
        carry = grad_states[-1].clone()  # the whole gradient reaching S_{n+1}
        with autocast_off(carry.device):
            for n in range(W.shape[0] - 1, -1, -1):
                torch.baddbmm(grad_u[n], Kt[n].transpose(-1, -2), carry, out=grad_U[n])  # = grad of u_n
                torch.bmm(carry, u[n].transpose(-1, -2), out=grad_Kt[n])
                torch.bmm(grad_U[n], states[n].transpose(-1, -2), out=grad_W[n]).neg_()
                carry = torch.baddbmm(carry + grad_states[n], W[n].transpose(-1, -2), grad_U[n], alpha=-1)
        return grad_W, grad_U, grad_Kt, carry


# Same signature as delta_rule_recurrent on purpose (as in fla): the two are interchangeable.
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

    Per chunk of C tokens with state S at its start: T = (I + tril(diag(beta) K K^T, -1))^-1, W = T diag(beta) K,
    U = T diag(beta) V, u = U - W S; then o = Q S + tril(Q K^T) u and the next state is S + K^T u. Only u and
    the state pass are sequential (`_ChunkRecurrence`); everything else is one batched matmul over all chunks.
    A ragged tail is padded with beta = 0, which leaves the state unchanged.
    """
    (B, T, H, K, V), scale, S = start_delta_rule(q, k, v, beta, initial_state, scale)
    check_chunk_size(chunk_size)
    if T == 0:
        return v.new_zeros(B, 0, H, V), S
    C = chunk_size
    pad = (-T) % C
    N, G = (T + pad) // C, B * H

    def grid(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [N * G, C, D] float32, chunk-major
        x = F.pad(x.float(), (0, 0, 0, 0, 0, pad)) if pad else x.float()
        return x.reshape(B, N, C, H, -1).permute(1, 0, 3, 2, 4).reshape(N * G, C, x.shape[-1])

    with autocast_off(q.device):
        qf, kf, vf, bf = grid(q) * scale, grid(k), grid(v), grid(beta[..., None])
        kt = kf.transpose(-1, -2)
        k_beta = kf * bf
        t_inv = _UnitLowerInverse.apply(torch.bmm(k_beta, kt))
        W, U = torch.bmm(t_inv, k_beta), torch.bmm(t_inv, vf * bf)
        u, states = _ChunkRecurrence.apply(W.view(N, G, C, K), U.view(N, G, C, V), kt.reshape(N, G, K, C),
                                           S.reshape(G, K, V))
        QK = torch.bmm(qf, kt).tril_()
        o = torch.baddbmm(torch.bmm(QK, u.view(N * G, C, V)), qf, states[:N].reshape(N * G, K, V))
        o = o.view(N, B, H, C, V).permute(1, 0, 3, 2, 4).reshape(B, N * C, H, V)[:, :T]
        return o.to(q.dtype), states[N].view(B, H, K, V)


def delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    *,
    mode: str = "chunk",
    backend: str = "auto",
    chunk_size: int = 64,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Delta rule over a sequence; returns (o [B, T, H, V], final state [B, H, K, V] float32).

    mode: 'chunk' (training, prefill) or 'recurrent' (decoding); backend: 'auto', 'torch', 'cpp' or 'fla'
    (see `resolve_backend`). 'chunk' on the cpp backend is the fused CPU kernel (`delta_rule_fused_cpu`);
    'recurrent' off CUDA is always the PyTorch token loop, the cheapest for a few tokens. On the fla backend the
    state is returned in float32 like the torch path; fla's chunk kernel needs 16-bit inputs, so float32 inputs
    take the recurrent fla kernel there.
    """
    if mode not in ("chunk", "recurrent"):
        raise ValueError(f"mode must be 'chunk' or 'recurrent', got {mode!r}")
    if mode == "recurrent" and q.device.type != "cuda" and backend in BACKENDS and backend != "fla":
        return delta_rule_recurrent(q, k, v, beta, initial_state, scale=scale)
    resolved = resolve_backend(backend, q.device)
    if resolved == "fla":
        check_delta_rule_args(q, k, v, beta, initial_state)  # the torch kernels check their own arguments
        from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule

        state = None if initial_state is None else initial_state.float()
        dtype = q.dtype  # fla asserts that q, k and v share one dtype
        q, k, v = (x.to(dtype).contiguous() for x in (q, k, v))
        if mode == "chunk" and q.dtype != torch.float32:
            o, final = chunk_delta_rule(q, k, v, beta.to(dtype), scale=scale, initial_state=state,
                                        output_final_state=True)
        else:
            o, final = fused_recurrent_delta_rule(q, k, v, beta.to(dtype), scale=scale, initial_state=state,
                                                  output_final_state=True)
        return o, final.float()
    if mode == "recurrent":
        return delta_rule_recurrent(q, k, v, beta, initial_state, scale=scale)
    if resolved == "cpp":
        return delta_rule_fused_cpu(q, k, v, beta, initial_state, scale=scale, chunk_size=chunk_size)
    return delta_rule_chunked(q, k, v, beta, initial_state, scale=scale, chunk_size=chunk_size)
