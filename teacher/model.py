"""Building and loading a teacher: the backbone, its adapters and heads, and the prompts that feed it.

What every user of a teacher needs (``teacher-train``, ``export-logits``, ``evaluate``) lives here,
apart from the training loop in :mod:`teacher.train`. A teacher run's ``config.json`` holds what
rebuilds the model (the backbone spec and the SASRec run); its checkpoints only what was trained.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from distill.config import from_dict
from distill.data import Dataset
from distill.dist import shard
from distill.errors import DistillError
from distill.io import read_json
from distill.metrics import evaluate
from distill.runs import check_dataset, load_checkpoint, warn_if_unfinished
from student.run import load_run
from student.sasrec import SASRec
from teacher.backbone import add_special_tokens, load_backbone
from teacher.config import TeacherTrainConfig
from teacher.e4srec import E4SRecTeacher
from teacher.moe_lora import MoELoRATeacher
from teacher.prompts import E4SREC_PROMPT, HISTORY_TOKEN, MOE_LORA_PROMPT, PromptBuilder

# The run kind of each teacher, as config.json records it.
KINDS = {"moe-lora": "teacher-moe-lora", "e4srec": "teacher-e4srec"}


class Teacher:
    """A teacher model with the prompt builder that feeds it.

    It reads histories of ``context`` items (its SASRec's ``max_len``: SASRec encodes all of them) and
    puts the last ``max_len`` into the prompt; every one of those positions is scored.
    """

    def __init__(
        self, model: nn.Module, prompts: PromptBuilder, max_len: int, context: int, device: torch.device
    ):
        self.model, self.prompts, self.device = model, prompts, device
        self.max_len, self.context = max_len, context

    def queries(
        self, history: torch.Tensor, module: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, L)`` left-padded histories (the last ``context`` are read) → queries ``(B, max_len, D)``
        at the last ``max_len`` columns and item vectors ``(num_items + 1, D)``; scores are their dot
        products.

        ``module`` runs instead of ``self.model`` when given (its ``DistributedDataParallel`` wrapper).
        """
        history = history[:, -self.context :]
        prompts = self.prompts(history[:, -self.max_len :]).to(self.device)
        return (module or self.model)(prompts, history.to(self.device), self.max_len)

    def scores(self, history: torch.Tensor) -> torch.Tensor:
        """Scores at every one of the last ``max_len`` columns, ``(B, max_len, num_items + 1)``: column j
        predicts the item after it (rows of padding columns are meaningless)."""
        queries, items = self.queries(history)
        return queries @ items.T

    def __call__(self, history: torch.Tensor) -> torch.Tensor:
        """Scores after the last history item, ``(B, num_items + 1)``."""
        queries, items = self.queries(history)
        return queries[:, -1] @ items.T


def prompt_context(cfg: TeacherTrainConfig, sasrec: SASRec) -> int:
    """The history a teacher reads: its SASRec's ``max_len``, which must hold the prompt's ``max_len``."""
    context = sasrec.config.max_len
    if cfg.max_len > context:
        raise DistillError(
            f"teacher max_len {cfg.max_len} is longer than its SASRec run's max_len {context} "
            f"({cfg.sasrec}): use --max-len {context} or less"
        )
    return context


def build_teacher(cfg: TeacherTrainConfig, data: Dataset, sasrec: SASRec, device: torch.device) -> Teacher:
    """Load the backbone and wrap it as the configured teacher (fresh adapters and heads)."""
    context = prompt_context(cfg, sasrec)
    backbone, tokenizer = load_backbone(cfg.llm, layers=cfg.llm_layers, dtype=cfg.dtype)
    [placeholder] = add_special_tokens(backbone, tokenizer, [HISTORY_TOKEN])
    lora = {
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": tuple(cfg.target_modules),
        "fuse_sasrec": cfg.fuse_sasrec,
    }
    if cfg.teacher == "moe-lora":
        model = MoELoRATeacher(
            backbone,
            sasrec,
            placeholder_id=placeholder,
            experts=cfg.experts,
            per_expert_scaling=cfg.moe_scaling == "expert",
            train_sasrec=cfg.train_sasrec,
            **lora,
        )
        titles = [None] + [data.title(i) for i in range(1, data.num_items + 1)]
        use_titles = cfg.titles and data.has_titles
        prompts = PromptBuilder(
            tokenizer, placeholder, MOE_LORA_PROMPT, titles if use_titles else None, cfg.title_tokens
        )
    else:
        model = E4SRecTeacher(backbone, sasrec, placeholder_id=placeholder, **lora)
        prompts = PromptBuilder(tokenizer, placeholder, E4SREC_PROMPT)
    return Teacher(model.to(device), prompts, cfg.max_len, context, device)


def check_sasrec(cfg: TeacherTrainConfig, sasrec: SASRec) -> int:
    """What teacher-train checks of its SASRec run before writing anything: a warning when the run is
    unfinished, and an error when the prompt would hold more items than SASRec reads (both teachers
    read a window of SASRec's ``max_len``). Returns that window."""
    warn_if_unfinished(cfg.sasrec)
    return prompt_context(cfg, sasrec)


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
    warn_if_unfinished(run_dir)
    teacher = build_teacher(cfg, data, load_run(config["sasrec_run"], data), torch.device(device))
    load_trainable(teacher.model, weights, run_dir / "best")
    teacher.model.eval()
    return teacher


def load_trainable(model: nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
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
        lambda batch: teacher(batch.inputs), data.eval_batches(split, batch_size, teacher.context, users)
    )
