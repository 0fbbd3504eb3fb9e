"""Devices and processes: which device this process uses, and its place in a ``torchrun`` job.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`setup_device` joins the process group (NCCL on CUDA
with one GPU per rank, gloo on CPU). Every rank takes its slice of each batch (:func:`shard`) or a
contiguous block of rows (:func:`block`), sums what it computed with the others (:func:`all_sum`),
and only rank 0 writes (:func:`distill.io.is_main_process`). In a single process every helper is a no-op.
"""

from __future__ import annotations

import atexit
import datetime
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from distill.errors import DistillError


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:N`` are taken as given."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise DistillError(f"unknown device {spec!r} (expected auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillError(f"device {spec!r} requested but CUDA is not available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DistillError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def setup_device(spec: str) -> torch.device:
    """The device of this process, as :func:`resolve_device`; under ``torchrun`` also join the job.

    With ``WORLD_SIZE`` > 1 the process group is initialised once (NCCL when the device is CUDA, each
    rank on ``cuda:LOCAL_RANK``; gloo on CPU) and destroyed at exit.
    """
    device = resolve_device(spec)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            atexit.register(_leave)
    return device


# Set by :func:`succeeded` once this process's command has finished without an error.
_SUCCEEDED = False


def succeeded() -> None:
    """Mark this process's command as finished without an error: at exit its ranks meet before leaving
    the process group (:func:`_leave`). The CLI calls it after a command returns."""
    global _SUCCEEDED
    _SUCCEEDED = True


def _leave() -> None:
    """Leave the process group at exit. After a command that succeeded, gloo ranks first meet at a
    barrier: a rank that tore its group down while another still held a connection to it aborted that one
    ("terminate called without an active exception") once under load. A rank that failed leaves at once,
    so that a peer waiting on it in a collective fails too instead of hanging; the barrier's timeout
    bounds the wait of a rank whose peer failed after it finished."""
    if _SUCCEEDED and dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=120))
        except RuntimeError:
            pass  # a peer failed; nothing is left to wait for
    dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside a multi-process job."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(rows: Any) -> Any:
    """This rank's share of ``rows`` (every world-size-th row from its rank); all of them alone."""
    rank, size = world()
    return rows if size == 1 else rows[rank::size]


def block(n: int) -> slice:
    """This rank's contiguous share of ``range(n)`` (rank order keeps the order of the whole)."""
    rank, size = world()
    bounds = np.linspace(0, n, size + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if world()[1] == 1:
        return [obj]
    out: list[Any] = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world()[1] > 1:
        dist.barrier()


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Elementwise sum of ``values`` over ranks (``values`` itself in a single process)."""
    if world()[1] == 1:
        return values
    # NCCL reduces CUDA tensors only (each rank's current device); gloo takes CPU tensors.
    work = values.to("cuda") if dist.get_backend() == "nccl" else values.clone()
    dist.all_reduce(work)
    return work.to(values.device)
