"""torch.distributed for every layer: the process group torchrun (or accelerate launch) describes, the device
of each rank, round-robin sharding, collectives, and printing from rank 0 only.

One `DistContext` describes this process; a single process is the world of one and every collective is a
no-op there, so callers never branch on whether they run distributed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the world: rank, world size, and the device its collectives use."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"  # this rank's compute device; nccl collectives need CUDA tensors, gloo CPU ones

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> range:
        """The indices 0..n-1 this rank handles (round-robin)."""
        return range(self.rank, n, self.world_size)

    def _all_reduce(self, tensor: torch.Tensor, op) -> torch.Tensor:
        if self.enabled:  # moved to the collective's device and back when needed
            moved = tensor.to(self.device)
            dist.all_reduce(moved, op=op)
            tensor.copy_(moved)
        return tensor

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks, in place."""
        return self._all_reduce(tensor, dist.ReduceOp.SUM)

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Maximum of `tensor` over ranks, in place."""
        return self._all_reduce(tensor, dist.ReduceOp.MAX)

    def broadcast_object(self, value):
        """Rank 0's `value` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def print(self, *args, **kwargs) -> None:
        """print() on rank 0 only, so a run under torchrun prints each line once."""
        if self.is_main:
            print(*args, **kwargs)


def resolve_device(device: str | None) -> str:
    """`auto` (or None) -> cuda when available, else cpu; a cuda request without CUDA falls back with a warning."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available; using the CPU", device)
        return "cpu"
    return str(device)


def init_distributed(device: str | None = "auto") -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU. Each CUDA rank
    takes the GPU LOCAL_RANK. A single process gets the world of one."""
    device = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device.startswith("cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext(0, 1, device)
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return DistContext(rank, world, device)


def shutdown_distributed(barrier: bool = True) -> None:
    """Leave the process group, if this process joined one: after a barrier when every rank is expected to get
    here (no rank tears down its transport while another still talks to it), then destroy it (exiting with
    gloo's threads alive can abort the process)."""
    if dist.is_available() and dist.is_initialized():
        try:
            if barrier:
                dist.barrier()
        finally:
            dist.destroy_process_group()
