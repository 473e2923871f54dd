"""One model's training across processes: DistributedDataParallel under torchrun.

    torchrun --nproc_per_node=2 -m vidanom train ~/normal_videos -p cam1

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK in their environment;
`from_env()` reads them (None in a single process, where nothing here runs). Every rank fits the
same model: each optimiser step's batch is drawn alike on every rank (the same seeded generator) and
each rank computes the loss of its own part of it, so N processes draw the batch one process draws,
and DistributedDataParallel averages the gradients. Held-out evaluations and the decision to stop
are made on rank 0 and handed to the others; so is everything that writes to the project (the lock,
extraction, checkpoints, calibration, the published version): the other ranks only read it.

The process group is gloo on the CPU, NCCL on CUDA (each process on the GPU of its LOCAL_RANK).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .errors import VidanomError

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """This process's place among the processes that train one model together."""

    rank: int  # 0 .. world - 1; rank 0 alone writes
    world: int  # how many processes
    local_rank: int  # on this machine: which GPU is this process's

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env(env: dict[str, str] | None = None) -> Group | None:
    """The group torchrun (or srun with its variables) started this process in; None for one process."""
    env = dict(os.environ) if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise VidanomError(f"RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers ({exc})") from exc
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise VidanomError(f"RANK {rank} is outside 0..{world - 1} (WORLD_SIZE {world})")
    return Group(rank, world, local)


def is_main(group: Group | None) -> bool:
    return group is None or group.main


def rank(group: Group | None) -> int:
    return 0 if group is None else group.rank


@contextmanager
def joined(group: Group | None, device: torch.device) -> Iterator[torch.device]:
    """Within the block, this process is in the group's process group; yields the device it trains on
    (on CUDA, the GPU of its LOCAL_RANK). A process group set up by the caller is used as it is."""
    if group is None:
        yield device
        return
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", group.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if dist.is_initialized():
        yield device
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=group.rank, world_size=group.world)
    try:
        yield device
        dist.barrier()  # no rank tears the group down while another still talks in it
    finally:
        dist.destroy_process_group()
        # a DDP wrapper left in a reference cycle still holds the group: freed now, while the interpreter
        # is whole, not at its exit, where gloo's threads aborted the process now and then under load
        gc.collect()


def part(group: Group | None, n: int) -> slice:
    """This rank's share of n items of a batch: consecutive, sizes differing by one at most."""
    if group is None:
        return slice(None)
    return slice(n * group.rank // group.world, n * (group.rank + 1) // group.world)


def wrap(model: torch.nn.Module, group: Group | None, device: torch.device) -> torch.nn.Module:
    """The model to run the training steps through: DistributedDataParallel in a group (gradients
    averaged over the ranks in backward), else the model itself."""
    if group is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _broadcast(group: Group, value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(group: Group | None, fn: Callable[[], T]) -> T:
    """fn() on rank 0 alone; its result, or its error, on every rank (all ranks wait for it)."""
    if group is None:
        return fn()
    result: Any = None
    error: BaseException | None = None
    if group.main:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the other ranks, then raised here too
            error = exc
        _broadcast(group, (None, _portable(error)) if error is not None else (result, None))
        if error is not None:
            raise error
        return result
    result, error = _broadcast(group, None)
    if error is not None:
        raise error
    return result


def _portable(error: BaseException) -> BaseException:
    """What the other ranks raise for rank 0's error: the same one where it pickles, else a summary."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - whatever fails to pickle is described instead
        return VidanomError(f"rank 0 failed: {type(error).__name__}: {error}")


def any_rank(group: Group | None, flags: list[bool]) -> list[bool]:
    """Each flag, set if it is set on any rank (one all-reduce for all of them)."""
    if group is None:
        return flags
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]
