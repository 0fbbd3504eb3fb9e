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

Only rank 0 of a multi-process job writes (see :mod:`distill.dist`).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distill.data import Dataset
from distill.dist import all_sum, barrier, is_main_process
from distill.errors import DistillError
from distill.metrics import MASKING_NOTE
from distill.outputs import claim, clean_stale, kind_of, remove_dir

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "state.pt"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file so a reader never sees half of it (rank 0 only)."""
    if not is_main_process():
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; a missing file, bad JSON or another JSON value is a DistillError."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DistillError(f"{what}: {path} does not exist") from None
    except IsADirectoryError:
        raise DistillError(f"{what}: {path} is a directory, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DistillError(f"{what}: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DistillError(f"{what}: {path} is not a JSON object (it holds a {type(data).__name__})")
    return data


def check_dataset(config: Mapping[str, Any], data: Dataset, run_dir: Path) -> None:
    """A run only scores the dataset it was trained on: the fingerprints in its config and ``data`` agree."""
    trained_on = config.get("dataset", {}).get("fingerprint")
    if trained_on != data.fingerprint:
        raise DistillError(
            f"{run_dir} was trained on another dataset (fingerprint {trained_on}) than {data.path} "
            f"(fingerprint {data.fingerprint})"
        )


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool = False) -> Path:
    """Create a run directory, refusing to clobber one unless resuming or told to overwrite.

    A directory an unfinished run left without a resumable checkpoint (killed or failed before its first
    epoch's ``RUN/last`` was written, perhaps after its ``RUN/best``) is started afresh without
    ``overwrite``; ``overwrite`` replaces only a run distill wrote (see
    :func:`distill.outputs.claim`). Temporary directories a killed run left inside are removed.
    Every rank of a multi-process job checks, then rank 0 alone creates or clears the directory.
    """
    run = Path(path)
    if is_main_process():
        clean_stale(run)  # first: it may put back a checkpoint a kill left renamed aside
    barrier()
    resumable = (run / "last" / STATE).is_file()
    if resume:
        if not run.is_dir() or not any(run.iterdir()):
            state = "is empty" if run.is_dir() else "does not exist"
            raise DistillError(f"cannot resume: run directory {run} {state}")
        if not resumable:
            raise DistillError(
                f"cannot resume: {run} has no checkpoint at {run / 'last'} (run again without --resume "
                "to start it afresh)"
            )
        return run
    restart = not resumable and not (run / "metrics.json").exists() and kind_of(run) == "run"
    clear = claim(
        run,
        kind="run",
        overwrite=overwrite or restart,
        what="run directory",
        hint="use --resume to continue it, or --overwrite to replace it",
    )
    if clear and restart and not overwrite:
        log(f"{run} holds no checkpoint (its run stopped before an epoch ended): starting it afresh")
    barrier()  # every rank has looked before rank 0 changes anything
    if is_main_process():
        if clear:
            remove_dir(run)
        run.mkdir(parents=True, exist_ok=True)
    barrier()
    return run


def check_loss(loss: torch.Tensor, epoch: int, step: int, run_dir: Path) -> None:
    """Stop a run whose training loss became NaN or infinite, before the step that would carry it into
    the weights: one line naming the epoch and step; the checkpoint of the last finished epoch stays.

    In a multi-process job every rank learns whether any rank's loss is bad (one small all-reduce per
    step) and all stop together, instead of the others waiting forever for the stopped one.
    """
    value = loss.item()
    bad = all_sum(torch.tensor([0.0 if math.isfinite(value) else 1.0])).item()
    if bad == 0:
        return
    if math.isfinite(value):
        value = "not finite on another rank"
    kept = (
        f"{run_dir / 'last'} keeps epoch {epoch - 1} (--resume continues from it)"
        if (run_dir / "last" / STATE).is_file()
        else "no epoch had finished, so there is no checkpoint"
    )
    raise DistillError(
        f"training loss is {value} at epoch {epoch}, step {step}: stopped {run_dir}; {kept}. "
        "A lower --lr usually helps"
    )


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
    os.chmod(tmp / WEIGHTS, 0o666 & ~_umask())  # safetensors writes 0600; every other file follows umask
    (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if state is not None:
        torch.save(_to_cpu(state), tmp / STATE)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def resume_run(
    run_dir: Path,
    run_config: Mapping[str, Any],
    load_weights: Callable[[dict[str, torch.Tensor]], None],
    stopper: EarlyStopping,
    shuffle: torch.Generator,
    **stateful: Any,
) -> tuple[int, list]:
    """Continue a run from ``RUN/last``: check that it is the same kind of run on the same dataset (and
    model, where the config has one), hand its weights to ``load_weights`` and restore the loop state.

    Returns:
        ``(first epoch to run, history so far)``, as :func:`restore_loop_state`.
    """
    weights, saved, state = load_checkpoint(run_dir / "last", with_state=True)
    if saved.get("dataset", {}).get("fingerprint") != run_config["dataset"]["fingerprint"]:
        raise DistillError(f"cannot resume {run_dir}: it was trained on another dataset")
    for key in ("kind", "model", "hint_run"):  # what the checkpoint's state depends on
        if saved.get(key) != run_config.get(key):
            raise DistillError(f"cannot resume {run_dir}: its {key} differs from this run's options")
    load_weights(weights)
    first_epoch, history = restore_loop_state(state, stopper, shuffle, **stateful)
    log(f"resuming {run_dir} after epoch {first_epoch - 1}")
    return first_epoch, history


def save_epoch(
    run_dir: Path,
    weights: Mapping[str, torch.Tensor],
    run_config: Mapping[str, Any],
    record: dict[str, Any],
    history: list,
    stopper: EarlyStopping,
    shuffle: torch.Generator,
    selected: float | None = None,
    **stateful: Any,
) -> bool:
    """The end of an epoch: early stopping sees ``selected`` (the validation metric, None when the
    epoch did not validate), a new best is saved to ``RUN/best``, ``record`` joins ``history``, and
    ``RUN/last`` gets the weights with what ``--resume`` needs. Returns whether the epoch is a new best.
    """
    best = selected is not None and stopper.step(selected, record["epoch"])
    config = {**run_config, "epoch": record["epoch"]}
    if best:
        save_checkpoint(run_dir / "best", weights, config)
    history.append(record)
    state = loop_state(record["epoch"], history, stopper, shuffle, **stateful)
    save_checkpoint(run_dir / "last", weights, config, state)
    return best


def warn_if_unfinished(run_dir: str | Path) -> None:
    """Say so when a run about to be used has no ``metrics.json`` (killed, failed or still training),
    and which epoch its best checkpoint is from."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file():
        return
    try:
        epoch = json.loads((run_dir / "best" / CONFIG).read_text()).get("epoch")
    except (OSError, ValueError, AttributeError):
        epoch = None
    log(
        f"warning: {run_dir} is unfinished (no metrics.json): using its best checkpoint so far, "
        + (f"from epoch {epoch}" if epoch is not None else "of an unknown epoch")
    )


def finish_run(
    run_dir: Path, stopper: EarlyStopping, selected_on: str, scores: Callable[[str], dict], history: list
) -> dict:
    """The results of a run whose best checkpoint is loaded: validation and test metrics of the epoch
    selected on validation, written to ``RUN/metrics.json`` and returned."""
    results = {
        "best_epoch": stopper.best_epoch,
        "selected_on": selected_on,
        "valid": scores("valid"),
        "test": scores("test"),
        "ranking": MASKING_NOTE,
        "history": history,
    }
    write_json(run_dir / "metrics.json", results)
    return results


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
