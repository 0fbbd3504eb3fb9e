"""What both training loops share: seeding, a stop on a non-finite loss, early stopping, the end of an
epoch (checkpoints, ``--resume`` state) and of a run (``metrics.json``), TensorBoard.

The layout of a run directory and its checkpoints is :mod:`distill.runs`'s.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.data import Dataset
from distill.dist import all_sum
from distill.errors import DistillError
from distill.io import first_line, is_main_process, log, write_json
from distill.metrics import MASKING_NOTE
from distill.outputs import holds_checkpoint
from distill.runs import STATE, load_checkpoint, read_run_config, save_checkpoint


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        if holds_checkpoint(run_dir)
        else "no epoch had finished, so there is no checkpoint"
    )
    raise DistillError(
        f"training loss is {value} at epoch {epoch}, step {step}: stopped {run_dir}; {kept}. "
        "A lower --lr usually helps"
    )


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
    """Undo :func:`loop_state` into live objects; returns ``(first epoch to run, history so far)``.

    Raises:
        ValueError: (one line) ``state`` is not one this trainer wrote: a key is missing, or an
            optimizer's state does not fit its parameters (another run's ``state.pt``).
    """
    try:
        for name, obj in stateful.items():
            _check_steps(state[name])
            obj.load_state_dict(state[name])
            _check_optimizer(obj)
        stopper.load_state_dict(state["early_stopping"])
        shuffle.set_state(state["shuffle"])
        set_rng_state(state["rng"])
        return int(state["epoch"]) + 1, list(state["history"])
    except KeyError as e:
        raise ValueError(f"it has no {e}") from None
    except (TypeError, RuntimeError, IndexError, AttributeError) as e:  # not even a dict of state
        raise ValueError(first_line(e)[:200]) from None


def _number(value: Any) -> bool:
    """A real number as an optimizer holds one: an int or float (not a bool), or a one-element tensor."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_steps(state: Any) -> None:
    """Every ``step`` in a saved optimizer state is one number (torch's loader would cast a string
    through a generator and fail with a message about the generator)."""
    if isinstance(state, dict):
        for key, value in state.items():
            if key == "step" and not _number(value):
                raise ValueError(f"the optimizer's step is {value!r:.40}, not one number")
            _check_steps(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            _check_steps(value)


def _check_optimizer(obj: Any) -> None:
    """An optimizer's per-parameter moments have their parameter's shape and its hyperparameters are
    what Adam reads (torch checks neither on loading: another model's moments fail at the first step,
    or broadcast silently; a hand-edited ``"lr": "0.001"`` or ``"betas": 0.9`` fails inside the step)."""
    for optimizer in getattr(obj, "optimizers", {"": obj}).values():  # student.optim.Optimizers: several
        for group in getattr(optimizer, "param_groups", ()):
            for key in ("lr", "eps", "weight_decay"):
                if key in group and not _number(group[key]):
                    raise ValueError(f"the optimizer's {key} is {group[key]!r:.40}, not a number")
            betas = group.get("betas", (0.9, 0.999))
            if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(map(_number, betas))):
                raise ValueError(f"the optimizer's betas is {betas!r:.40}, not a pair of numbers")
            for key in ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused"):
                if group.get(key) is not None and not isinstance(group[key], bool):
                    raise ValueError(f"the optimizer's {key} is {group[key]!r:.40}, not true or false")
        for param, moments in getattr(optimizer, "state", {}).items():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in moments and moments[key].shape != param.shape:
                    raise ValueError(
                        f"the optimizer's {key} of shape {tuple(moments[key].shape)} does not fit a "
                        f"parameter of shape {tuple(param.shape)}"
                    )


def resume_run(
    run_dir: Path,
    run_config: Mapping[str, Any],
    load_weights: Callable[[dict[str, torch.Tensor]], None],
    stopper: EarlyStopping,
    shuffle: torch.Generator,
    *,
    matching: tuple[str, ...] = ("kind",),
    recipe: tuple[str, ...] = (),
    **stateful: Any,
) -> tuple[int, list]:
    """Continue a run from ``RUN/last``: check that it is a run on the same dataset whose config agrees
    on the keys ``matching`` (what the checkpoint's state depends on; a recorded ``path`` may differ:
    runs move) and on the training options ``recipe`` (what its epochs so far were trained with, which
    the run's record states for all of them), hand its weights to ``load_weights`` and restore the
    loop state. Options may change on a resume only where they are not in ``recipe`` (``--epochs``,
    ``--patience``, the device, ...).

    Returns:
        ``(first epoch to run, history so far)``, as :func:`restore_loop_state`.
    """
    weights, saved, state = load_checkpoint(run_dir / "last", with_state=True)
    top = read_run_config(run_dir)  # the run's own record must agree too: it is what later stages read
    for config, where in ((saved, run_dir / "last"), (top, run_dir / "config.json")):
        recorded = config.get("dataset")
        if (
            not isinstance(recorded, dict)
            or recorded.get("fingerprint") != run_config["dataset"]["fingerprint"]
        ):
            raise DistillError(f"cannot resume {run_dir}: {where} records another dataset than --data")
        trained, now = config.get("train") or {}, run_config.get("train") or {}
        for key in recipe:
            if key in trained and trained[key] != now.get(key):  # a key older runs lack is not checked
                option = "--" + key.replace("_", "-")
                raise DistillError(
                    f"cannot resume {run_dir}: its epochs so far were trained with {option} {trained[key]}, "
                    f"not {now.get(key)}; resume with the same options (or train a new run)"
                )
        for key in matching:
            if _but_path(config.get(key)) != _but_path(run_config.get(key)):
                recorded = config.get(key)
                was = (
                    f" (it records {recorded['path']})"
                    if isinstance(recorded, dict) and "path" in recorded
                    else " (it records none)"
                    if recorded is None
                    else ""
                )
                raise DistillError(
                    f"cannot resume {run_dir}: the {key} in {where} differs from this run's "
                    f"({_OPTIONS.get(key, key)}){was}"
                )
    try:
        load_weights(weights)
    except RuntimeError as e:  # torch's size or key mismatch: weights of another model put in `last`
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = (lines[1] if len(lines) > 1 else first_line(e))[:200]  # torch's first mismatch, after its title
        raise DistillError(
            f"cannot resume {run_dir}: {run_dir / 'last'} holds weights that do not fit its model ({why})"
        ) from None
    try:
        first_epoch, history = restore_loop_state(state, stopper, shuffle, **stateful)
    except ValueError as e:  # torch's own for a parameter group of another size, or the check above
        raise DistillError(
            f"cannot resume {run_dir}: {run_dir / 'last' / STATE} is not this run's trainer state ({e})"
        ) from None
    log(f"resuming {run_dir} after epoch {first_epoch - 1}")
    return first_epoch, history


# What a user changes to change each key resume_run may match: what its refusal names.
_OPTIONS = {
    "kind": "a run of another command or teacher",
    "model": "--hidden, --blocks, --heads, --max-len or --dropout",
    "hint_run": "--hint-run and its options",
    "folds": "--folds / --fold",
    "item_updates": "--item-updates",
    "teacher_scores": "--teacher-scores and its KD options",
    "sasrec_folds": "--sasrec-fold",
}


def _but_path(value: Any) -> Any:
    """A recorded reference without its ``path`` (a moved run or score directory is the same one)."""
    return {k: v for k, v in value.items() if k != "path"} if isinstance(value, dict) else value


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


def fold_record(k: int, fold: int, held_out: Dataset) -> dict:
    """What a cross-fitted run records of its fold: what the loader pairs it with the other folds by."""
    return {
        "k": k,
        "fold": fold,
        "held_out_users": len(held_out.eval_users()),
        "split": "users by the first 8 bytes of the SHA-256 of their raw id, modulo k",
    }


def finish_run(
    run_dir: Path,
    stopper: EarlyStopping,
    selected_on: str,
    scores: Callable[[str], dict],
    history: list,
    held_out: Callable[[str], dict] | None = None,
) -> dict:
    """The results of a run whose best checkpoint is loaded: validation and test metrics of the epoch
    selected on validation, written to ``RUN/metrics.json`` and returned. A cross-fitted run also
    reports its held-out fold's metrics (``held_out``: the users it never saw)."""
    results = {
        "best_epoch": stopper.best_epoch,
        "selected_on": selected_on,
        "valid": scores("valid"),
        "test": scores("test"),
        "ranking": MASKING_NOTE,
        "history": history,
    }
    if held_out is not None:
        results["held_out"] = {"valid": held_out("valid"), "test": held_out("test")}
    write_json(run_dir / "metrics.json", results)
    return results


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
            if not getattr(threading.excepthook, "quiet_writer", False):
                threading.excepthook = _quiet_writer_thread(threading.excepthook)

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"{prefix}{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _quiet_writer_thread(previous: Callable) -> Callable:
    """A ``threading.excepthook`` that leaves TensorBoard's writer thread unprinted: its failure (a full
    disk) is raised again on the main thread at the next scalar, which says it in one line."""

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ != "_AsyncWriterThread":
            previous(args)

    hook.quiet_writer = True
    return hook
