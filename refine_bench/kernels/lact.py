"""LaCT's block-causal SwiGLU fast-weight update ("apply, then update" per large chunk), with a carried state.

Per head, the fast weight is a SwiGLU MLP f_W(x) = W1 (silu(W0 x) * (W2 x)) with W0, W2 [dh, d] and W1 [d, dh].
The sequence is cut into chunks of C tokens. Every query is answered by the weights as of the last completed
chunk; when a chunk completes, W takes one step that increases sum_t lr_t <f_W(k_t), v_t> over the chunk
(per-token learning rates, one per weight matrix), optionally with momentum (mean momentum of the chunk) and
Muon (Newton-Schulz orthogonalisation of the step), and every row of W is renormalised to its initial norm.

The state (a dict of batch-first tensors, see `init_lact_state`) holds the weights as of the last completed
chunk, the momentum, the initial row norms, the keys/values/learning rates of the partial current chunk and
the number of real tokens consumed ("seen"). Processing x in one call equals processing x[:t] then x[t:]
from the returned state for any t, mid-chunk included. Padded tokens (mask == 0) are dropped: they neither
count towards a chunk nor change the state. Everything computes in the state's dtype (float32 by default).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refine_bench.kernels.validation import autocast_off, check_chunk_size, check_tensor

# Newton-Schulz iteration coefficients (5 steps), as in LaCT's `zeropower_via_newtonschulz5`.
NS_COEFFICIENTS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
RENORM_EPS = 1e-5
WEIGHT_KEYS = ("w0", "w1", "w2")


def zeropower_newton_schulz5(g: torch.Tensor) -> torch.Tensor:
    """Approximately orthogonalise each matrix of g [..., m, n] with 5 Newton-Schulz steps (in g's dtype)."""
    x = g.transpose(-1, -2) if g.shape[-2] > g.shape[-1] else g
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for a, b, c in NS_COEFFICIENTS:
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.transpose(-1, -2) if g.shape[-2] > g.shape[-1] else x


def swiglu_apply(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f_W(x) for x [B, H, L, d] and weights [B, H, dh, d], [B, H, d, dh], [B, H, dh, d] -> [B, H, L, d]."""
    return (F.silu(x @ w0.transpose(-1, -2)) * (x @ w2.transpose(-1, -2))) @ w1.transpose(-1, -2)


def swiglu_chunk_step(
    w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ascent directions (dW0, dW1, dW2) of sum_t lr_t[i] <f_W(k_t), v_t> over one chunk.

    k, v [B, H, C, d]; lr [B, H, C, 3] (columns: W0, W1, W2). Written out by hand (no autograd) so the
    update is itself differentiable and cheap: 12 * d * dh flops per token.
    """
    gate = k @ w0.transpose(-1, -2)  # [B, H, C, dh]
    up = k @ w2.transpose(-1, -2)
    sig = torch.sigmoid(gate)
    act = F.silu(gate)
    d_hidden = v @ w1  # [B, H, C, dh]: gradient of <f, v> w.r.t. the hidden activation
    d_up = d_hidden * act
    d_gate = d_hidden * up * sig * (1 + gate * (1 - sig))
    dw1 = v.transpose(-1, -2) @ (act * up * lr[..., 1:2])
    dw0 = d_gate.transpose(-1, -2) @ (k * lr[..., 0:1])
    dw2 = d_up.transpose(-1, -2) @ (k * lr[..., 2:3])
    return dw0, dw1, dw2


def _update(state_w: dict, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor, mom: torch.Tensor | None,
            use_muon: bool, muon_dtype: torch.dtype | None) -> dict:
    """One chunk's step on weights {'w0','w1','w2', norms, momentum} -> new weights/momentum."""
    grads = swiglu_chunk_step(state_w["w0"], state_w["w1"], state_w["w2"], k, v, lr)
    out = {}
    mean_mom = None if mom is None else mom.mean(dim=-1)[..., None, None]  # [B, H, 1, 1]
    for name, dw in zip(WEIGHT_KEYS, grads, strict=True):
        if mean_mom is not None:
            dw = dw + state_w["m" + name[1]] * mean_mom
            out["m" + name[1]] = dw.to(state_w[name].dtype)
        if use_muon:
            dw = zeropower_newton_schulz5(dw if muon_dtype is None else dw.to(muon_dtype)).to(dw.dtype)
        w = state_w[name] + dw
        out[name] = w / (w.norm(dim=-1, keepdim=True) + RENORM_EPS) * state_w[name + "_norm"]
    return out


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def init_lact_state(
    w0: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    batch_size: int,
    chunk_size: int,
    use_momentum: bool,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Fresh state from the slow initial weights w0 [H, dh, d], w1 [H, d, dh], w2 [H, dh, d].

    Keys: w0/w1/w2 [B, H, ., .], w*_norm [B, H, rows, 1] (initial row norms), m0/m1/m2 (momentum, if used),
    pending chunk k/v [B, H, C, d], lr [B, H, C, 3], mom [B, H, C] (if used), seen [B] (real tokens consumed).
    """
    check_chunk_size(chunk_size)
    H, dh, d = w0.shape
    if tuple(w2.shape) != (H, dh, d) or tuple(w1.shape) != (H, d, dh):
        raise ValueError(
            f"fast weights must be w0 [H, dh, d], w1 [H, d, dh], w2 [H, dh, d]; got w0 {list(w0.shape)}, "
            f"w1 {list(w1.shape)}, w2 {list(w2.shape)}"
        )
    state: dict[str, torch.Tensor] = {}
    for name, w in (("w0", w0), ("w1", w1), ("w2", w2)):
        wb = w.to(dtype).unsqueeze(0).expand(batch_size, *w.shape)
        state[name] = wb
        state[name + "_norm"] = wb.norm(dim=-1, keepdim=True)
        if use_momentum:
            state["m" + name[1]] = torch.zeros_like(wb)
    dev = w0.device
    state["k"] = torch.zeros(batch_size, H, chunk_size, d, device=dev, dtype=dtype)
    state["v"] = torch.zeros(batch_size, H, chunk_size, d, device=dev, dtype=dtype)
    state["lr"] = torch.zeros(batch_size, H, chunk_size, 3, device=dev, dtype=dtype)
    if use_momentum:
        state["mom"] = torch.zeros(batch_size, H, chunk_size, device=dev, dtype=dtype)
    state["seen"] = torch.zeros(batch_size, device=dev, dtype=torch.long)
    return state


@dataclass
class LaCTPlan:
    """Where each new token lands in the chunk grid; computed once per forward and shared by all layers.

    uniform: no padding and every row has consumed the same number of tokens (then `offset` is that count
    modulo the chunk size and all bookkeeping is slicing); otherwise per-row tensors drive scatter/gather.
    """

    chunk_size: int
    seq_len: int
    uniform: bool
    offset: int  # tokens already pending in the current chunk (uniform case)
    slots: torch.Tensor | None  # [B, T] grid position of each new token (pads -> trash slot), non-uniform
    chunk_id: torch.Tensor | None  # [B, T] chunk of each new token (-1 at pads), non-uniform
    completed: torch.Tensor | None  # [B] number of chunks completed by this call, non-uniform
    num_updates: int  # max over rows of chunks completed by this call
    min_updates: int  # min over rows (rows below num_updates keep their weights for the rest)
    apply_ranges: list[tuple[int, int, int]]  # (chunk j, lo, hi): input positions answered by W_j
    grid_len: int  # length of the chunk grid buffer (non-uniform)


def make_lact_plan(seen: torch.Tensor, mask: torch.Tensor | None, seq_len: int, chunk_size: int) -> LaCTPlan:
    """Plan a call over `seq_len` new tokens for rows that consumed `seen` [B] tokens; mask [B, T] or None."""
    C = chunk_size
    seen_list = seen.tolist()
    pending = [s % C for s in seen_list]
    if mask is None and len(set(pending)) <= 1:
        n = pending[0] if pending else 0
        total = n + seq_len
        ranges = []
        for j in range((total + C - 1) // C):
            lo, hi = max(0, j * C - n), min(seq_len, (j + 1) * C - n)
            if hi > lo:
                ranges.append((j, lo, hi))
        return LaCTPlan(C, seq_len, True, n, None, None, None, total // C, total // C, ranges, 0)
    B = seen.shape[0]
    valid = torch.ones(B, seq_len, dtype=torch.bool, device=seen.device) if mask is None else mask.bool()
    idx = valid.long().cumsum(dim=1) - 1
    n = seen % C
    grid = n[:, None] + idx  # position in the chunk grid, the pending chunk starting at 0
    totals = n + valid.long().sum(dim=1)
    completed = totals // C
    num_updates = int(completed.max()) if B else 0
    grid_len = (num_updates + 1) * C
    slots = torch.where(valid, grid, torch.full_like(grid, grid_len))
    chunk_id = torch.where(valid, grid // C, torch.full_like(grid, -1))
    ranges = []
    cid = chunk_id.cpu()
    for j in range(int(cid.max()) + 1 if cid.numel() else 0):
        cols = (cid == j).any(dim=0).nonzero().flatten()
        if cols.numel():
            ranges.append((j, int(cols[0]), int(cols[-1]) + 1))
    return LaCTPlan(C, seq_len, False, 0, slots, chunk_id, completed, num_updates, int(completed.min()) if B else 0,
                    ranges, grid_len)


def _to_grid(pending: torch.Tensor, new: torch.Tensor, plan: LaCTPlan) -> torch.Tensor:
    """Pending chunk [B, H, C, ...] followed by the new tokens [B, H, T, ...] on the chunk grid."""
    if plan.uniform:
        head = pending[:, :, : plan.offset]
        return new if plan.offset == 0 else torch.cat([head, new], dim=2)
    B, H = new.shape[:2]
    tail = new.shape[3:]
    grid = torch.cat([pending, pending.new_zeros(B, H, plan.grid_len + 1 - pending.shape[2], *tail)], dim=2)
    index = plan.slots.view(B, 1, -1, *([1] * len(tail))).expand(B, H, -1, *tail)
    return grid.scatter(2, index, new)[:, :, : plan.grid_len]


def _next_pending(grid: torch.Tensor, plan: LaCTPlan) -> torch.Tensor:
    """The partial chunk left after this call, zero-filled to C: [B, H, C, ...]."""
    C = plan.chunk_size
    if plan.uniform:
        start = plan.num_updates * C
        part = grid[:, :, start:]
        if part.shape[2] == C:
            return part
        pad = part.new_zeros(*part.shape[:2], C - part.shape[2], *part.shape[3:])
        return torch.cat([part, pad], dim=2)
    B, H = grid.shape[:2]
    tail = grid.shape[3:]
    index = (plan.completed[:, None] * C + torch.arange(C, device=grid.device)).view(B, 1, C, *([1] * len(tail)))
    return grid.gather(2, index.expand(B, H, C, *tail))


def lact_swiglu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    state: dict[str, torch.Tensor],
    momentum: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    use_muon: bool = False,
    muon_dtype: torch.dtype | None = torch.bfloat16,
    plan: LaCTPlan | None = None,
    autocast_dtype: torch.dtype | None = None,
    compile: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Block-causal LaCT over new tokens, continuing from `state` (see `init_lact_state`).

    q, k, v [B, T, H, d]; lr [B, T, H, 3] (already positive: softplus applied); momentum [B, T, H] in [0, 1]
    (required iff the state carries momentum); mask [B, T] (1 = real token) or None.
    muon_dtype: dtype of the Newton-Schulz iteration; bfloat16 (the default) is what the LaCT repo always
    does (its models were trained so), None runs it in the state's dtype.
    autocast_dtype: None computes every matmul in the state's dtype (also under an enclosing autocast);
    torch.bfloat16 runs them under bf16 autocast, as the LaCT repo does on GPUs (the state stays float32).
    compile: run the chunk apply/update through torch.compile (worth it on CUDA for long runs).
    Returns (o [B, T, H, d] in q's dtype, new state). The input state is not modified.
    """
    B, T, H, d = q.shape
    C = state["k"].shape[2]
    check_tensor("q", q, [None, None, None, None], "[B, T, H, d]")
    check_tensor("k", k, [B, T, H, d], "[B, T, H, d] (same as q)")
    check_tensor("v", v, [B, T, H, d], "[B, T, H, d] (same as q)")
    check_tensor("lr", lr, [B, T, H, 3], "[B, T, H, 3]")
    check_tensor("state['k']", state["k"], [B, H, C, d], "[B, H, C, d]")
    use_momentum = "mom" in state
    if use_momentum != (momentum is not None):
        raise ValueError("momentum [B, T, H] must be given exactly when the state was created with use_momentum")
    if momentum is not None:
        check_tensor("momentum", momentum, [B, T, H], "[B, T, H]")
    if mask is not None and tuple(mask.shape) != (B, T):
        raise ValueError(f"mask must have shape [B, T] = [{B}, {T}], got {list(mask.shape)}")
    if plan is None:
        plan = make_lact_plan(state["seen"], mask, T, C)
    elif plan.chunk_size != C or plan.seq_len != T:
        raise ValueError(f"plan was made for chunk_size={plan.chunk_size}, T={plan.seq_len}; state has C={C}, T={T}")

    if autocast_dtype is None:
        precision = autocast_off(q.device)
    else:
        precision = torch.autocast(q.device.type, dtype=autocast_dtype)
    with precision:
        return _lact_swiglu(q, k, v, lr, state, momentum, mask, plan, use_momentum, use_muon, muon_dtype, compile)


def _lact_swiglu(q, k, v, lr, state, momentum, mask, plan: LaCTPlan, use_momentum: bool, use_muon: bool,
                 muon_dtype: torch.dtype | None, compile: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    B, T, H, d = q.shape
    C = state["k"].shape[2]
    dtype = state["w0"].dtype
    qh = q.to(dtype).transpose(1, 2)
    grid_k = _to_grid(state["k"], k.to(dtype).transpose(1, 2), plan)
    grid_v = _to_grid(state["v"], v.to(dtype).transpose(1, 2), plan)
    grid_lr = _to_grid(state["lr"], lr.to(dtype).transpose(1, 2), plan)
    grid_m = _to_grid(state["mom"], momentum.to(dtype).transpose(1, 2), plan) if use_momentum else None

    weights = {key: state[key] for key in state if key[0] in "wm" and key != "mom"}
    apply_fn, update_fn = (_compiled(swiglu_apply), _compiled(_update)) if compile else (swiglu_apply, _update)
    pieces: list[torch.Tensor] = []
    out = None if plan.uniform else qh.new_zeros(B, H, T, d)
    ranges = {j: (lo, hi) for j, lo, hi in plan.apply_ranges}
    for j in range(max(plan.num_updates, max(ranges, default=-1) + 1)):
        if j in ranges:
            lo, hi = ranges[j]
            y = apply_fn(weights["w0"], weights["w1"], weights["w2"], qh[:, :, lo:hi])
            if plan.uniform:
                pieces.append(y)
            else:
                sel = (plan.chunk_id[:, lo:hi] == j)[:, None, :, None]
                out = torch.cat([out[:, :, :lo], torch.where(sel, y, out[:, :, lo:hi]), out[:, :, hi:]], dim=2)
        if j < plan.num_updates:
            s = slice(j * C, (j + 1) * C)
            new = update_fn(weights, grid_k[:, :, s], grid_v[:, :, s], grid_lr[:, :, s],
                          None if grid_m is None else grid_m[:, :, s], use_muon, muon_dtype)
            if j >= plan.min_updates:  # some rows did not complete chunk j: they keep their weights
                keep = (plan.completed > j)[:, None, None, None]
                new = {key: torch.where(keep, val, weights[key]) for key, val in new.items()}
            weights.update(new)

    if plan.uniform:
        o = torch.cat(pieces, dim=2) if pieces else qh.new_zeros(B, H, 0, d)
    else:
        o = out
    new_state = dict(weights)
    new_state["k"] = _next_pending(grid_k, plan)
    new_state["v"] = _next_pending(grid_v, plan)
    new_state["lr"] = _next_pending(grid_lr, plan)
    if use_momentum:
        new_state["mom"] = _next_pending(grid_m, plan)
    real = T if mask is None else mask.long().sum(dim=1)
    new_state["seen"] = state["seen"] + real
    return o.transpose(1, 2).to(q.dtype), new_state


def lact_flops(batch_heads: int, d: int, dh: int, applied_tokens: int, updated_tokens: int) -> int:
    """Matmul flops of `lact_swiglu`: 6*d*dh per answered query, 12*d*dh per token in a completed chunk."""
    return batch_heads * d * dh * (6 * applied_tokens + 12 * updated_tokens)
