"""How the processes of one run work together under torchrun: which rank this is, joining the
process group, waiting for each other, and acting on rank 0's decisions.

Outside torchrun (or without torch.distributed) there is one process, rank 0
of 1, and every function here is a no-op that answers as that process would.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .device import resolve_device


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of processes; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0: the one process that writes files and validates."""
    return rank_and_world_size()[0] == 0


def join_process_group(requested_device: str) -> torch.device:
    """The device `requested_device` names (seq2seq.device.resolve_device); under torchrun
    (WORLD_SIZE > 1), also join the process group and take this rank's GPU (LOCAL_RANK)."""
    device = resolve_device(requested_device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def wait_for_all_ranks() -> None:
    """A barrier: return once every rank has reached it (at once with a single process)."""
    if rank_and_world_size()[1] > 1:
        dist.barrier()


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` wrapped in DistributedDataParallel when there is more than one rank; else `model`."""
    if rank_and_world_size()[1] == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def rank_zeros_object(value: Any) -> Any:
    """Rank 0's `value` (any picklable object), on every rank: for choices each rank would
    otherwise make for itself, such as a default run directory named after the clock."""
    if rank_and_world_size()[1] == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_ranks_objects(value: Any) -> list[Any]:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    world_size = rank_and_world_size()[1]
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def _rank_zeros_value(value: int, device: torch.device) -> int:
    if rank_and_world_size()[1] == 1:
        return value
    flag = torch.tensor([value], device=device)
    dist.broadcast(flag, src=0)
    return int(flag.item())


def rank_zeros_decision(decision: bool, device: torch.device) -> bool:
    """Rank 0's yes or no (to stop, say), on every rank: ranks that disagree on stopping would hang DDP."""
    return bool(_rank_zeros_value(int(decision), device))


def rank_zeros_signal(signum: int | None, device: torch.device) -> int:
    """The signal number rank 0 received (0 for none), on every rank, so that all stop at the same update."""
    return _rank_zeros_value(signum or 0, device)
