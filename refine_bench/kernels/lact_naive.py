"""The naive reference for `lact_swiglu`: a plain loop per batch row and head, the chunk step's gradient taken
by autograd instead of written out, Newton-Schulz one matrix at a time. Slow; for tests only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine_bench.kernels.lact import NS_COEFFICIENTS, RENORM_EPS


def newton_schulz5_naive(g: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately orthogonalise one matrix g [m, n] (5 Newton-Schulz steps, in `dtype` if given)."""
    if dtype is not None:
        return newton_schulz5_naive(g.to(dtype)).to(g.dtype)
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = x / (x.norm() + 1e-7)
    for a, b, c in NS_COEFFICIENTS:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def _swiglu(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (F.silu(x @ w0.T) * (x @ w2.T)) @ w1.T


def lact_swiglu_naive(
    w0: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    momentum: torch.Tensor | None = None,
    *,
    chunk_size: int,
    use_muon: bool = False,
    muon_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """LaCT from a fresh state: per chunk, answer the chunk's queries with the current fast weights, then (if
    the chunk is complete) step each W_i along the gradient of sum_t lr_t[i] <f_W(k_t), v_t>, add momentum
    (the chunk's mean momentum times the previous step), orthogonalise with Muon, renormalise rows.

    Initial weights w0 [H, dh, d], w1 [H, d, dh], w2 [H, dh, d]; q, k, v [B, T, H, d]; lr [B, T, H, 3];
    momentum [B, T, H] or None. Returns (o [B, T, H, d], final [w0, w1, w2] each [B, H, ., .]).
    Differentiable with respect to every input.
    """
    B, T, H, d = q.shape
    rows, finals = [], []
    with torch.enable_grad():
        for b in range(B):
            heads, weights = [], []
            for h in range(H):
                W = [w[h] for w in (w0, w1, w2)]
                norms = [w.norm(dim=1, keepdim=True) for w in W]
                steps = [torch.zeros_like(w) for w in W]
                outs = []
                for start in range(0, T, chunk_size):
                    end = min(start + chunk_size, T)
                    outs.append(_swiglu(*W, q[b, start:end, h]))
                    if end - start < chunk_size:
                        break
                    leaves = [w if w.requires_grad else w.detach().requires_grad_(True) for w in W]
                    new = []
                    for i in range(3):
                        obj = (lr[b, start:end, h, i] * (_swiglu(*leaves, k[b, start:end, h]) * v[b, start:end, h])
                               .sum(-1)).sum()
                        (step,) = torch.autograd.grad(obj, [leaves[i]], create_graph=True)
                        if momentum is not None:
                            step = step + steps[i] * momentum[b, start:end, h].mean()
                            steps[i] = step
                        if use_muon:
                            step = newton_schulz5_naive(step, muon_dtype)
                        w = leaves[i] + step
                        new.append(w / (w.norm(dim=1, keepdim=True) + RENORM_EPS) * norms[i])
                    W = new
                heads.append(torch.cat(outs) if outs else q.new_zeros(0, d))
                weights.append(W)
            rows.append(torch.stack(heads, dim=1))
            finals.append(weights)
    o = torch.stack(rows)
    final = [torch.stack([torch.stack([finals[b][h][i] for h in range(H)]) for b in range(B)]) for i in range(3)]
    if not any(t.requires_grad for t in (w0, w1, w2, q, k, v, lr) + ((momentum,) if momentum is not None else ())):
        o, final = o.detach(), [w.detach() for w in final]
    return o, final
