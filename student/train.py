"""``distill student-train``: SASRec on next-item labels, early-stopped on validation NDCG@10.

Readable top to bottom: setup, the epoch loop (train, validate, checkpoint), then the test metrics of
the best validation checkpoint. The run directory layout is :mod:`distill.runs`'s.

Under ``torchrun`` the model is wrapped in ``DistributedDataParallel``; all ranks draw the same
batches and each trains on its rows of every batch (see :mod:`distill.training`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from distill.config import to_dict
from distill.data import Dataset, TrainBatch
from distill.dist import all_sum, barrier, setup_device, shard, world
from distill.errors import DistillError
from distill.io import log, progress, record_path, write_json
from distill.outputs import STUDENT, check_outside, replacing
from distill.runs import prepare_run_dir
from distill.scores import Scores, read_scores
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
from student.config import StudentTrainConfig
from student.hint import DistillationExperts
from student.losses import (
    BatchScores,
    NegativeSampler,
    bce_loss,
    ce_kd_loss,
    ce_loss,
    sample_negatives,
    sampled_loss,
)
from student.optim import Optimizers, student_optimizer
from student.run import load_run, sasrec_scorer
from student.sasrec import SASRec

SELECT_ON = "ndcg@10"
# What a run's epochs are trained with, which --resume must keep (the model's shape, the teacher's scores
# and the hint run are checked as records of their own); --epochs, --patience, --eval-every, --device may
# change.
RECIPE = (
    "batch_size", "lr", "weight_decay", "loss", "negatives", "sampler", "length_group", "precision", "seed",
    "kd", "alpha", "temperature",
)  # fmt: skip


@replacing(resumable=True)
def run(cfg: StudentTrainConfig) -> dict:
    """Train, select on validation, test the selected model; returns what ``metrics.json`` holds."""
    if cfg.overwrite:
        check_outside(cfg.output, [("--teacher-scores", cfg.teacher_scores), ("--hint-run", cfg.hint_run)])
    data = Dataset(cfg.data)
    data, held_out = data.cross_fit(cfg.folds, cfg.fold)  # what it trains on, and the fold it must not see
    data.require_training()
    teacher = read_scores(cfg.teacher_scores, data) if cfg.teacher_scores else None  # checked before writing
    if teacher is not None and teacher.has_tail and cfg.kd == "kl" and cfg.temperature != 1.0:
        log(
            f"note: {cfg.teacher_scores} keeps each row's tail at T = 1 only; at --temperature "
            f"{cfg.temperature} KD is the KL on the teacher's top {teacher.k} renormalised"
        )
    if teacher is not None and not taught(teacher, data, cfg.max_len):
        raise DistillError(
            f"{cfg.teacher_scores} scores none of the training positions this student reads (each user's "
            f"last {cfg.max_len} training targets{' outside fold ' + str(cfg.fold) if cfg.folds else ''}): "
            "it teaches nothing"
        )
    hinter = load_hint_run(cfg, data) if cfg.hint_run else None  # likewise
    if cfg.loss != "ce" and cfg.negatives >= data.num_items:  # likewise
        raise DistillError(
            f"--negatives {cfg.negatives} must be below the number of items ({data.num_items}) in {data.path}"
        )
    sampler = negative_sampler(cfg, data) if cfg.loss == "sampled" else None
    device = setup_device(cfg.device)
    seed_everything(cfg.seed)
    rank, ranks = world()
    item_updates = cfg.item_updates or "dense"
    if item_updates == "rows" and ranks > 1:
        raise DistillError("--item-updates rows runs in one process; use dense with several")

    model_cfg = cfg.sasrec(data.num_items)
    model = SASRec(model_cfg).to(device)
    run_dir = prepare_run_dir(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite)  # once the model fits
    experts = None
    if hinter is not None:  # after the student (its initial weights stay), before ranks reseed (one init)
        experts = DistillationExperts(cfg.hidden, hinter.config.hidden, cfg.hint_experts).to(device)
        hinter.to(device)
    net = model
    if ranks > 1:
        net = DistributedDataParallel(model, broadcast_buffers=False)  # every rank from rank 0's weights
        torch.manual_seed(cfg.seed + rank)  # but each rank draws its own dropout masks and negatives
    trained = [*model.parameters(), *(experts.parameters() if experts is not None else ())]
    optimizer = student_optimizer(
        trained, model.item_emb, item_updates == "rows", lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    stateful = {"optimizer": optimizer, **({"hint_experts": experts} if experts is not None else {})}
    stopper = EarlyStopping(cfg.patience)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    run_config = {
        "kind": STUDENT,
        "dataset": data.identity(run_dir),
        "model": to_dict(model_cfg),
        "train": to_dict(cfg),
        "item_updates": item_updates,  # what the optimizer's checkpointed state is
    }
    if teacher is not None:
        run_config["teacher_scores"] = {
            "path": record_path(run_dir, cfg.teacher_scores),
            "teacher": teacher.manifest.get("teacher"),
            "k": teacher.k,
            "rows": teacher.rows,
            "format_version": teacher.manifest["format_version"],
            "tail": teacher.has_tail and cfg.kd == "kl" and cfg.temperature == 1.0,  # used by KD
            "kd": cfg.kd,
            "alpha": cfg.alpha,
            "temperature": cfg.temperature,
        }
    if held_out is not None:
        run_config["folds"] = fold_record(cfg.folds, cfg.fold, held_out)
    if hinter is not None:
        run_config["hint_run"] = {
            "path": record_path(run_dir, cfg.hint_run),
            "hidden": hinter.config.hidden,
            "weight": cfg.hint_weight,
            "experts": cfg.hint_experts,
        }
    first_epoch, history = 1, []
    if cfg.resume:
        first_epoch, history = resume_run(
            run_dir,
            run_config,
            model.load_state_dict,
            stopper,
            shuffle,
            matching=("kind", "model", "hint_run", "folds", "item_updates", "teacher_scores"),
            recipe=RECIPE,
            **stateful,
        )
    write_json(run_dir / "config.json", run_config)

    losses = Losses(cfg, data, model, teacher, hinter, experts, sampler)
    scorer = sasrec_scorer(model)
    logger = Logger(run_dir)
    for epoch in range(first_epoch, cfg.epochs + 1):
        if stopper.should_stop:
            break
        stats = train_epoch(cfg, data, net, losses, optimizer, shuffle, epoch, run_dir)
        logger.scalars(stats, epoch, prefix="train/")
        line = f"epoch {epoch}: loss {stats['loss']:.4f} ({stats['seconds']:.1f}s)"
        record = {"epoch": epoch, **stats}
        valid = None
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            valid = scorer.evaluate(data, "valid", cfg.eval_batch_size)
            logger.scalars(valid, epoch, prefix="valid/")
            line += f"  valid ndcg@10 {valid['ndcg@10']:.4f} hr@10 {valid['hr@10']:.4f}"
            record.update({f"valid_{k}": valid[k] for k in ("ndcg@10", "hr@10")})
        selected = None if valid is None else valid[SELECT_ON]
        weights = model.state_dict()
        if save_epoch(run_dir, weights, run_config, record, history, stopper, shuffle, selected, **stateful):
            line += "  (best)"
        log(line)
    logger.close()

    if stopper.best_epoch < 0:
        raise DistillError(f"no validation ran in {run_dir}: set --eval-every to at most --epochs")
    barrier()  # rank 0 has written the best checkpoint
    best = sasrec_scorer(load_run(run_dir, data, device))
    return finish_run(
        run_dir,
        stopper,
        f"valid {SELECT_ON}",
        lambda split: best.evaluate(data, split, cfg.eval_batch_size),
        history,
        held_out=None
        if held_out is None
        else lambda split: best.evaluate(held_out, split, cfg.eval_batch_size),
    )


@dataclass(frozen=True)
class Losses:
    """What a batch's loss is made of: the label loss (full CE, sampled BCE or the sampled softmax), the
    teacher's soft labels fused into the CE or the sampled softmax when there is a score directory,
    and the hint term when there is a hint run."""

    cfg: StudentTrainConfig
    data: Dataset
    model: SASRec
    teacher: Scores | None
    hinter: SASRec | None
    experts: DistillationExperts | None
    sampler: NegativeSampler | None = None

    def __call__(
        self, h: torch.Tensor, batch: TrainBatch, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, float, float]:
        """``(loss, kd, hint)`` of one batch's rows: the loss to minimise and its parts, for logging.

        Args:
            h: the student's states ``(B, L, d)``.
            batch: the batch (its flat target ``index`` finds the teacher's rows).
            inputs: this rank's histories ``(B, L)``; targets: its next items ``(B, L)``, 0 at padding.
        """
        cfg, device = self.cfg, h.device
        matmul_dtype = torch.bfloat16 if cfg.precision == "bfloat16" else torch.float32
        kd = hint = 0.0
        soft = None if self.teacher is None else batch_scores(self.teacher, shard(batch.index), targets, cfg)
        if cfg.loss == "sampled":
            negatives, log_counts = self.sampler.draw()  # one set per batch, from torch's generator
            loss, kd_value = sampled_loss(self.model, h, targets.to(device), negatives, log_counts, soft)
            kd = kd_value.item()
        elif soft is not None:
            loss, kd_value = ce_kd_loss(self.model, h, targets.to(device), soft, matmul_dtype=matmul_dtype)
            kd = kd_value.item()
        elif cfg.loss == "ce":
            loss = ce_loss(self.model, h, targets.to(device), matmul_dtype=matmul_dtype)
        else:
            negatives = sample_negatives(targets, self.data.num_items, cfg.negatives).to(device)
            loss = bce_loss(self.model, h, targets.to(device), negatives)
        if self.hinter is not None:
            real = targets.to(device) != 0
            with torch.no_grad():
                teacher_states = self.hinter(inputs.to(device))[real]
            hint_value = self.experts(h[real], teacher_states)
            loss = loss + cfg.hint_weight * hint_value
            hint = hint_value.item()
        return loss, kd, hint


def train_epoch(
    cfg: StudentTrainConfig,
    data: Dataset,
    net: torch.nn.Module,
    losses: Losses,
    optimizer: torch.optim.Optimizer | Optimizers,
    shuffle: torch.Generator,
    epoch: int,
    run_dir: Path,
) -> dict[str, float]:
    """One pass over the shuffled training sequences; returns the epoch's statistics.

    Each batch's loss is its mean over positions times positions / (mean positions per batch): every
    position then weighs the same however batches are cut (length groups make their sizes vary). With
    several ranks each computes its rows' share (times the rank count, as DDP averages).
    """
    _, ranks = world()
    device = losses.model.item_emb.weight.device
    lengths = data.train_lengths(cfg.max_len)
    num_batches = -(-int((lengths > 0).sum()) // cfg.batch_size)
    positions_per_batch = lengths.sum() / max(num_batches, 1)
    net.train()
    started, total_loss, total_kd, total_hint, steps, sequences = time.perf_counter(), 0.0, 0.0, 0.0, 0, 0
    batches = data.train_batches(
        cfg.batch_size, cfg.max_len, generator=shuffle, length_group=cfg.length_group
    )
    with progress(total=num_batches, desc=f"epoch {epoch}") as bar:
        for batch in batches:
            inputs, targets = shard(batch.inputs), shard(batch.targets)
            with torch.autocast(device.type, torch.bfloat16, enabled=cfg.precision == "bfloat16"):
                h = net(inputs.to(device))  # (B, L, d)
            loss, kd, hint = losses(h, batch, inputs, targets)
            loss = loss * (int((targets != 0).sum()) * ranks / positions_per_batch)
            check_loss(loss, epoch, steps + 1, run_dir)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if losses.experts is not None and ranks > 1:  # outside the DDP model: average by hand
                for p in losses.experts.parameters():
                    p.grad = all_sum(p.grad) / ranks
            optimizer.step()
            total_loss, total_kd, total_hint = total_loss + loss.item(), total_kd + kd, total_hint + hint
            steps += 1
            sequences += len(batch.inputs)
            bar.set_postfix(loss=f"{total_loss / steps:.4f}")
            bar.update()
    if isinstance(optimizer, Optimizers):  # rows no batch read since are brought up to date
        optimizer.catch_up()
    seconds = time.perf_counter() - started
    total_loss, total_kd, total_hint = (
        all_sum(torch.tensor([total_loss, total_kd, total_hint])) / ranks
    ).tolist()
    stats = {
        "seconds": seconds,
        "loss": total_loss / max(steps, 1),
        "lr": cfg.lr,
        "sequences_per_s": sequences / seconds,
    }
    if losses.teacher is not None:
        stats["kd_loss"] = total_kd / max(steps, 1)
    if losses.hinter is not None:
        stats["hint_loss"] = total_hint / max(steps, 1)
    return stats


def load_hint_run(cfg: StudentTrainConfig, data: Dataset) -> SASRec:
    """The frozen SASRec of ``--hint-run``, in eval mode; a run from another dataset, or one whose window
    is shorter than the student's, is a one-line error."""
    hinter = load_run(cfg.hint_run, data)
    if hinter.config.max_len < cfg.max_len:
        raise DistillError(
            f"--hint-run {cfg.hint_run} reads {hinter.config.max_len} items, fewer than the student's "
            f"--max-len {cfg.max_len}: use --max-len {hinter.config.max_len} or less"
        )
    return hinter.eval().requires_grad_(False)


def negative_sampler(cfg: StudentTrainConfig, data: Dataset) -> NegativeSampler:
    """The extra negatives of ``--loss sampled``: uniform, or by the training split's item counts (of the
    users it trains on), each plus one so that every item can be drawn."""
    if cfg.sampler != "popularity":
        return NegativeSampler.uniform(data.num_items, cfg.negatives)
    _, ends = data.history_bounds("train")
    user_of = np.repeat(np.arange(data.num_users), data.lengths)  # (T,) the user of each interaction
    train = (np.arange(len(data.items)) < ends[user_of]) & data.users[user_of]
    counts = np.bincount(data.items[train], minlength=data.num_items + 1)  # (num_items + 1,)
    return NegativeSampler.popularity(torch.from_numpy(counts), cfg.negatives)


def taught(teacher: Scores, data: Dataset, max_len: int) -> bool:
    """Whether ``teacher`` scores any of the targets :meth:`Dataset.train_batches` reads: each user's
    last ``train_lengths`` flat indices before the end of its training sequence."""
    _, ends = data.history_bounds("train")
    lengths = data.train_lengths(max_len)
    scored = np.flatnonzero(teacher.row_of.numpy() >= 0)
    user = np.searchsorted(data.offsets, scored, side="right") - 1
    return bool(((scored >= ends[user] - lengths[user]) & (scored < ends[user])).any())


def batch_scores(
    teacher: Scores, index: torch.Tensor, targets: torch.Tensor, cfg: StudentTrainConfig
) -> BatchScores:
    """The teacher's rows for a batch's non-pad positions, in the order :func:`ce_kd_loss` and
    :func:`sampled_loss` read them.

    Args:
        index: flat target indices ``(B, L)`` of the batch (-1 at padding).
        targets: next-item ids ``(B, L)`` (0 at padding).
    """
    rows = teacher.lookup(index)[targets != 0]  # (N,), -1 where the teacher has no score
    tail = teacher.fetch_tail if teacher.has_tail else None
    return BatchScores(rows, teacher.fetch, cfg.kd, cfg.alpha, cfg.temperature, tail)
