"""Multi-process runs started by `torchrun`: which rank this process is, which device it owns, and the one
collective a batch needs (rank 0 shares the job list). Without torchrun everything here is a no-op for a
single process. torch.distributed is imported only when a process group is really needed.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the process group is initialised
from them (`env://`) with nccl when the ranks render on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ca2vdm_cli.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: `rank` of `world_size` processes, `local_rank` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Ranks:
        """The torchrun variables; a single process when they are absent."""
        env = dict(os.environ) if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise InputError(
                "RANK / WORLD_SIZE / LOCAL_RANK must be integers; start multi-process runs with torchrun"
            ) from None
        if not 0 <= rank < world:
            raise InputError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
        return cls(rank, world, local)


def rank_device(ranks: Ranks, requested: str) -> torch.device:
    """The device of this rank. Alone: `requested` as `runtime.resolve_device` reads it. Under torchrun
    each rank owns cuda:LOCAL_RANK (`auto` with CUDA, or `cuda`), or the CPU (`cpu`, or `auto` without CUDA);
    a fixed `cuda:i` would put every rank on one GPU and is refused."""
    from ca2vdm_cli.engine.runtime import resolve_device

    name = requested.strip().lower()
    if not ranks.distributed or name == "cpu":
        return resolve_device(name)
    if name.startswith("cuda:"):
        raise InputError(
            f"--device {name}: under torchrun each rank uses its own GPU, cuda:LOCAL_RANK; pass --device "
            "cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    if name not in ("auto", "cuda") or not torch.cuda.is_available():
        return resolve_device(name)  # auto: the CPU; cuda or an unknown name: the usual error
    count = torch.cuda.device_count()
    if ranks.local_rank >= count:
        raise InputError(
            f"rank {ranks.rank} has LOCAL_RANK {ranks.local_rank} but this node has {count} CUDA device(s); "
            f"use --nproc-per-node={count} or less, or --device cpu"
        )
    return torch.device("cuda", ranks.local_rank)


@contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """Join the torchrun process group for the duration of the block (nothing to do for one process)."""
    if not ranks.distributed:
        yield
        return
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl's collectives run on the current device
    dist.init_process_group(backend=backend, init_method="env://")
    logger.debug("rank %d/%d joined the %s process group", ranks.rank, ranks.world_size, backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def share_from_rank0(value: Any, ranks: Ranks, device: torch.device) -> Any:
    """`value` as rank 0 has it, on every rank (a picklable object; other ranks pass None)."""
    if not ranks.distributed:
        return value
    import torch.distributed as dist

    box = [value if ranks.rank == 0 else None]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]
