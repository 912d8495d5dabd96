"""torch.distributed for the trainer: process-group set-up from torchrun's environment, gradient sums.

The trainer does not wrap the model in DDP: a REFINE step runs several forwards per backward (entropy
pass, snapshots, sampling, scoring), which DDP's one-forward-per-backward hooks do not fit. Each rank
accumulates its sequences' gradients (already normalised by the global token counts), then the gradients
are summed across ranks with all_reduce, which is exactly the single-process gradient of the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"  # where collectives run: nccl needs CUDA tensors, gloo CPU ones

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> range:
        """The indices 0..n-1 this rank handles (round-robin)."""
        return range(self.rank, n, self.world_size)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place (moved to the collective's device and back when needed)."""
        if self.enabled:
            moved = tensor.to(self.device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved)
        return tensor

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum every parameter's gradient over ranks (one flat buffer, one collective)."""
        if not self.enabled:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    cuda = device.startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    collective_device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu"
    return DistContext(dist.get_rank(), dist.get_world_size(), collective_device)
