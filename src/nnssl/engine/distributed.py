"""torch.distributed on one node (``-num_gpus N``: ``torch.multiprocessing.spawn``) or under torchrun.

Under torchrun (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set) the environment is used as is. With
``-num_gpus N`` we start N processes with ``MASTER_ADDR=localhost`` and ``MASTER_PORT`` from the
environment or a free port. The backend is NCCL on CUDA and gloo on CPU.

The total batch is split over ranks as evenly as possible (8 over 3 -> 3, 3, 2). Gradients are
averaged with weights ``b_r / B``: the engine multiplies each rank's mean loss by ``b_r * W / B`` before
``backward`` so that DDP's plain mean over ``W`` ranks equals the gradient of the global-batch mean loss.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnssl.data.loader import split_batch  # noqa: F401 - re-exported: the engine splits batches like the loader

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size and local rank (one process: 0, 1, 0)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.is_distributed and dist.is_initialized():
            dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or a compatible launcher) set the rank variables."""
    return all(v in os.environ for v in TORCHRUN_VARIABLES)


def torchrun_context() -> DistContext:
    """The :class:`DistContext` described by torchrun's environment variables."""
    return DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def backend_for(device: torch.device | str) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group(ctx: DistContext, device: torch.device | str, timeout_minutes: float = 25.0) -> None:
    """Join the process group of ``ctx`` (no-op for a single process)."""
    if not ctx.is_distributed or dist.is_initialized():
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend_for(device),
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )


def destroy_process_group() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def _spawn_entry(local_rank: int, fn: Callable[..., Any], world_size: int, args: tuple) -> None:
    fn(DistContext(local_rank, world_size, local_rank), *args)


def spawn(fn: Callable[..., Any], world_size: int, args: tuple = ()) -> None:
    """Run ``fn(ctx, *args)`` in ``world_size`` processes on this node (``fn`` must be importable)."""
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    mp.spawn(_spawn_entry, args=(fn, world_size, args), nprocs=world_size, join=True)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (identity for one process)."""
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
