"""How the processes of one run work together under torchrun: which rank this is, joining the
process group, waiting for each other, and acting on decisions every rank shares.

Two process groups, each with a timeout set on purpose (seq2seq.config.DistributedConfig):

- the default group (NCCL on GPUs, gloo on CPUs) carries DDP's gradient
  all-reduces; a collective that waits longer than `dist_timeout` fails the run,
  so a process that hangs is found out;
- a gloo group on the host carries everything else: barriers while rank 0
  prepares data or validates (`prepare_timeout`, hours: rank 0 may encode a
  WMT-sized corpus meanwhile), objects such as the run directory, and the
  agreement to stop. Host tensors only, so none of it waits for the device.

Outside torchrun (or without torch.distributed) there is one process, rank 0
of 1, and every function here is a no-op that answers as that process would.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..config import DistributedConfig
from ..device import resolve_device
from ..errors import LostProcess, RanksDisagree, one_line

# The host-side group of this process (see the module docstring); None with one process.
_host_group: dist.ProcessGroup | None = None

T = TypeVar("T")


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of processes; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0: the one process that writes files and validates."""
    return rank_and_world_size()[0] == 0


def local_rank() -> int:
    """This process's rank on its own machine (torchrun's LOCAL_RANK); 0 outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def join_process_group(requested_device: str, cfg: DistributedConfig | None = None) -> torch.device:
    """The device `requested_device` names (seq2seq.device.resolve_device); under torchrun
    (WORLD_SIZE > 1), also join the process groups and take this rank's GPU (LOCAL_RANK)."""
    global _host_group
    cfg = cfg or DistributedConfig()
    device = resolve_device(requested_device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=cfg.dist_timeout))
    _host_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=cfg.prepare_timeout))
    return device


def leave_process_group() -> None:
    """Destroy the process groups, if this process joined them."""
    global _host_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _host_group = None


def _group() -> dist.ProcessGroup | None:
    """The host-side group: the one made by join_process_group, or the default group for
    code that initialised torch.distributed itself."""
    return _host_group


def wait_for_all_ranks() -> None:
    """A barrier: return once every rank has reached it (at once with a single process).
    Waits up to `prepare_timeout`, on the host."""
    if rank_and_world_size()[1] > 1:
        dist.barrier(group=_group())


def in_turns(work: Callable[[], T]) -> T:
    """`work()` on every rank, in three turns with every rank waiting between them: rank 0,
    then the first process of each other machine, then the rest.

    For work that fills a cache the later turns read: rank 0 writes the run's
    tokenizer and `datasets`' cache; each other machine's first process then
    finds that cache if the machines share it, or fills its own, and the rest
    of its processes read it instead of writing the same files at once.
    """
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return work()
    turn = 0 if rank == 0 else 1 if local_rank() == 0 else 2
    result: T | None = None
    for current in range(3):
        if turn == current:
            result = work()
        wait_for_all_ranks()
    return result  # type: ignore[return-value]


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` wrapped in DistributedDataParallel when there is more than one rank; else `model`."""
    if rank_and_world_size()[1] == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def seed_dropout(seed: int, step: int = 0) -> None:
    """Every rank built the same initial weights from the run's `seed`; from here on each draws
    its own dropout masks, or the ranks' batches would all be masked alike. Rank 0 goes on
    with the run's stream, so one process trains as it always did. `step`: a resumed rank
    that has no saved stream starts a fresh one there."""
    rank = rank_and_world_size()[0]
    if rank:
        torch.manual_seed(seed * 1_000_003 + rank + 7_919 * step)


def rank_zeros_object(value: Any) -> Any:
    """Rank 0's `value` (any picklable object), on every rank: for choices each rank would
    otherwise make for itself, such as a default run directory named after the clock."""
    if rank_and_world_size()[1] == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0, group=_group())
    return holder[0]


def all_ranks_objects(value: Any) -> list[Any]:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    world_size = rank_and_world_size()[1]
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value, group=_group())
    return gathered


def _rank_zeros_value(value: int) -> int:
    if rank_and_world_size()[1] == 1:
        return value
    flag = torch.tensor([value])
    dist.broadcast(flag, src=0, group=_group())
    return int(flag.item())


def rank_zeros_decision(decision: bool) -> bool:
    """Rank 0's yes or no (to stop, say), on every rank: ranks that disagree on stopping would hang DDP."""
    return bool(_rank_zeros_value(int(decision)))


def rank_zeros_signal(signum: int | None) -> int:
    """The signal number rank 0 received (0 for none), on every rank, so that all stop at the same update."""
    return _rank_zeros_value(signum or 0)


def sum_over_ranks(values: list[float]) -> list[float]:
    """Each of `values` summed over every rank (float64, on the host)."""
    if rank_and_world_size()[1] == 1:
        return values
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total, group=_group())
    return total.tolist()


class StopAgreement:
    """Whether to stop now, and how much of its training time the run has used, agreed by every
    rank at the same update without waiting for one another.

    Each update, every rank offers its own reasons (a signal it received, its
    clock past the deadline) and its share of the training time used to an
    all-reduce (max) that runs in the background, and acts on the one it offered
    at the update before, which has long finished: every rank sees the same
    answer at the same update, one update after the first rank had a reason.
    With one process the answer is its own, at once. The share is the furthest
    along, rank 0's as a rule (it alone reserves time for the final
    validations): a time-based learning rate must be the same on every rank.
    """

    def __init__(self) -> None:
        self._pending: tuple[Any, torch.Tensor] | None = None
        self.time_used = 0.0  # the share of the training time used, as every rank last agreed

    def start(self, time_used: float) -> None:
        """Agree `time_used`, each rank's share, at once: before the first update of an epoch,
        which no exchange has agreed yet. Blocks until every rank has offered its own."""
        if rank_and_world_size()[1] == 1:
            self.time_used = time_used
            return
        shares = torch.tensor([time_used], dtype=torch.float64)
        dist.all_reduce(shares, op=dist.ReduceOp.MAX, group=_group())
        self.time_used = shares.item()

    def exchange(self, signum: int | None, out_of_time: bool, time_used: float) -> tuple[int, bool]:
        """(signal number or 0, out of time) as every rank agrees for this update; `time_used`
        becomes the agreed share in `self.time_used`."""
        if rank_and_world_size()[1] == 1:
            self.time_used = time_used
            return signum or 0, out_of_time
        agreed = self.drain()
        reasons = torch.tensor([signum or 0, int(out_of_time), time_used], dtype=torch.float64)
        self._pending = (dist.all_reduce(reasons, op=dist.ReduceOp.MAX, group=_group(), async_op=True), reasons)
        return agreed

    def drain(self) -> tuple[int, bool]:
        """The answer of the exchange still running (none: no reason to stop); called before the
        loop ends, so that no collective is left running."""
        if self._pending is None:
            return 0, False
        work, reasons = self._pending
        self._pending = None
        work.wait()
        signum, out_of_time, self.time_used = reasons.tolist()
        return int(signum), bool(out_of_time)


def weights_digest(model: nn.Module) -> str:
    """sha256 of `model`'s parameters and buffers, names and bytes: equal only for identical weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gather_for_checkpoint(model: nn.Module, rng: Any, step: int) -> tuple[list[Any], tuple[str, ...]]:
    """Every rank's `rng` state in rank order, for rank 0 to save, and with several ranks every rank's
    `weights_digest` (empty with one), checked equal: a checkpoint saves rank 0's weights for all of
    them, so they must be the same (RanksDisagree otherwise)."""
    several = rank_and_world_size()[1] > 1
    # The digests cost a pass over the weights: only worth it with ranks that could differ.
    rngs, digests = zip(*all_ranks_objects((rng, weights_digest(model) if several else None)))
    if not several:
        return list(rngs), ()
    check_same_weights(list(digests), step)
    return list(rngs), digests


def check_same_weights(digests: list[str], step: int) -> None:
    """RanksDisagree unless every rank's `weights_digest` (in rank order) is rank 0's."""
    differ = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
    if differ:
        raise RanksDisagree(f"at step {step}, rank {differ[0]} holds other weights than rank 0 "
                            f"({len(differ)} of {len(digests)} ranks differ): the processes did not apply "
                            "the same updates")


@contextlib.contextmanager
def lost_processes_as_errors(what: str) -> Iterator[None]:
    """Under torchrun, a collective that fails because another process died, hung past its
    timeout or became unreachable ends this process with one LostProcess line naming `what`
    was going on, instead of a traceback per rank. torchrun then stops the job."""
    try:
        yield
    except RuntimeError as err:  # torch.distributed.DistError and the reducer's errors are RuntimeErrors
        rank, world_size = rank_and_world_size()
        if world_size == 1 or isinstance(err, torch.OutOfMemoryError) or not _is_collective_failure(err):
            raise
        raise LostProcess(f"rank {rank} of {world_size}: another process of the torchrun job failed or stopped "
                          f"answering during {what} ({one_line(err)})") from None


def _is_collective_failure(err: RuntimeError) -> bool:
    if isinstance(err, dist.DistError):
        return True
    # DDP's reducer re-raises the backend's error as a plain RuntimeError.
    text = str(err)
    return any(sign in text for sign in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset",
                                         "Broken pipe", "Timed out", "timed out", "ProcessGroup"))
