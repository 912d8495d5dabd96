"""Building blocks shared by the models: RMSNorm and the SwiGLU MLP (fla's key names)."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from refine_bench.kernels import compiled_cpu_applies, rms_norm_rows_cpu, swiglu_rows_cpu

# Up to this many rows (decoded tokens), a norm or MLP without autograd on the CPU takes the compiled kernels:
# there the cost is the number of tensor operations, not the arithmetic; more rows are a matmul's job.
COMPILED_MAX_ROWS = 4


class KernelChoice(Protocol):
    """What a layer asks its model's config, at each call, before taking a compiled CPU kernel."""

    @property
    def allows_compiled_cpu_kernels(self) -> bool: ...


def unhooked(*modules: nn.Module) -> bool:
    """Whether no module has a forward hook or pre-hook of its own: compiled code that computes a module without
    calling it would skip what the hook does."""
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def plain_linears(*modules: nn.Module) -> bool:
    """Whether every module is a bare nn.Linear without forward hooks: code that reads the weights directly
    (a fused decode step) would skip what an adapter subclass or a hook adds."""
    return all(type(m) is nn.Linear for m in modules) and unhooked(*modules)


def _compiled_rows(x: torch.Tensor, *weights: torch.Tensor, kernels: KernelChoice | None = None) -> bool:
    # the config is asked last: its attribute lookup (~1 us) is the dearest test, and training and prompts
    # (autograd on, many rows) end at the cheaper ones
    return (x.numel() <= COMPILED_MAX_ROWS * x.shape[-1] and compiled_cpu_applies(x, *weights)
            and (kernels is None or kernels.allows_compiled_cpu_kernels))


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 and returned in the input dtype.

    `kernels` (the model's config) is asked at each call whether the compiled CPU rows may serve it; without
    one they may."""

    def __init__(self, dim: int, eps: float = 1e-6, kernels: KernelChoice | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.kernels = kernels
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a decoded token passes through several of these per layer: one compiled call where it can, else
        # torch's fused op (the same formula)
        if _compiled_rows(x, self.weight, kernels=self.kernels):
            return rms_norm_rows_cpu(x, self.weight, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class SwiGLUMLP(nn.Module):
    """down(silu(gate(x)) * up(x)); `kernels` as for RMSNorm."""

    def __init__(self, hidden_size: int, intermediate_size: int, kernels: KernelChoice | None = None) -> None:
        super().__init__()
        self.kernels = kernels
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projections = (self.gate_proj, self.up_proj, self.down_proj)
        # the cheap test first (it ends at autograd on, i.e. in training), then no adapter, hook or bias that
        # the compiled MLP would skip
        if (_compiled_rows(x, *(p.weight for p in projections), kernels=self.kernels)
                and plain_linears(*projections) and all(p.bias is None for p in projections)):
            return swiglu_rows_cpu(x, *(p.weight for p in projections))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def swiglu_intermediate_size(hidden_size: int, hidden_ratio: float = 4) -> int:
    """fla's rule: 2/3 * hidden * ratio, rounded up to a multiple of 256 (2048 -> 5632)."""
    size = int(hidden_size * hidden_ratio * 2 / 3)
    return 256 * ((size + 255) // 256)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim (fla's in-kernel rule), in float32."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)
