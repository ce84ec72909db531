"""Distributed helpers: init from torchrun's environment, rank-0 checks, gathers, eval sharding.

Gloo on CPU, NCCL on CUDA. Every helper also works (as a no-op) in a single process.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "is_distributed", "get_rank",
           "get_world_size", "is_main_process", "all_gather_objects", "barrier", "shard_indices",
           "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA is available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def _per_attempt(store: dist.Store) -> dist.Store:
    """torchrun's agent store outlives an elastic restart, and the process group writes the same keys
    (each rank's connection address) in every attempt: a restarted rank could read its peer's address
    from the dead attempt ("Connection refused"). One key prefix per restart keeps attempts apart."""
    return dist.PrefixStore(f"tcpnet/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a 1-process info."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        store, _, _ = next(dist.rendezvous("env://"))
        dist.init_process_group(backend=backend, store=_per_attempt(store), rank=rank, world_size=world_size)
        logger.info("process group: backend=%s rank=%d/%d device=%s", backend, rank, world_size, dev)
        if local_rank == 0:  # one line per node, so every node's terminal says what it runs
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            node = os.environ.get("GROUP_RANK", str(rank // max(local, 1)))
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            logger.info("node %s: ranks %d-%d of %d, rendezvous %s (%s)", node, rank, rank + local - 1,
                           world_size, where, os.environ.get("TORCHELASTIC_RUN_ID", "no run id"))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable, any size), in rank order; [obj] in a single process."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_indices(n: int, rank: int, world_size: int) -> List[int]:
    """Indices rank, rank+W, ... of range(n): every item exactly once over ranks, no padding
    (unlike DistributedSampler, which repeats items to even out the shards)."""
    return list(range(rank, n, world_size))
