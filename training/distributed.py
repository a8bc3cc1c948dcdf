"""The trainer's view of torchrun: this process's rank, agreement across ranks, resumable batches.

One process (no ``WORLD_SIZE`` above 1) needs no process group; under ``torchrun`` the group is
initialised here (NCCL on CUDA, gloo on the CPU) unless the caller already did.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass
class DistContext:
    """This process's place in the run; ``initialised_here``: tear the group down at the end."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistContext:
    """The context from torchrun's environment, initialising the process group when needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        made = True
    else:
        made = False
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")), initialised_here=made)


def any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (so all ranks stop at the same step)."""
    if ctx.world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


class ResumableBatches(Sampler[list[int]]):
    """Batches of this rank's DistributedSampler indices for one epoch, skipping the
    first ``start_batch`` (the ones a previous chunk already trained on)."""

    def __init__(self, indices: list[int], batch: int, start_batch: int) -> None:
        self.batches = [indices[i:i + batch] for i in range(0, len(indices) - batch + 1, batch)]
        self.start_batch = start_batch

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches[self.start_batch:])
