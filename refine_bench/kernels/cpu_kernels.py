"""The project's compiled CPU kernels (`cpu_kernels.cpp`), built on first use with torch's C++ extension
builder (as fla's Triton kernels are compiled on first use on a GPU):

- `delta_rule_fused_cpu`: the delta rule as one loop per (batch, head) that keeps the state in the core's
  cache and makes one pass over it per token, forward and backward (an autograd Function), so a training step
  costs the recurrent form's flops (plus one undo per token backward) instead of the 2.9x that the chunked WY
  form executes. Same results as `delta_rule_recurrent` within float32 rounding; same signature;
- the decode step, where per-operation overhead is the cost: `deltanet_decode_stack_cpu` (a whole stack of
  DeltaNet blocks), `deltanet_decode_step_cpu` (DeltaNet's token mixer up to o_proj), `rms_norm_rows_cpu` and
  `swiglu_rows_cpu` (no autograd).

The build needs a C++ compiler with OpenMP (gcc on Linux). `cpu_kernel_available()` says whether it worked;
when it did not, the reason is logged once and callers take their PyTorch paths.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
from pathlib import Path
from types import ModuleType

import torch
from torch.autograd.function import once_differentiable

from refine_bench.kernels.delta_rule_args import start_delta_rule
from refine_bench.kernels.validation import autocast_off, check_chunk_size

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
# -march=native: the build is for this machine's vector units; the module name below carries the CPU's
# feature flags, so a home directory shared by different machines never loads a build made for another CPU.
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)

_lock = threading.Lock()
_module: ModuleType | None = None
_failure: str | None = None


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _module_name() -> str:
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS + LDFLAGS).encode(), _cpu_signature().encode(),
                 torch.__version__.encode()):
        digest.update(part)
    return f"refine_bench_cpu_kernels_{digest.hexdigest()[:16]}"


def load_cpu_kernel() -> ModuleType:
    """The compiled module, built on first call (about 30 s; cached by torch under TORCH_EXTENSIONS_DIR or
    ~/.cache/torch_extensions and reused by later processes). Raises RuntimeError naming the cause when it
    cannot be built; the failure is remembered, so a process tries once."""
    global _module, _failure
    with _lock:
        if _module is not None:
            return _module
        if _failure is not None:
            raise RuntimeError(_failure)
        try:
            from torch.utils.cpp_extension import load

            log.info("building the compiled CPU kernels (once per machine, about 30 s)")
            _module = load(_module_name(), [str(SOURCE)], extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
                           verbose=False)
        except Exception as err:  # no compiler, no OpenMP, a read-only cache: the PyTorch path still works
            _failure = f"the compiled CPU kernels could not be built ({type(err).__name__}: {err})"
            log.warning("%s; using the PyTorch paths instead", _failure)
            raise RuntimeError(_failure) from err
        return _module


def cpu_kernel_available() -> bool:
    """True when the compiled CPU kernels are built (building them now if this process has not tried yet)."""
    try:
        load_cpu_kernel()
    except RuntimeError:
        return False
    return True


def compiled_cpu_applies(*tensors: torch.Tensor) -> bool:
    """Whether the no-autograd compiled kernels (the decode step's) serve these tensors: autograd off, every
    tensor float32 on the CPU, and the kernels built (building them if this process has not tried yet)."""
    return (not torch.is_grad_enabled() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and cpu_kernel_available())


def _float32(x: torch.Tensor) -> torch.Tensor:
    return x.float().contiguous()  # no copy for the usual float32 contiguous input


class _FusedDeltaRule(torch.autograd.Function):
    """Forward and backward by the compiled kernel, in float32 on the callers' [B, T, H, D] layout; gradients
    are returned in each input's dtype. Keeps q, k, beta, r = v - S^T k and the states every `every` tokens."""

    @staticmethod
    def forward(ctx, q, k, v, beta, initial_state, scale: float, every: int):
        qf, kf, vf, bf, s0 = (_float32(x) for x in (q, k, v, beta, initial_state))
        o, r, states = load_cpu_kernel().forward(qf, kf, vf, bf, s0, scale, every)
        ctx.save_for_backward(qf, kf, bf, r, states)
        ctx.meta = (scale, every, [x.dtype for x in (q, k, v, beta, initial_state)])
        return o, states[:, -1].view(s0.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o, grad_state):
        qf, kf, bf, r, states = ctx.saved_tensors
        scale, every, dtypes = ctx.meta
        grad_o = torch.zeros_like(r) if grad_o is None else _float32(grad_o)
        B, H, (K, V) = qf.shape[0], qf.shape[2], states.shape[-2:]
        grad_final = torch.zeros(B, H, K, V) if grad_state is None else _float32(grad_state)
        grads = load_cpu_kernel().backward(grad_o, grad_final, qf, kf, bf, r, states, scale, every)
        return (*(g.to(dt) for g, dt in zip(grads, dtypes)), None, None)


def delta_rule_fused_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The delta rule by the fused CPU kernel; same arguments and results as `delta_rule_recurrent` (o in q's
    dtype, the final state float32). The state is kept every `chunk_size` tokens for the backward, which
    recomputes the states in between by undoing one token at a time from the next kept one.

    Raises RuntimeError when the kernel cannot be built (see `cpu_kernel_available`).
    """
    (B, T, H, K, V), scale, state = start_delta_rule(q, k, v, beta, initial_state, scale)
    if q.device.type != "cpu":
        raise ValueError(f"delta_rule_fused_cpu needs CPU tensors, got {q.device}")
    check_chunk_size(chunk_size)
    if T == 0:
        return v.new_zeros(B, 0, H, V), state
    with autocast_off(q.device):
        o, final = _FusedDeltaRule.apply(q, k, v, beta, state, scale, chunk_size)
    return o.to(q.dtype), final


def deltanet_decode_step_cpu(
    x: torch.Tensor,
    projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    convolutions: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    conv_state: torch.Tensor,
    state: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_eps: float,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoded token of DeltaNet's token mixer up to o_proj, in one compiled call (float32 CPU tensors,
    no autograd): x [B, hidden]; projections (Wq, Wk, Wv, Wb) as nn.Linear weights; convolutions the q, k, v
    short-convolution weights [channels, 1, width]; conv_state [B, 2 key_dim + value_dim, width - 1]; state
    [B, H, K, V]; norm_weight the per-head output RMSNorm's. Returns (o [B, value_dim], new conv state, new
    state), what `DeltaNetAttention._decode_token` computes op by op."""
    return tuple(load_cpu_kernel().deltanet_decode_step(
        x.contiguous(), *projections, *convolutions, conv_state.contiguous(), state.contiguous(), norm_weight,
        norm_eps, scale))


def deltanet_decode_stack_cpu(
    x: torch.Tensor,
    block_tensors: list[torch.Tensor],
    conv_states: list[torch.Tensor],
    states: list[torch.Tensor],
    norm_eps: list[float],
    scale: float,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One decoded token through a whole stack of DeltaNet blocks in one compiled call (float32 CPU tensors, no
    autograd): per block x += o_proj(mixer(attn_norm(x))), then x += mlp(mlp_norm(x)). x [B, hidden] is the
    residual stream entering the first block; `block_tensors` holds 14 per block, in the order attn_norm, Wq, Wk,
    Wv, Wb, the q, k, v convolutions, o_norm, Wo, mlp_norm, gate, up, down; `norm_eps` 3 per block (attn_norm,
    o_norm, mlp_norm); the states as for `deltanet_decode_step_cpu`, one per block. Returns (x leaving the last
    block, new conv states, new recurrent states)."""
    return load_cpu_kernel().deltanet_decode_stack(
        x.contiguous(), block_tensors, [c.contiguous() for c in conv_states], [s.contiguous() for s in states],
        norm_eps, scale)


def rms_norm_rows_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim of a float32 CPU tensor in one compiled call (no autograd): a decoded token's
    norms cost a tensor operation each instead of five."""
    return load_cpu_kernel().rms_norm_rows(x.reshape(-1, x.shape[-1]).contiguous(), weight, eps).view(x.shape)


def swiglu_rows_cpu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """down(silu(gate x) * up x) over the last dim of a float32 CPU tensor in one compiled call (no autograd),
    with nn.Linear weights: a decoded token's MLP."""
    return load_cpu_kernel().swiglu_rows(x.reshape(-1, x.shape[-1]).contiguous(), gate, up, down).view(x.shape)
