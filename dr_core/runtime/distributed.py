"""PyTorch DDP under torchrun: process-group set-up, sharding and gathering of evaluation results.

One process per device. Only rank 0 writes checkpoints, dvclive files and the history; every
metric is computed on the predictions of all ranks gathered in dataset order, so the logged
numbers equal those of a single process over the full validation split.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Backend: NCCL on CUDA, gloo on CPU. Without torchrun's variables, a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group", info.rank, world, backend)
    return info


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, without padding (evaluation: no duplicates)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def gather_in_order(info: DistInfo, indices: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """All ranks' rows of ``arrays`` concatenated and put back in dataset order by ``indices``."""
    if not info.enabled:
        return arrays
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, (indices, arrays))
    order = np.concatenate([p[0] for p in parts])
    merged = [np.concatenate([p[1][i] for p in parts]) for i in range(len(arrays))]
    sort = np.argsort(order, kind="stable")
    return tuple(m[sort] for m in merged)


def all_ranks_sum(info: DistInfo, value: float) -> float:
    """Sum of a Python number over ranks."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())
