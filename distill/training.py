"""Plumbing every training stage shares: seed, device, run directories, checkpoints, logging.

A run directory looks like::

    RUN/config.json     what the run is ("kind") and the resolved config that rebuilds it
    RUN/metrics.json    best validation epoch, validation and test metrics at that epoch
    RUN/best/           checkpoint of the best validation epoch (what later stages load)
    RUN/last/           checkpoint of the latest epoch (what --resume continues from)
    RUN/tb/             TensorBoard scalars

A checkpoint directory holds ``model.safetensors`` (only what was trained), ``config.json`` (the
run's config, with its kind and the dataset fingerprint) and ``state.pt`` (epoch, optimizer,
scheduler, early-stopping and RNG state: plain tensors and numbers, loadable with
``weights_only=True``). Checkpoints are written to a temporary directory and renamed when whole.

Multi-process runs: under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`setup_device` joins the process
group (NCCL on CUDA with one GPU per rank, gloo on CPU). Every rank takes its slice of each batch
(:func:`shard`) and of the evaluation users, metrics are summed over ranks, and only rank 0 writes
logs, checkpoints and results.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distill.errors import DistillError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "state.pt"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:N`` are taken as given."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DistillError(f"unknown device {spec!r} (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillError(f"device {spec!r} requested but CUDA is not available here")
    return device


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` job, or the only process: the one that writes logs and checkpoints.

    A ``RANK`` variable outside a multi-process job (``WORLD_SIZE`` unset or 1) does not count.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("WORLD_SIZE", "1")) == 1 or int(os.environ.get("RANK", "0")) == 0


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
            atexit.register(dist.destroy_process_group)
    return device


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


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file so a reader never sees half of it (rank 0 only)."""
    if not is_main_process():
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DistillError(f"{what}: {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DistillError(f"{what}: {path} is not valid JSON ({e})") from None


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool = False) -> Path:
    """Create a run directory, refusing to clobber one unless resuming or told to overwrite.

    Every rank of a multi-process job checks, then rank 0 alone creates or clears the directory.
    """
    run = Path(path)
    clear = False
    if run.exists() and any(run.iterdir()):
        if resume:
            if not (run / "last" / STATE).is_file():
                raise DistillError(f"cannot resume: {run} has no checkpoint at {run / 'last'}")
            return run
        if not overwrite:
            raise DistillError(
                f"run directory {run} already exists (use --resume to continue it, or another --output)"
            )
        clear = True
    elif resume:
        state = "is empty" if run.exists() else "does not exist"
        raise DistillError(f"cannot resume: run directory {run} {state}")
    barrier()  # every rank has looked before rank 0 changes anything
    if is_main_process():
        if clear:
            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
    barrier()
    return run


def save_checkpoint(
    path: Path,
    weights: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
) -> None:
    """Write weights, config and (optionally) trainer state to ``path``, atomically (rank 0 only)."""
    if not is_main_process():
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if state is not None:
        torch.save(_to_cpu(state), tmp / STATE)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: Path, *, with_state: bool = False
) -> tuple[dict[str, torch.Tensor], dict, dict | None]:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing or corrupt one is a DistillError."""
    if not (path / WEIGHTS).is_file():
        raise DistillError(f"no checkpoint at {path} (missing {WEIGHTS})")
    try:
        weights = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise DistillError(f"checkpoint {path / WEIGHTS} is corrupt: {e}") from None
    config = read_json(path / CONFIG, "checkpoint config")
    state = None
    if with_state:
        try:
            state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise DistillError(f"checkpoint {path} has no trainer state ({STATE})") from None
        except Exception as e:  # torch raises many types for a damaged pickle
            raise DistillError(f"trainer state {path / STATE} is corrupt: {str(e).splitlines()[0]}") from None
    return weights, config, state


def rng_state() -> dict[str, Any]:
    """torch's RNG state (training draws all randomness from torch), for exact resumption."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def loop_state(
    epoch: int, history: list, stopper: EarlyStopping, shuffle: torch.Generator, **stateful: Any
) -> dict[str, Any]:
    """What ``--resume`` needs after ``epoch``: the history, early stopping, the shuffle generator,
    every RNG, and the ``state_dict()`` of each of ``stateful`` (optimizer, scheduler)."""
    return {
        "epoch": epoch,
        "history": history,
        "early_stopping": stopper.state_dict(),
        "shuffle": shuffle.get_state(),
        "rng": rng_state(),
        **{name: obj.state_dict() for name, obj in stateful.items()},
    }


def restore_loop_state(
    state: Mapping[str, Any], stopper: EarlyStopping, shuffle: torch.Generator, **stateful: Any
) -> tuple[int, list]:
    """Undo :func:`loop_state` into live objects; returns ``(first epoch to run, history so far)``."""
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    stopper.load_state_dict(state["early_stopping"])
    shuffle.set_state(state["shuffle"])
    set_rng_state(state["rng"])
    return int(state["epoch"]) + 1, list(state["history"])


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class EarlyStopping:
    """Tracks the best value of a validation metric (higher is better) and when to stop."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = -math.inf
        self.best_epoch = -1
        self.bad_evals = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record an evaluation; True when it is a new best."""
        if value > self.best:
            self.best, self.best_epoch, self.bad_evals = value, epoch, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_evals = int(state["bad_evals"])


class Logger:
    """TensorBoard scalars under ``RUN/tb`` on the main process; a no-op elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self._writer = None
        if enabled and is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(run_dir / "tb"))

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"{prefix}{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# Without a terminal, a progress line goes to the log at most this often (seconds).
HEARTBEAT_SECONDS = 60.0


def progress(total: int, desc: str, enabled: bool = True):
    """Progress of a loop on the main process: a tqdm bar on a terminal, otherwise a log line at most
    every :data:`HEARTBEAT_SECONDS` (a long export in a log file still says where it is)."""
    from tqdm.auto import tqdm

    if not (enabled and is_main_process()):
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    return _Heartbeat(total, desc)


class _Heartbeat:
    """The part of tqdm's interface the loops use (``update``, ``set_postfix``, ``n``), as log lines."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n = total, desc, 0
        self._postfix = ""
        self._started = self._last = time.perf_counter()

    def __enter__(self) -> _Heartbeat:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def set_postfix(self, **values: object) -> None:
        self._postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last < HEARTBEAT_SECONDS or self.n >= self.total:
            return
        self._last = now
        rate = self.n / (now - self._started)
        eta = (self.total - self.n) / rate if rate > 0 else math.inf
        line = f"{self.desc}: {self.n:,}/{self.total:,} ({self.n / self.total:.0%}), {rate:.1f}/s, "
        log(line + f"{eta / 60:.1f} min left" + (f"; {self._postfix}" if self._postfix else ""))


def log(message: str) -> None:
    """One line on stderr from the main process, without breaking a progress bar."""
    if is_main_process():
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)
