"""Data parallelism on torch.distributed: FSDP2 (`fully_shard` per block and the root) or DDP.

A REFINE step runs a data-dependent number of forwards per sequence (the rollout scan cuts the sequence where
the entropies say, short sequences get NTP only), so ranks cannot be kept in lockstep forward by forward:

- DDP expects one forward per backward, so the whole grad-carrying computation of a sequence is one module
  (`SequenceLoss`) and that module is what DDP wraps; rollouts run on the bare model without grad. Gradients
  are all-reduced (bucketed) on a rank's last sequence of a mini-batch only (`no_sync` before).
- FSDP2 shards every block and the root. Within a phase (the rollout collection, one mini-batch) the
  parameters are gathered once and kept (`gathered`), so the forwards and backwards inside issue no
  collective; gradients accumulate unsynchronised and are reduce-scattered once, by a one-token forward and
  backward with zero loss that every rank runs (`reduce_gradients`). Parameters are resharded before the
  optimiser step, so optimiser state and gradients stay sharded.

Each rank takes every world-size-th sequence; every loss is already normalised by token counts over the whole
mini-batch, and both engines average gradients over ranks, so each rank's loss is scaled by the world size to
make the synchronised gradient the single-process gradient of the whole mini-batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from refine_bench.distributed import DistContext
from refine_bench.errors import UserInputError


class SequenceLoss(torch.nn.Module):
    """The grad-carrying loss of one sequence as a module, so DDP sees one forward per backward."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[torch.nn.Module], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return fn(self.model)


def resolve_parallel(mode: str, dist: DistContext) -> str | None:
    """The data-parallel engine: None on one rank; `auto` is fsdp on CUDA, ddp on CPU."""
    if not dist.enabled:
        return None
    if mode == "auto":
        return "fsdp" if dist.device.startswith("cuda") else "ddp"
    return mode


def check_world_size(batch_size: int, mini_batch: int, dist: DistContext) -> None:
    """Every rank must take the same number of sequences from each mini-batch (collectives must match)."""
    if dist.enabled and (batch_size % dist.world_size or mini_batch % dist.world_size):
        raise UserInputError(f"world size {dist.world_size} must divide the batch size ({batch_size}) and the "
                             f"mini-batch size ({mini_batch})")


class DataParallel:
    """The model as the optimiser and the loss see it: bare, FSDP2-sharded, or behind DDP."""

    def __init__(self, model: torch.nn.Module, mode: str | None, dist: DistContext) -> None:
        self.model = model
        self.mode = mode
        self.dist = dist
        self.loss_module: torch.nn.Module = SequenceLoss(model)
        if mode == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(torch.device(dist.device).type, (dist.world_size,))
            for block in _blocks(model):
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
        elif mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(dist.device).index] if dist.device.startswith("cuda") else None
            self.loss_module = DistributedDataParallel(self.loss_module, device_ids=ids)
        elif mode is not None:
            raise UserInputError(f"unknown parallel mode {mode!r}; choose from auto, fsdp, ddp")

    @property
    def loss_scale(self) -> float:
        """Both engines average gradients over ranks; the trainer's losses want them summed."""
        return float(self.dist.world_size)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """FSDP: gather the parameters once and keep them for every forward and backward inside (no
        collective there), then reshard. Other modes: nothing to do."""
        if self.mode != "fsdp":
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in self.model.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.unshard()
        self.model.set_reshard_after_forward(False)
        self.model.set_reshard_after_backward(False)
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)
            self.model.set_reshard_after_forward(True)
            self.model.set_reshard_after_backward(True)
            for unit in units:
                unit.reshard()

    @contextlib.contextmanager
    def sync(self, enabled: bool) -> Iterator[None]:
        """DDP: gradient all-reduce on (a rank's last sequence of a mini-batch) or off. FSDP synchronises in
        `reduce_gradients` instead."""
        if self.mode == "ddp" and not enabled:
            with self.loss_module.no_sync():
                yield
            return
        yield

    def reduce_gradients(self) -> None:
        """FSDP (inside `gathered`): reduce-scatter the gradients accumulated so far. Every rank runs the same
        one-token forward and backward with zero loss, so the collectives match whatever each rank computed."""
        if self.mode != "fsdp":
            return
        self.model.set_requires_gradient_sync(True)
        token = torch.zeros(1, 1, dtype=torch.long, device=next(self.model.parameters()).device)
        (self.model(token).logits.float().sum() * 0.0).backward()
        self.model.set_requires_gradient_sync(False)

    def loss(self, fn: Callable[[torch.nn.Module], torch.Tensor]) -> torch.Tensor:
        """Run `fn(model)` (the grad-carrying part of a sequence's loss) through the parallel engine."""
        return self.loss_module(fn)

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip the global gradient norm; returns the norm before clipping (inf/nan when not finite)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        return float(norm)


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a model (`model.model.layers`), each one FSDP unit."""
    backbone = getattr(model, "model", None)
    layers = getattr(backbone, "layers", None)
    if layers is None:
        raise UserInputError(f"{type(model).__name__} has no model.layers to shard with FSDP; use --parallel ddp")
    return list(layers)
