"""Process-group helpers for single-process and ``torchrun`` (DDP) runs."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


#: Environment variable: seconds a collective may wait for the other ranks before it fails.
TIMEOUT_ENV = "TRANSCODER_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


def dist_timeout() -> datetime.timedelta:
    """The process group's collective timeout: ``$TRANSCODER_DIST_TIMEOUT_S`` seconds (default 1800).

    A rank whose peer died stops waiting after this long (gloo raises; NCCL's watchdog aborts the
    process) instead of holding its GPU forever. It must exceed the longest stretch one rank works
    alone while the others wait at a collective (rank 0 writing a checkpoint, a validation pass).
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def init_distributed(device: str | None = None) -> DistEnv:
    """Start the process group when launched by ``torchrun`` (NCCL on GPUs, gloo on CPU).

    ``device`` forces ``"cpu"`` or ``"cuda"``; by default CUDA is used when present. Collectives time
    out after :func:`dist_timeout`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    timeout = dist_timeout()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout,
                                device_id=torch_device if use_cuda else None)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def check_same_on_all_ranks(value: Any, what: str, hint: str = "") -> None:
    """Raise on every rank if ``value`` (any picklable object) differs between ranks (a collective)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    if any(g != gathered[0] for g in gathered):
        raise RuntimeError(f"{what} differs between ranks (per rank: {gathered}){'; ' + hint if hint else ''}")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in one process) and return it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Max of ``tensor`` over ranks in place (no-op in one process) and return it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor
