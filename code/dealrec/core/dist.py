"""Which process this is under ``torchrun`` / ``accelerate launch``: the one place that reads
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (an initialised process group wins over them)."""

from __future__ import annotations

import os
from typing import NamedTuple

import torch


class DistInfo(NamedTuple):
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes shared outputs and logs."""
        return self.rank == 0


def dist_info() -> DistInfo:
    """This process's rank, the number of processes and its rank on this machine."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local)


def init_distributed() -> tuple[DistInfo, torch.device, bool]:
    """Join the process group when launched as several processes: (info, this process's device —
    ``cuda:<LOCAL_RANK>`` when CUDA is there, else the CPU —, whether this call created the group)."""
    info = dist_info()
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{info.local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    created = False
    if info.world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        created = True
    return dist_info(), device, created
