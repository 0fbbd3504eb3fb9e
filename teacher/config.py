"""Typed config of ``distill teacher-train`` (no torch: the CLI imports it to build ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distill.config import FOLDS_HELP, check, check_folds, check_resume, option

TEACHERS = ("moe-lora", "e4srec")
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Where the two teachers' papers differ, so do the defaults; a value given explicitly always wins.
TEACHER_DEFAULTS = {
    "moe-lora": {"r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05, "target_modules": ALL_PROJECTIONS},
    "e4srec": {
        "r": 16,
        "lora_alpha": 16.0,
        "lora_dropout": 0.05,
        "target_modules": ("gate_proj", "up_proj", "down_proj"),
    },
}


def _per_teacher(key: str) -> str:
    """The per-teacher defaults of a LoRA field, for its help text."""
    shown = {t: d[key] for t, d in TEACHER_DEFAULTS.items()}
    return "Default " + "; ".join(
        f"{t}: {','.join(v) if isinstance(v, tuple) else v}" for t, v in shown.items()
    )


@dataclass(frozen=True)
class TeacherTrainConfig:
    """``distill teacher-train``: an LLM teacher over a dataset, built on a SASRec student run.

    The teacher reads windows of its SASRec's ``max_len`` items and prompts with the last
    ``prompt_items`` of them; ``objective = "dense"`` scores every prompt position of windows tiling
    each training sequence, ``"last"`` one window per target for each user's last ``positions``
    targets, scored at its end. ``fuse_sasrec`` adds SASRec's own score. ``r``, ``lora_alpha``,
    ``lora_dropout`` and ``target_modules`` default per teacher (:data:`TEACHER_DEFAULTS`) when left
    unset. For the MoE-LoRA teacher ``r`` is the total rank, split evenly across ``experts``.
    """

    data: str = option("")
    sasrec: str = option("", "A `distill student-train` run: the teacher's ID encoder.")
    output: str = option("")
    teacher: Literal["moe-lora", "e4srec"] = option(
        "moe-lora", "moe-lora: iLoRA-style gated LoRA experts; e4srec: peft LoRA with a linear item head."
    )
    llm: str = option("tiny", "Backbone: 'tiny', a .gguf file, a model directory or a hub id.")
    llm_layers: int | None = option(None, "Keep only the first N decoder layers.")
    dtype: Literal["float32", "bfloat16"] = option(
        "float32",
        "Backbone dtype. bfloat16 halves its memory; on a CPU it is faster only where bfloat16 arithmetic "
        "is (AMX: a SmolLM2 step 1.5x float32's; AVX2 only: 16x slower).",
    )
    prompt_items: int = option(
        10, "History items in the prompt, each one scored (at most the SASRec run's max_len)."
    )
    objective: Literal["dense", "last"] = option(
        "dense",
        "dense: cross-entropy at every history position of windows tiling each sequence; last: at the "
        "last position of one prompt per target (the user's last --positions targets).",
    )
    positions: int = option(
        4,
        "--objective last: train on the last N targets of each training sequence "
        "(--samples-per-user: its old name).",
        "--positions",
        "--samples-per-user",
    )
    fuse_sasrec: bool = option(
        True,
        "Score = the teacher's dot product + SASRec's score for the same position; an untrained teacher "
        "ranks as its SASRec.",
        "--fuse-sasrec/--no-fuse-sasrec",
    )
    titles: bool = option(
        True,
        "MoE-LoRA: put item titles before their slots when the dataset has titles.",
        "--titles/--no-titles",
    )
    title_tokens: int = option(24, "MoE-LoRA: keep at most N tokens of each title.")
    item_text: bool = option(
        True,
        "Read each item's title once through every layer of the backbone and give the teacher's item "
        "side that vector (both teachers; when the dataset has titles).",
        "--item-text/--no-item-text",
    )
    experts: int = option(4, "MoE-LoRA: number of LoRA experts.")
    moe_scaling: Literal["total", "expert"] = option(
        "total",
        "MoE-LoRA: scale updates by lora_alpha / r (total rank) or by lora_alpha / (r / experts) (iLoRA).",
    )
    r: int | None = option(
        None, f"LoRA rank (MoE-LoRA: total, split across experts). {_per_teacher('r')}", "--lora-r"
    )
    lora_alpha: float | None = option(
        None, f"LoRA alpha; the update is scaled by alpha / r. {_per_teacher('lora_alpha')}"
    )
    lora_dropout: float | None = option(None, f"Dropout on the adapter input. {_per_teacher('lora_dropout')}")
    target_modules: tuple[str, ...] | None = option(
        None, f"Comma-separated Linear names to adapt. {_per_teacher('target_modules')}"
    )
    train_sasrec: bool = option(False, "Fine-tune the SASRec encoder too.")
    sasrec_folds: tuple[str, ...] = option(
        (),
        "A run of a `student-train --folds K` cross-fit of SASRecs (give all K, one each): each training "
        "window reads the SASRec that did not train on its user (states and fused score); validation, "
        "test and scoring read --sasrec.",
        "--sasrec-fold",
        multiple=True,
    )
    epochs: int = option(3)
    batch_size: int = option(8)
    grad_accum: int = option(1, "Micro-batches per optimizer step.")
    lr: float = option(2e-4, "Learning rate of the LoRA adapters.")
    projector_lr: float = option(
        1e-3, "Learning rate of the projectors (MoE-LoRA's MLPs, E4SRec's input Linear)."
    )
    gate_lr: float = option(1e-3, "MoE-LoRA: learning rate of the gating MLP.")
    head_lr: float = option(1e-3, "E4SRec: learning rate of the item head.")
    sasrec_lr: float = option(1e-4, "Learning rate of SASRec (--train-sasrec).")
    weight_decay: float = option(0.0)
    warmup: float = option(0.05, "Fraction of steps of linear warmup before cosine decay.")
    patience: int = option(2)
    eval_users: int | None = option(
        None, "Validate on a fixed random subset of N users (test always uses all)."
    )
    eval_batch_size: int = option(16, "Users per scoring batch.")
    seed: int = option(0)
    device: str = option("auto")
    resume: bool = option(False)
    overwrite: bool = option(False)
    folds: int | None = option(None, FOLDS_HELP[0] + " --sasrec must be fold F of a K-fold SASRec cross-fit.")
    fold: int | None = option(None, FOLDS_HELP[1])

    def __post_init__(self) -> None:
        check_folds(self)
        check_resume(self)
        for name, value in TEACHER_DEFAULTS.get(self.teacher, {}).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        check(
            self,
            required={"data": "--data DIR", "sasrec": "--sasrec RUN", "output": "--output RUN"},
            seeds=("seed",),
        )
        if self.teacher not in TEACHERS:
            raise ValueError(f"unknown teacher {self.teacher!r}; expected one of {', '.join(TEACHERS)}")
        check(
            self,
            at_least_one=(
                "prompt_items",
                "positions",
                "title_tokens",
                "experts",
                "r",
                "epochs",
                "batch_size",
                "grad_accum",
                "eval_batch_size",
                "llm_layers",
                "eval_users",
            ),
            positive=("lr", "projector_lr", "gate_lr", "head_lr", "sasrec_lr", "lora_alpha"),
            non_negative=("weight_decay", "patience"),
            fractions=("lora_dropout", "warmup"),
        )
        if self.teacher == "moe-lora" and self.r % self.experts:
            raise ValueError(
                f"r ({self.r}) must be divisible by experts ({self.experts}): each expert gets r / experts"
            )
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        if self.sasrec_folds and self.train_sasrec:
            raise ValueError(
                "--sasrec-fold with --train-sasrec: the cross-fitted SASRecs are read as they are; "
                "fine-tune without them"
            )
