"""Run directories and checkpoints: what a training run writes, and how any later stage reads it back.

A run directory looks like::

    RUN/config.json     what the run is ("kind") and the resolved config that rebuilds it
    RUN/metrics.json    best validation epoch, validation and test metrics at that epoch
    RUN/best/           checkpoint of the best validation epoch (what later stages load)
    RUN/last/           checkpoint of the latest epoch (what --resume continues from)
    RUN/tb/             TensorBoard scalars

A run holds what it needs to be used and records every other path relative to itself
(:func:`distill.io.record_path`), so a moved or copied tree keeps working; runs written before that recorded
absolute paths, which :func:`distill.io.recorded_path` still follows, with a one-line note.

A checkpoint directory holds ``model.safetensors`` (only what was trained), ``config.json`` (the
run's config, with its kind and the dataset fingerprint) and ``state.pt`` (epoch, optimizer,
scheduler, early-stopping and RNG state: plain tensors and numbers, loadable with
``weights_only=True``). Checkpoints are written to a temporary directory and renamed when whole.

Only rank 0 of a multi-process job writes (see :mod:`distill.dist`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distill.data import Dataset
from distill.dist import barrier
from distill.errors import DistillError
from distill.io import (
    TEXT,
    check_fields,
    first_line,
    is_main_process,
    log,
    optional,
    read_json,
    recorded_path,
    table,
    whole,
    write_failure,
)
from distill.outputs import (
    RUN_KINDS,
    claim,
    clean_stale,
    holds_checkpoint,
    kind_of,
    remove_dir,
    set_aside,
    set_aside_of,
)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "state.pt"
# What every run's config.json holds (a run kind's loader checks its own tables further).
RUN_FIELDS = {
    "dataset": table({"path": TEXT, "fingerprint": TEXT}),
    "train": table(),
    "folds": optional(table({"k": whole(2), "fold": whole(0)})),
}


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/config.json``, with a one-line error when the directory holds no run (and, when an
    ``--overwrite`` set the old run aside, where it is: a reader leaves it for a writer to settle)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        aside = set_aside_of(run_dir)
        if aside is not None:
            raise DistillError(
                f"{run_dir} holds no run: an --overwrite of it set the old one aside as {aside} (the next "
                f"writing command on {run_dir} puts it back if that process is gone)"
            )
    if not run_dir.is_dir():
        raise DistillError(
            f"run {run_dir} does not exist" if not run_dir.exists() else f"{run_dir} is not a run directory"
        )
    config = read_json(run_dir / CONFIG, "run")
    if config.get("kind") not in RUN_KINDS:
        known = ", ".join(RUN_KINDS)
        raise DistillError(f"{run_dir}: unknown run kind {config.get('kind')!r} (distill writes {known})")
    check_fields(config, run_dir / CONFIG, RUN_FIELDS)
    return config


def run_dataset(run_dir: str | Path, data: str | Path | None = None) -> Dataset:
    """The dataset ``data``, or by default the one the run in ``run_dir`` records it was trained on."""
    if data is None:
        data = recorded_path(run_dir, read_run_config(run_dir)["dataset"]["path"], "its dataset")
        if not data.exists():
            raise DistillError(
                f"{run_dir} was trained on the dataset at {data}, which is not there now (moved?): "
                "give it with --data DIR"
            )
    return Dataset(data)


def check_dataset(config: Mapping[str, Any], data: Dataset, run_dir: Path) -> None:
    """A run only scores the dataset it was trained on: the fingerprints in its config and ``data`` agree."""
    trained_on = config["dataset"]["fingerprint"]
    if trained_on != data.fingerprint:
        raise DistillError(
            f"{run_dir} was trained on another dataset (fingerprint {trained_on}) than {data.path} "
            f"(fingerprint {data.fingerprint})"
        )


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool = False, create: bool = True) -> Path:
    """Create a run directory, refusing to clobber one unless resuming or told to overwrite.

    With ``create`` False it only checks (a stage that loads something slow or fallible first, as a
    backbone, refuses a wrong output before that and creates it after).

    A directory an unfinished run left without a resumable checkpoint (killed or failed before its first
    epoch's ``RUN/last`` was written, perhaps after its ``RUN/best``) is started afresh without
    ``overwrite``; ``overwrite`` replaces only a run distill wrote (see
    :func:`distill.outputs.claim`), set aside until the command ends (its ``run`` is
    :func:`distill.outputs.replacing`). Temporary directories a killed run left inside are removed.
    Every rank of a multi-process job checks, then rank 0 alone creates or clears the directory.
    """
    run = Path(path)
    if is_main_process():
        clean_stale(run.parent, run.name)  # first: a run a killed --overwrite set aside may come back
        clean_stale(run)  # then a checkpoint a kill left renamed aside
    barrier()
    can_resume = holds_checkpoint(run)
    if resume:
        if not run.is_dir() or not any(run.iterdir()):
            state = "is empty" if run.is_dir() else "does not exist"
            raise DistillError(f"cannot resume: run directory {run} {state}")
        if not can_resume:
            raise DistillError(
                f"cannot resume: {run} has no checkpoint at {run / 'last'} (run again without --resume "
                "to start it afresh)"
            )
        return run
    restart = not can_resume and not (run / "metrics.json").exists() and kind_of(run) == "run"
    clear = claim(
        run,
        kind="run",
        overwrite=overwrite or restart,
        what="run directory",
        hint="use --resume to continue it, or --overwrite to replace it",
    )
    if not create:
        return run
    if clear and restart and not overwrite:
        log(f"{run} holds no checkpoint (its run stopped before an epoch ended): starting it afresh")
    barrier()  # every rank has looked before rank 0 changes anything
    if is_main_process():
        if clear:
            set_aside(run)
        run.mkdir(parents=True, exist_ok=True)
    barrier()
    return run


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
    try:
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS))
        os.chmod(tmp / WEIGHTS, 0o666 & ~_umask())  # safetensors writes 0600; every other file follows umask
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if state is not None:
            torch.save(_to_cpu(state), tmp / STATE)
    except BaseException as e:  # no half-written checkpoint stays beside the run
        why = write_failure(e, path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, RuntimeError, SafetensorError)):  # a full disk, as each writer says it
            raise DistillError(f"cannot write checkpoint {path}: {why}") from None
        raise
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
    bad = [name for name, w in weights.items() if w.is_floating_point() and not torch.isfinite(w).all()]
    if bad:
        raise DistillError(
            f"checkpoint {path / WEIGHTS} holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[0]}): "
            "it cannot score; retrain, or use an earlier checkpoint"
        )
    config = read_json(path / CONFIG, "checkpoint config")
    state = None
    if with_state:
        try:
            state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise DistillError(f"checkpoint {path} has no trainer state ({STATE})") from None
        except Exception as e:  # torch raises many types for a damaged pickle
            raise DistillError(f"trainer state {path / STATE} is corrupt: {first_line(e)}") from None
    return weights, config, state


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def copy_run(source: str | Path, target: str | Path) -> None:
    """Copy what using a finished run takes (``config.json``, ``metrics.json`` when present, ``best/``)
    to ``target``, whole or not at all (rank 0 only): how a teacher run comes to hold its SASRec."""
    if not is_main_process():
        return
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        shutil.copytree(source / "best", tmp / "best")
        for name in (CONFIG, "metrics.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        if target.exists():
            remove_dir(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fold_runs(k: int, runs: Iterable[tuple[int, Path]]) -> list[Path]:
    """The runs of one cross-fit of ``k`` folds, ``(fold, run)`` pairs in any order, as the runs of
    folds ``0..k-1`` in order; a fold given twice, missing or out of range is a one-line error."""
    by_fold: dict[int, Path] = {}
    for fold, run_dir in runs:
        if fold in by_fold:
            raise DistillError(
                f"cross-fit of {k} folds: fold {fold} is given twice ({by_fold[fold]}, {run_dir}); "
                f"the runs given together hold one cross-fit of each K"
            )
        by_fold[fold] = run_dir
    missing, extra = sorted(set(range(k)) - by_fold.keys()), sorted(by_fold.keys() - set(range(k)))
    if missing or extra:
        problem = f"fold(s) {', '.join(map(str, missing))} missing" if missing else f"fold(s) {extra} >= {k}"
        raise DistillError(
            f"cross-fit of {k} folds: {problem}; give the runs of --fold 0 to {k - 1}, once each"
        )
    return [by_fold[fold] for fold in range(k)]
