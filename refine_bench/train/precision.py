"""Mixed precision for training: float32 master weights, forwards under bf16 autocast on CUDA.

A bf16 copy of the weights cannot hold an AdamW step at lr 1e-6 (most updates round to nothing), so every
trainable weight is kept in float32 whatever the checkpoint's dtype, and only the compute runs in bf16.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from refine_bench.errors import UserInputError

log = logging.getLogger(__name__)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """`auto` -> bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise UserInputError(f"unknown precision {precision!r}; choose from auto, bf16, fp32")
    return precision


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The forward context of `precision` on `device`: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_master_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Cast the model's floating-point parameters and buffers to float32 in place (the master copy)."""
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        log.info("training keeps float32 master weights (the checkpoint is %s)",
                 next(p.dtype for p in model.parameters() if p.is_floating_point()))
        model.float()
    return model
