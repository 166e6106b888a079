"""Multi-process training with `torchrun` (PyTorch DistributedDataParallel).

`torchrun --nproc_per_node=N` sets RANK, LOCAL_RANK and WORLD_SIZE; when they are present the
Trainer joins the process group (NCCL on GPUs, gloo on CPU), wraps the model in DDP, gives each
rank its slice of every global batch, and lets only rank 0 log and write files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float, device) -> float:
        """Average a Python float over all processes."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def any(self, flag: bool, device) -> bool:
        """True on every process if any process says True (e.g. a time budget ran out)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def init_distributed(device_type: str) -> DistributedContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistributedContext(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                              world_size=dist.get_world_size())


def shutdown_distributed(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
