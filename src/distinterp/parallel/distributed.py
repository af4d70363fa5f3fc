"""The one place that talks to torch.distributed: process group set-up, rank facts, collectives.

Everything else asks a `Runtime` (or the Plan built from it) and never reads RANK itself.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    """This process's place in the job: rank, world size, local rank and compute device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # ranks on this node
    job_rank: int | None = None  # inside solo(): this process's rank in the whole job

    @property
    def spans_nodes(self) -> bool:
        """Ranks run on more than one node, so a rank-local path (a temp dir) is not shared."""
        return self.local_world_size < self.world_size

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_coordinator(self) -> bool:
        """Rank 0 owns every job-wide side effect: store creation, the progress display, analyses."""
        return self.rank == 0

    @property
    def shows_progress(self) -> bool:
        """Whether this process draws the live progress display: rank 0 of the job, so that ranks running
        their own shares under solo() do not each draw one."""
        return self.rank == 0 and not self.job_rank

    def default_device(self) -> torch.device:
        """cuda:LOCAL_RANK when CUDA is there, else CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """rank src's `obj` on every rank (any picklable object)."""
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def gather(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's `obj`, in rank order, on rank dst only (None elsewhere): no copy on the others."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _leave() -> None:
    """Destroy the process group runtime() created, at exit: a gloo group left to the interpreter's teardown
    can abort the process ("terminate called without an active exception") after its work is done."""
    if dist.is_initialized():
        dist.destroy_process_group()


_SOLO = [0]
"""How many solo() blocks this process is inside (a list: mutable without `global`)."""


@contextmanager
def solo() -> Iterator[None]:
    """Within this block runtime() answers a single process (rank 0 of 1, on this rank's device), so a rank
    can run its own share of a sweep's chains as an independent one-process sample(): no collective is
    called and the stores are byte for byte what any other layout writes. The process group stays."""
    _SOLO[0] += 1
    try:
        yield
    finally:
        _SOLO[0] -= 1


def runtime() -> Runtime:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); a single process otherwise
    (and inside solo()).

    Idempotent: a process group that already exists (the user's own, or ours) is used as it is.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if _SOLO[0]:
        job_rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return Runtime(local_rank=local_rank, job_rank=job_rank)
    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        return Runtime(dist.get_rank(), world_size, local_rank, local_world_size)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Runtime()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend)
    atexit.register(_leave)  # ours, so ours to destroy: its backend threads must not outlive the interpreter
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    return Runtime(dist.get_rank(), dist.get_world_size(), local_rank, local_world_size)
