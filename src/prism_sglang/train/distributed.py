"""Data-parallel training across processes (`torchrun`): which rank this is, and the few collectives the trainer
needs. Every rank holds the whole draft, runs the target on its own share of each global batch, and sums its
gradients with the others' before the (identical) optimizer step; so N ranks compute what one process computes
on the same global batch, up to the order of floating-point sums. NCCL on CUDA, gloo on CPU.

A rank that dies ends the job: torchrun stops the others, and a collective that waits on a dead peer gives up
after `timeout` instead of hanging.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """In place, summed over ranks (a no-op for one process)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_gradients(self, module: nn.Module) -> None:
        """Every rank's gradients summed, in one flat buffer (missing gradients count as zeros)."""
        if not self.distributed:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Rank 0's weights everywhere: every rank starts from the same draft whatever its seed did."""
        if self.distributed:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def world_from_env() -> World:
    """The world torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); one process without them."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {size}")
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_world(device: str, timeout_s: float = 600.0) -> World:
    """Join the process group torchrun set up (NCCL on CUDA, each rank on its own GPU; gloo on CPU)."""
    world = world_from_env()
    if not world.distributed or dist.is_initialized():
        return world
    if device.startswith("cuda"):
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                            timeout=dt.timedelta(seconds=timeout_s))
    return world


def rank_device(device: str, world: World) -> str:
    """`cuda` means this rank's GPU (LOCAL_RANK); anything else as given."""
    return f"cuda:{world.local_rank}" if device == "cuda" and world.distributed else device


def close_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
