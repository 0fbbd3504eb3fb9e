"""``distill teacher-train``: one loop for both teachers, early-stopped on validation NDCG@10.

Setup (data, the SASRec run, the backbone, the teacher), the epoch loop (AdamW with a learning rate
per parameter group, linear warmup then cosine decay, gradient accumulation; validation with full
ranking; checkpoints), then the test metrics of the best validation checkpoint.

The objective is cross-entropy over the whole catalogue at every scored position. ``dense`` (the
default) cuts each training sequence into windows of ``prompt_items`` positions that tile it from its end
(non-overlapping: every target is scored once per epoch; the SASRec states in the slots still read up
to SASRec's ``max_len`` items of context, so a window's first positions are not blind), and one pass
scores all of a window. ``last`` is one prompt per target, scored at its last position: the anchors'
form, ``prompt_items`` times fewer positions per pass.

Under ``torchrun`` the teacher is wrapped in ``DistributedDataParallel`` and each rank trains on its
rows of every batch and validates its share of the users (see :mod:`distill.training`).

Checkpoints hold only what was trained (adapters, projector, gate or head, and SASRec with
``--train-sasrec``); ``config.json`` holds what rebuilds the rest: the backbone spec and the SASRec run.
"""

from __future__ import annotations

import contextlib
import filecmp
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill.config import to_dict
from distill.data import Dataset, Windows
from distill.dist import all_sum, barrier, setup_device, shard, world
from distill.errors import DistillError
from distill.io import log, progress, write_json
from distill.outputs import TEACHER_KINDS, check_outside, replacing
from distill.runs import (
    WEIGHTS,
    copy_run,
    fold_runs,
    load_checkpoint,
    prepare_run_dir,
    read_run_config,
    warn_if_unfinished,
)
from distill.training import (
    EarlyStopping,
    Logger,
    check_loss,
    finish_run,
    fold_record,
    resume_run,
    save_epoch,
    seed_everything,
)
from student.run import load_run
from student.sasrec import SASRec
from teacher.config import TeacherTrainConfig
from teacher.model import (
    SASREC,
    SASREC_FOLDS,
    Teacher,
    build_teacher,
    check_sasrec,
    item_text_of,
    item_titles,
    load_trainable,
    record_backbone,
    teacher_scorer,
    trainable_state,
)
from teacher.text import save_item_text

SELECT_ON = "ndcg@10"
# Parameter groups by name: the learning rate of each is a config field.
GROUPS = (
    ("lora_", "lr"),
    ("projector.", "projector_lr"),
    ("gate.", "gate_lr"),
    ("head.", "head_lr"),
    ("sasrec.", "sasrec_lr"),
)


# What a teacher's epochs are trained with, which --resume must keep; --epochs, --patience, --device and
# the evaluation options may change.
RECIPE = (
    "teacher", "llm_layers", "dtype", "prompt_items", "objective", "positions", "fuse_sasrec",
    "title_tokens", "item_text", "experts", "moe_scaling", "r", "lora_alpha", "lora_dropout",
    "target_modules", "train_sasrec", "batch_size", "grad_accum", "lr", "projector_lr", "gate_lr",
    "head_lr", "sasrec_lr", "weight_decay", "warmup", "seed",
)  # fmt: skip


@replacing(resumable=True)
def run(cfg: TeacherTrainConfig) -> dict:
    """Train, select on validation, test the selected teacher; returns what ``metrics.json`` holds."""
    if cfg.overwrite:
        inputs = [("--sasrec", cfg.sasrec), *(("--sasrec-fold", fold) for fold in cfg.sasrec_folds)]
        check_outside(cfg.output, inputs)
    data = Dataset(cfg.data)
    data, held_out = data.cross_fit(cfg.folds, cfg.fold)  # what it trains on, and the fold it must not see
    data.require_training()
    own_sasrec = Path(cfg.output) / SASREC  # where the run keeps its copy of the --sasrec run
    resuming_with_copy = cfg.resume and (own_sasrec / "best").is_dir()
    if resuming_with_copy:
        check_same_sasrec(Path(cfg.sasrec), own_sasrec)
    # Refuses a run from another dataset, and a prompt longer than SASRec's window, before writing.
    sasrec = load_run(own_sasrec if resuming_with_copy else cfg.sasrec, data)
    context = check_sasrec(cfg, sasrec)
    if cfg.folds is not None:
        check_sasrec_holds_out(own_sasrec if resuming_with_copy else Path(cfg.sasrec), cfg.folds, cfg.fold)
    own_folds = Path(cfg.output) / SASREC_FOLDS  # its copies of the --sasrec-fold runs
    fold_sources = cfg.sasrec_folds
    if cfg.sasrec_folds and resuming_with_copy and own_folds.is_dir():
        fold_sources = tuple(str(p) for p in sorted(own_folds.iterdir()) if not p.name.startswith("."))
    crossfit = load_sasrec_folds(fold_sources, data, sasrec)  # (k, SASRec of each fold) or None
    device = setup_device(cfg.device)
    prepare_run_dir(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite, create=False)  # refused early
    text = item_text_of(cfg, data, Path(cfg.output), write=False)  # a resumed run's own, or read afresh
    seed_everything(cfg.seed)
    # Loading the backbone is what fails on a wrong --llm: it comes before anything is written.
    teacher = build_teacher(cfg, data, sasrec.to(device), device, text)
    run_dir = prepare_run_dir(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite)
    if not resuming_with_copy:
        copy_run(cfg.sasrec, own_sasrec)  # the run holds what scoring it needs: moving it keeps it whole
    if crossfit is not None and not (resuming_with_copy and own_folds.is_dir()):
        for fold, source in enumerate(sasrec_fold_runs(cfg.sasrec_folds)[1]):
            copy_run(source, own_folds / f"fold{fold}")  # what a resumed run reads them from
    if text is not None:
        save_item_text(run_dir, cfg.llm, cfg.dtype, item_titles(cfg, data), text)
    model = teacher.model
    rank, ranks = world()
    net = model
    if ranks > 1:
        # Training goes through the wrapper (rank 0's fresh adapters on every rank, gradients averaged);
        # evaluation calls the model itself, each rank on its own users.
        net = DistributedDataParallel(model, broadcast_buffers=False)
        torch.manual_seed(cfg.seed + rank)  # each rank draws its own dropout masks

    optimizer = make_optimizer(cfg, model)
    # dense: windows tile each training sequence, every target scored once per epoch;
    # last: one window per target (the user's last `positions`), scored at its last column only.
    if cfg.objective == "dense":
        windows = data.train_windows(cfg.prompt_items, context)
    else:
        windows = data.train_windows(cfg.prompt_items, context, last=cfg.positions, stride=1)
    if len(windows.targets) == 0:
        raise DistillError(f"{data.path} has no training samples: every training sequence is shorter than 2")
    readers = None  # with --sasrec-fold: each window's fold, and the SASRec of each fold on the device
    if crossfit is not None:
        k, fold_models = crossfit
        readers = (data.folds(k)[windows.users], [m.requires_grad_(False).to(device) for m in fold_models])
    groups = [len(windows.targets)] if readers is None else np.bincount(readers[0]).tolist()
    batches_per_epoch = sum(math.ceil(n / cfg.batch_size) for n in groups)  # as epoch_batches cuts them
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _warmup_cosine(s, warmup_steps, total_steps)
    )
    stateful = {"optimizer": optimizer, "scheduler": scheduler}

    stopper = EarlyStopping(cfg.patience)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    valid_users = validation_users(cfg, data)
    scorer = teacher_scorer(teacher, TEACHER_KINDS[cfg.teacher])
    run_config = {
        "kind": TEACHER_KINDS[cfg.teacher],
        "dataset": data.identity(run_dir),
        "sasrec_run": SASREC,
        "backbone": record_backbone(cfg.llm, run_dir),
        "train": to_dict(cfg),
        "trainable_parameters": sum(p.numel() for p in trainable_state(model).values()),
    }
    if held_out is not None:
        run_config["folds"] = fold_record(cfg.folds, cfg.fold, held_out)
    if crossfit is not None:
        run_config["sasrec_folds"] = {
            "k": crossfit[0],
            "runs": [f"{SASREC_FOLDS}/fold{f}" for f in range(crossfit[0])],
            "read": "on training windows only: each window by the fold that held out its user",
        }
    first_epoch, history = 1, []
    if cfg.resume:
        first_epoch, history = resume_run(
            run_dir,
            run_config,
            lambda weights: load_trainable(model, weights, run_dir / "last"),
            stopper,
            shuffle,
            matching=("kind", "folds", "sasrec_folds"),
            recipe=RECIPE,
            **stateful,
        )
    write_json(run_dir / "config.json", run_config)
    log(
        f"{cfg.teacher} teacher on {cfg.llm}: {run_config['trainable_parameters']:,} trainable parameters, "
        f"{len(windows.targets):,} windows of {cfg.prompt_items} "
        f"({int((windows.targets != 0).sum()):,} scored positions, {cfg.objective} objective), "
        f"{total_steps:,} optimizer steps"
    )

    logger = Logger(run_dir)
    for epoch in range(first_epoch, cfg.epochs + 1):
        if stopper.should_stop:
            break
        stats = train_epoch(
            cfg, teacher, net, windows, optimizer, scheduler, shuffle, epoch, run_dir, readers
        )
        logger.scalars(stats, epoch, prefix="train/")
        valid = scorer.evaluate(data, "valid", cfg.eval_batch_size, valid_users)
        logger.scalars(valid, epoch, prefix="valid/")
        line = (
            f"epoch {epoch}: loss {stats['loss']:.4f} "
            f"({stats['seconds']:.0f}s, {stats['positions_per_s']:.1f} positions/s)  "
            f"valid ndcg@10 {valid['ndcg@10']:.4f} hr@10 {valid['hr@10']:.4f}"
        )
        record = {"epoch": epoch, **stats, **{f"valid_{k}": valid[k] for k in ("ndcg@10", "hr@10")}}
        weights = trainable_state(model)
        if save_epoch(
            run_dir, weights, run_config, record, history, stopper, shuffle, valid[SELECT_ON], **stateful
        ):
            line += "  (best)"
        log(line)
    logger.close()

    barrier()  # rank 0 has written the best checkpoint
    best_weights, _, _ = load_checkpoint(run_dir / "best")
    load_trainable(model, best_weights, run_dir / "best")
    return finish_run(
        run_dir,
        stopper,
        f"valid {SELECT_ON}" + (f" ({len(valid_users)} users)" if cfg.eval_users else ""),
        lambda split: scorer.evaluate(data, split, cfg.eval_batch_size),
        history,
        held_out=held_out and (lambda split: scorer.evaluate(held_out, split, cfg.eval_batch_size)),
    )


def make_optimizer(cfg: TeacherTrainConfig, model: nn.Module) -> torch.optim.AdamW:
    """AdamW over the parameters that train, one learning rate per group of :data:`GROUPS`."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in trainable_state(model).items():
        field = next((f for key, f in GROUPS if key in name), None)
        if field is None:
            raise RuntimeError(f"trainable parameter {name} belongs to no learning-rate group")
        groups.setdefault(field, []).append(p)
    return torch.optim.AdamW(
        [{"params": ps, "lr": getattr(cfg, f), "name": f} for f, ps in groups.items()],
        weight_decay=cfg.weight_decay,
    )


def validation_users(cfg: TeacherTrainConfig, data: Dataset) -> np.ndarray:
    """Every user, or ``--eval-users`` of them drawn once with the run's seed (the same every epoch)."""
    users = data.eval_users()
    if cfg.eval_users is not None and cfg.eval_users < len(users):
        pick = torch.randperm(len(users), generator=torch.Generator().manual_seed(cfg.seed))
        users = np.sort(users[pick[: cfg.eval_users].numpy()])
    return users


def train_epoch(
    cfg: TeacherTrainConfig,
    teacher: Teacher,
    net: nn.Module,
    windows: Windows,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    shuffle: torch.Generator,
    epoch: int,
    run_dir: Path,
    readers: tuple[np.ndarray, list[nn.Module]] | None = None,
) -> dict[str, float]:
    """One pass over the shuffled windows: cross-entropy over the catalogue at every scored position.

    ``net`` is the teacher's model or its ``DistributedDataParallel`` wrapper. With ``readers`` (each
    window's fold, and the SASRec of each fold) every batch holds windows of one fold and the teacher
    reads that fold's SASRec. Returns the epoch's statistics (mean loss over every rank's rows,
    throughput, learning rates, seconds).
    """
    rank, ranks = world()
    device = teacher.device
    histories, targets = windows.histories, windows.targets
    teacher.model.train()
    batches = epoch_batches(len(targets), cfg.batch_size, shuffle, None if readers is None else readers[0])
    started, total_loss, micro, scored = time.perf_counter(), 0.0, 0, 0
    with progress(total=len(targets), desc=f"epoch {epoch}") as bar:
        for number, batch in enumerate(batches, start=1):
            # This rank's rows of the batch; a last batch with fewer rows than ranks gives each rank
            # one row (some the same), as every rank must take every step.
            idx = shard(batch) if len(batch) >= ranks else batch[[rank % len(batch)]]
            micro += 1
            stepping = micro % cfg.grad_accum == 0 or number == len(batches)
            # Between optimizer steps DDP need not average gradients: the step's backward does.
            syncing = stepping or ranks == 1
            sasrec = None if readers is None else readers[1][readers[0][batch[0]]]
            with contextlib.nullcontext() if syncing else net.no_sync(), teacher.reading(sasrec):
                queries, items = teacher.queries(torch.from_numpy(histories[idx]), net)  # (B, w, D)
                target = torch.from_numpy(targets[idx]).to(device)  # (B, w), 0 where not scored
                logits = queries[target != 0] @ items[1:].T  # (M, N): padding is never a class
                # The mean over the whole batch's scored positions, whichever rank holds them (DDP
                # averages the ranks' gradients; a batch too small to split is every rank's whole).
                positions = int((targets[batch] != 0).sum()) / (ranks if len(batch) >= ranks else 1)
                loss = F.cross_entropy(logits, target[target != 0] - 1, reduction="sum") / positions
                check_loss(loss, epoch, micro, run_dir)
                (loss / cfg.grad_accum).backward()
            if stepping:
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            total_loss += loss.item()
            scored += len(logits)
            bar.update(len(batch))
            bar.set_postfix(
                loss=f"{total_loss / micro:.4f}",
                positions_per_s=f"{scored / (time.perf_counter() - started):.1f}",
            )
    seconds = time.perf_counter() - started
    total_loss = all_sum(torch.tensor(total_loss)).item() / ranks  # the mean of every rank's rows
    return {
        "seconds": seconds,
        "loss": total_loss / micro,
        "windows_per_s": len(targets) / seconds,
        "positions_per_s": scored / seconds,
        **{f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups},
    }


def epoch_batches(
    n: int, batch_size: int, shuffle: torch.Generator, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """One epoch's batches of ``n`` windows in shuffled order. With ``groups`` (each window's fold,
    ``(n,)``) every batch holds windows of one group: each group's windows, in shuffled order, are cut
    into batches, whose order is shuffled in turn."""
    order = torch.randperm(n, generator=shuffle).numpy()
    if groups is None:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    grouped = [order[groups[order] == g] for g in np.unique(groups)]
    batches = [mine[i : i + batch_size] for mine in grouped for i in range(0, len(mine), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=shuffle).tolist()]


def check_same_sasrec(given: Path, copy: Path) -> None:
    """A resumed teacher keeps the SASRec it began with (its copy in ``RUN/sasrec``): a ``--sasrec``
    that is still there and holds other weights is refused, as any other change of recipe."""
    weights = given / "best" / WEIGHTS
    if weights.is_file() and not filecmp.cmp(weights, copy / "best" / WEIGHTS, shallow=False):
        raise DistillError(
            f"cannot resume {copy.parent}: it was trained on another SASRec than --sasrec {given} (its copy "
            f"{copy} holds other weights); resume with that run, or train a new teacher"
        )


def check_sasrec_holds_out(sasrec: Path, k: int, fold: int) -> None:
    """A cross-fitted teacher's ``--sasrec`` must hold out the same users: fold F of a K-fold cross-fit.

    The teacher fuses that SASRec's scores and reads its states wherever it scores, so a SASRec that
    trained on fold F's users would carry them into the very soft labels the cross-fit promises are out
    of fold."""
    record = read_run_config(sasrec).get("folds")
    if record is None or (record["k"], record["fold"]) != (k, fold):
        it = "it trained on every user" if record is None else f"it is fold {record['fold']} of {record['k']}"
        raise DistillError(
            f"--folds {k} --fold {fold}: --sasrec {sasrec} must hold out the same users, as fold {fold} of a "
            f"{k}-fold cross-fit (student-train --folds {k} --fold {fold}), and {it}"
        )


def sasrec_fold_runs(runs: Sequence[str | Path]) -> tuple[int, list[Path]]:
    """The runs given to ``--sasrec-fold`` as one cross-fit: its ``k`` and its runs by fold. A run that
    is not cross-fitted, runs of different cross-fits, or a fold missing or given twice is a one-line
    error."""
    records = []
    for run in map(Path, runs):
        record = read_run_config(run).get("folds")
        if record is None:
            raise DistillError(
                f"--sasrec-fold {run} is not a cross-fitted run (student-train --folds K --fold F makes one)"
            )
        records.append((record["k"], record["fold"], run))
    ks = sorted({k for k, _, _ in records})
    if len(ks) > 1:
        raise DistillError(
            f"--sasrec-fold: runs of cross-fits of {' and '.join(map(str, ks))} folds; give the K runs of one"
        )
    return ks[0], fold_runs(ks[0], [(fold, run) for _, fold, run in records])


def load_sasrec_folds(
    runs: Sequence[str | Path], data: Dataset, sasrec: SASRec
) -> tuple[int, list[SASRec]] | None:
    """``(k, the SASRec of each fold)`` of the ``--sasrec-fold`` runs (None when there are none), each
    checked against ``data`` and against the teacher's own SASRec, whose projectors and window they
    share."""
    if not runs:
        return None
    k, ordered = sasrec_fold_runs(runs)
    want = (sasrec.config.hidden, sasrec.config.max_len)
    models = []
    for run in ordered:
        model = load_run(run, data)
        if (model.config.hidden, model.config.max_len) != want:
            raise DistillError(
                f"--sasrec-fold {run} has hidden {model.config.hidden} and max_len {model.config.max_len}, "
                f"the --sasrec run {want[0]} and {want[1]}: the teacher reads both through one projector"
            )
        warn_if_unfinished(run)
        models.append(model)
    return k, models


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0)))
