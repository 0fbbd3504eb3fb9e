"""``distill teacher-train``: one loop for both teachers, early-stopped on validation NDCG@10.

Setup (data, the SASRec run, the backbone, the teacher), the epoch loop (AdamW with a learning rate
per parameter group, linear warmup then cosine decay, gradient accumulation; validation with full
ranking; checkpoints), then the test metrics of the best validation checkpoint.

Under ``torchrun`` the teacher is wrapped in ``DistributedDataParallel`` and each rank trains on its
rows of every batch and validates its share of the users (see :mod:`distill.training`).

Checkpoints hold only what was trained (adapters, projector, gate or head, and SASRec with
``--train-sasrec``); ``config.json`` holds what rebuilds the rest: the backbone spec and the SASRec run.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill.config import from_dict, to_dict
from distill.data import Dataset
from distill.errors import DistillError
from distill.metrics import MASKING_NOTE, evaluate
from distill.training import (
    EarlyStopping,
    Logger,
    all_sum,
    barrier,
    load_checkpoint,
    log,
    loop_state,
    prepare_run_dir,
    progress,
    read_json,
    restore_loop_state,
    save_checkpoint,
    seed_everything,
    setup_device,
    shard,
    world,
    write_json,
)
from student.sasrec import SASRec
from student.train import check_dataset, load_run
from teacher.backbone import add_special_tokens, load_backbone
from teacher.config import TeacherTrainConfig
from teacher.e4srec import E4SRecTeacher
from teacher.ilora import MoELoRATeacher
from teacher.prompts import E4SREC_PROMPT, HISTORY_TOKEN, MOE_LORA_PROMPT, PromptBuilder

KINDS = {"moe-lora": "teacher-moe-lora", "e4srec": "teacher-e4srec"}
SELECT_ON = "ndcg@10"
# Parameter groups by name: the learning rate of each is a config field.
GROUPS = (
    ("lora_", "lr"),
    ("projector.", "projector_lr"),
    ("gate.", "gate_lr"),
    ("head.", "head_lr"),
    ("input_proj.", "head_lr"),
    ("sasrec.", "sasrec_lr"),
)


class Teacher:
    """A teacher model with the prompt builder that feeds it: ``scores = teacher(history)``."""

    def __init__(self, model: nn.Module, prompts: PromptBuilder, max_len: int, device: torch.device):
        self.model, self.prompts, self.max_len, self.device = model, prompts, max_len, device

    def __call__(self, history: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """``(B, L)`` left-padded histories (the last ``max_len`` are read) → ``(B, num_items + 1)``.

        ``module`` runs instead of ``self.model`` when given (its ``DistributedDataParallel`` wrapper).
        """
        history = history[:, -self.max_len :]
        return (module or self.model)(self.prompts(history).to(self.device), history.to(self.device))


def build_teacher(cfg: TeacherTrainConfig, data: Dataset, sasrec: SASRec, device: torch.device) -> Teacher:
    """Load the backbone and wrap it as the configured teacher (fresh adapters and heads)."""
    backbone, tokenizer = load_backbone(cfg.llm, layers=cfg.llm_layers, dtype=cfg.dtype)
    [placeholder] = add_special_tokens(backbone, tokenizer, [HISTORY_TOKEN])
    lora = {
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": tuple(cfg.target_modules),
    }
    if cfg.teacher == "moe-lora":
        model = MoELoRATeacher(
            backbone,
            sasrec,
            placeholder_id=placeholder,
            experts=cfg.experts,
            train_sasrec=cfg.train_sasrec,
            **lora,
        )
        titles = [None] + [data.title(i) for i in range(1, data.num_items + 1)]
        use_titles = cfg.titles and data.has_titles
        prompts = PromptBuilder(tokenizer, placeholder, MOE_LORA_PROMPT, titles if use_titles else None)
    else:
        model = E4SRecTeacher(backbone, sasrec.item_embeddings(), placeholder_id=placeholder, **lora)
        prompts = PromptBuilder(tokenizer, placeholder, E4SREC_PROMPT)
    return Teacher(model.to(device), prompts, cfg.max_len, device)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a teacher checkpoint holds: the parameters that train."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def load_teacher(run_dir: str | Path, data: Dataset, device: torch.device | str = "cpu") -> Teacher:
    """The best-validation teacher of a ``teacher-train`` run, checked against ``data``."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json", "teacher run")
    if config.get("kind") not in KINDS.values():
        raise DistillError(f"{run_dir} is not a teacher run (kind {config.get('kind')!r})")
    check_dataset(config, data, run_dir)
    cfg = from_dict(TeacherTrainConfig, config["train"], f"{run_dir}/config.json")
    weights, _, _ = load_checkpoint(run_dir / "best")
    teacher = build_teacher(cfg, data, load_run(config["sasrec_run"], data), torch.device(device))
    _load_trainable(teacher.model, weights, run_dir / "best")
    teacher.model.eval()
    return teacher


def _load_trainable(model: nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    own = trainable_state(model)
    missing, unexpected = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
    if missing or unexpected:
        raise DistillError(
            f"checkpoint {where} does not fit its config: {len(missing)} missing weights "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    with torch.no_grad():
        for name, value in weights.items():
            if own[name].shape != value.shape:
                raise DistillError(
                    f"checkpoint {where}: {name} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(own[name].shape)}"
                )
            own[name].copy_(value)


def evaluate_teacher(teacher: Teacher, data: Dataset, split: str, batch_size: int, users=None) -> dict:
    """Full-ranking metrics of ``teacher`` on the ``split`` targets of ``users`` (default all; each rank
    of a multi-process job scores its share)."""
    teacher.model.eval()
    users = shard(data.eval_users() if users is None else users)
    return evaluate(
        lambda batch: teacher(batch.inputs), data.eval_batches(split, batch_size, teacher.max_len, users)
    )


def run(cfg: TeacherTrainConfig) -> dict:
    """Train, select on validation, test the selected teacher; returns what ``metrics.json`` holds."""
    data = Dataset(cfg.data)
    sasrec = load_run(cfg.sasrec, data)  # refuses a run from another dataset before anything is written
    device = setup_device(cfg.device)
    run_dir = prepare_run_dir(cfg.output, resume=cfg.resume)
    seed_everything(cfg.seed)
    teacher = build_teacher(cfg, data, sasrec.to(device), device)
    model = teacher.model
    rank, ranks = world()
    net = model
    if ranks > 1:
        # Training goes through the wrapper (rank 0's fresh adapters on every rank, gradients averaged);
        # evaluation calls the model itself, each rank on its own users.
        net = DistributedDataParallel(model, broadcast_buffers=False)
        torch.manual_seed(cfg.seed + rank)  # each rank draws its own dropout masks

    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in trainable_state(model).items():
        field = next((f for key, f in GROUPS if key in name), None)
        if field is None:
            raise RuntimeError(f"trainable parameter {name} belongs to no learning-rate group")
        groups.setdefault(field, []).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": ps, "lr": getattr(cfg, f), "name": f} for f, ps in groups.items()],
        weight_decay=cfg.weight_decay,
    )
    samples = data.prefix_samples(cfg.samples_per_user, cfg.max_len)
    histories, targets = samples.histories, samples.targets
    if len(targets) == 0:
        raise DistillError(f"{data.path} has no training samples: every training sequence is shorter than 2")
    steps_per_epoch = math.ceil(math.ceil(len(targets) / cfg.batch_size) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _warmup_cosine(s, warmup_steps, total_steps)
    )

    stopper = EarlyStopping(cfg.patience)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    valid_users = data.eval_users()
    if cfg.eval_users is not None and cfg.eval_users < len(valid_users):
        pick = torch.randperm(len(valid_users), generator=torch.Generator().manual_seed(cfg.seed))[
            : cfg.eval_users
        ]
        valid_users = np.sort(valid_users[pick.numpy()])
    run_config = {
        "kind": KINDS[cfg.teacher],
        "dataset": {
            "path": str(data.path.resolve()),
            "fingerprint": data.fingerprint,
            "num_items": data.num_items,
        },
        "sasrec_run": str(Path(cfg.sasrec).resolve()),
        "train": to_dict(cfg),
        "trainable_parameters": sum(p.numel() for p in trainable_state(model).values()),
    }
    first_epoch, history = 1, []
    if cfg.resume:
        weights, saved, state = load_checkpoint(run_dir / "last", with_state=True)
        if saved.get("dataset") != run_config["dataset"] or saved.get("kind") != run_config["kind"]:
            raise DistillError(
                f"cannot resume {run_dir}: it holds a {saved.get('kind')} run on another dataset or teacher"
            )
        _load_trainable(model, weights, run_dir / "last")
        first_epoch, history = restore_loop_state(
            state, stopper, shuffle, optimizer=optimizer, scheduler=scheduler
        )
        log(f"resuming {run_dir} after epoch {state['epoch']}")
    write_json(run_dir / "config.json", run_config)
    log(
        f"{cfg.teacher} teacher on {cfg.llm}: {run_config['trainable_parameters']:,} trainable parameters, "
        f"{len(targets):,} samples, {total_steps:,} optimizer steps"
    )

    logger = Logger(run_dir)
    for epoch in range(first_epoch, cfg.epochs + 1):
        if stopper.should_stop:
            break
        model.train()
        order = torch.randperm(len(targets), generator=shuffle).numpy()
        started, total_loss, micro = time.perf_counter(), 0.0, 0
        with progress(total=len(order), desc=f"epoch {epoch}") as bar:
            for i in range(0, len(order), cfg.batch_size):
                batch = order[i : i + cfg.batch_size]
                # This rank's rows of the batch; a last batch with fewer rows than ranks gives each rank
                # one row (some the same), as every rank must take every step.
                idx = shard(batch) if len(batch) >= ranks else batch[[rank % len(batch)]]
                micro += 1
                stepping = micro % cfg.grad_accum == 0 or i + cfg.batch_size >= len(order)
                # Between optimizer steps DDP need not average gradients: the step's backward does.
                syncing = stepping or ranks == 1
                with contextlib.nullcontext() if syncing else net.no_sync():
                    scores = teacher(torch.from_numpy(histories[idx]), net)  # (B, N + 1)
                    loss = F.cross_entropy(scores[:, 1:], torch.from_numpy(targets[idx] - 1).to(device))
                    (loss / cfg.grad_accum).backward()
                if stepping:
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                total_loss += loss.item()
                bar.update(len(batch))
                bar.set_postfix(
                    loss=f"{total_loss / micro:.4f}",
                    samples_per_s=f"{bar.n / (time.perf_counter() - started):.1f}",
                )
        seconds = time.perf_counter() - started
        total_loss = all_sum(torch.tensor(total_loss)).item() / ranks  # the mean of every rank's rows
        stats = {"loss": total_loss / micro, "samples_per_s": len(order) / seconds}
        stats.update({f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups})
        logger.scalars(stats, epoch, prefix="train/")

        valid = evaluate_teacher(teacher, data, "valid", cfg.eval_batch_size, valid_users)
        logger.scalars(valid, epoch, prefix="valid/")
        line = (
            f"epoch {epoch}: loss {stats['loss']:.4f} "
            f"({seconds:.0f}s, {stats['samples_per_s']:.1f} samples/s)  "
            f"valid ndcg@10 {valid['ndcg@10']:.4f} hr@10 {valid['hr@10']:.4f}"
        )
        if stopper.step(valid[SELECT_ON], epoch):
            save_checkpoint(run_dir / "best", trainable_state(model), run_config)
            line += "  (best)"
        history.append(
            {
                "epoch": epoch,
                "seconds": seconds,
                **stats,
                **{f"valid_{k}": valid[k] for k in ("ndcg@10", "hr@10")},
            }
        )
        save_checkpoint(
            run_dir / "last",
            trainable_state(model),
            run_config,
            loop_state(epoch, history, stopper, shuffle, optimizer=optimizer, scheduler=scheduler),
        )
        log(line)
    logger.close()

    barrier()  # rank 0 has written the best checkpoint
    best_weights, _, _ = load_checkpoint(run_dir / "best")
    _load_trainable(model, best_weights, run_dir / "best")
    results = {
        "best_epoch": stopper.best_epoch,
        "selected_on": f"valid {SELECT_ON}" + (f" ({len(valid_users)} users)" if cfg.eval_users else ""),
        "valid": evaluate_teacher(teacher, data, "valid", cfg.eval_batch_size),
        "test": evaluate_teacher(teacher, data, "test", cfg.eval_batch_size),
        "ranking": MASKING_NOTE,
        "history": history,
    }
    write_json(run_dir / "metrics.json", results)
    return results


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0)))
