"""Data-parallel training across processes (`torchrun`): which rank this is, and the few collectives the trainer
needs. Every rank holds the whole draft, runs the target on its own share of each global batch, and sums its
gradients with the others' before the (identical) optimizer step; so N ranks compute what one process computes
on the same global batch, up to the order of floating-point sums. NCCL on CUDA, gloo on CPU.

With FSDP2 (`shard`), each rank keeps only its slice of the trained parameters, of their gradients and so of
AdamW's states (three quarters of a draft's training memory in fp32); the slices are gathered for each forward
and the gradients reduce-scattered after its backward. The arithmetic is the same sum as above.

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


def shard(model: nn.Module) -> nn.Module:
    """FSDP2 (`fully_shard`) over all ranks, in place, as one unit. Frozen parameters (the target embedding the
    draft borrows) are left whole. Gradients are summed, not averaged: each rank's loss is already its share of
    the global batch's mean."""
    from torch.distributed.fsdp import fully_shard

    frozen = {p for p in model.parameters() if not p.requires_grad}
    fully_shard(model, ignored_params=frozen)
    model.set_gradient_divide_factor(1.0)
    model.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def held_elements(model: nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements in all) of the trained parameters: what sharding saves."""
    from torch.distributed.tensor import DTensor

    trained = [p for p in model.parameters() if p.requires_grad]
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in trained)
    return held, sum(p.numel() for p in trained)


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor of a sharded one (a collective: every rank must call it); any other tensor as is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(reference: Tensor, whole: Tensor) -> Tensor:
    """`whole` on `reference`'s device and, if `reference` is sharded, split the same way (a collective: every
    rank must call it, in the same order)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    whole = whole.to(device=reference.device, dtype=reference.dtype)
    if isinstance(reference, DTensor):
        return distribute_tensor(whole, reference.device_mesh, reference.placements)
    return whole


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
