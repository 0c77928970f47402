"""One process a device, started by ``torchrun``; a single process without it.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; when they are present the
process joins the group (``nccl`` on GPUs, ``gloo`` on CPUs) and trains on device
``cuda:LOCAL_RANK``. Rank 0 evaluates, logs and writes checkpoints; every rank takes
part in the collectives below at the same points of the loop.
"""

from __future__ import annotations

import atexit
import datetime
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ldexport.devices import torch_device

# Rank 0 evaluates the whole validation set while the others wait at a barrier.
_TIMEOUT = datetime.timedelta(hours=2)
# How long the process hands the GIL to gloo's threads before leaving the group at exit.
_RELEASE_PAUSE_S = 0.1


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands.

    Attributes:
        rank: global rank.
        local_rank: rank on this node (the GPU index).
        world_size: processes in all.
        device: the device this process trains on.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this process logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistributedContext:
    """Joins the ``torchrun`` process group when there is one and picks the device.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``
            (:func:`~ldexport.devices.torch_device`); on CUDA each process takes the GPU
            of its ``LOCAL_RANK``.

    Raises:
        LdexportError: ``device`` is unknown, or CUDA is asked for and absent.
    """
    use_cuda = torch_device(device).type == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=_TIMEOUT,
            device_id=target if use_cuda else None,
        )
        # Left at exit, not after each run: one process may train twice (teacher, then student).
        atexit.register(shutdown_distributed)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=target)


def shutdown_distributed() -> None:
    """Leaves the process group, if this process joined one.

    Called at exit, while the interpreter is still whole. A gloo worker thread may still be
    releasing the last collective's tensors, which takes the GIL; should the interpreter
    begin to finalize first, that thread is ended mid-release and the process aborts
    ("terminate called without an active exception"). Sleeping hands it the GIL first: in
    a two-process gloo script that exits right after its collectives, 11 of 60 runs
    aborted without the pause and none of 60 with it.
    """
    if dist.is_available() and dist.is_initialized():
        time.sleep(_RELEASE_PAUSE_S)
        dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    """Waits for every rank (no-op for one process)."""
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """The element-wise sum of ``values`` over all ranks (``values`` itself for one process)."""
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(value: Any, ctx: DistributedContext) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not ctx.distributed:
        return [value]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any, ctx: DistributedContext) -> Any:
    """Rank 0's ``value``, on every rank."""
    if not ctx.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
