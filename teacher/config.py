"""Typed config of ``distill teacher-train`` (no torch: the CLI imports it to build ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


@dataclass(frozen=True)
class TeacherTrainConfig:
    """``distill teacher-train``: an LLM teacher over a dataset, built on a SASRec student run.

    A training sample is (the last ``max_len`` items before a target, the target), for the last
    ``samples_per_user`` targets of each user's training sequence. ``r``, ``lora_alpha``,
    ``lora_dropout`` and ``target_modules`` default per teacher (:data:`TEACHER_DEFAULTS`) when left
    unset. For the MoE-LoRA teacher ``r`` is the total rank, split evenly across ``experts``.
    """

    data: str = ""
    sasrec: str = ""
    output: str = ""
    teacher: Literal["moe-lora", "e4srec"] = "moe-lora"
    llm: str = "tiny"
    llm_layers: int | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    max_len: int = 10
    samples_per_user: int = 4
    titles: bool = True
    experts: int = 4
    r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    target_modules: tuple[str, ...] | None = None
    train_sasrec: bool = False
    epochs: int = 3
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    projector_lr: float = 1e-3
    gate_lr: float = 1e-3
    head_lr: float = 1e-3
    sasrec_lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: float = 0.05
    patience: int = 2
    eval_users: int | None = None
    eval_batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    resume: bool = False

    def __post_init__(self) -> None:
        for name, value in TEACHER_DEFAULTS.get(self.teacher, {}).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name, flag in (("data", "--data DIR"), ("sasrec", "--sasrec RUN"), ("output", "--output RUN")):
            if not getattr(self, name):
                raise ValueError(f"{name} is required ({flag})")
        if self.teacher not in TEACHERS:
            raise ValueError(f"unknown teacher {self.teacher!r}; expected one of {', '.join(TEACHERS)}")
        positive = (
            "max_len",
            "samples_per_user",
            "experts",
            "r",
            "epochs",
            "batch_size",
            "grad_accum",
            "eval_batch_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.llm_layers is not None and self.llm_layers < 1:
            raise ValueError(f"llm_layers must be at least 1, got {self.llm_layers}")
        if self.eval_users is not None and self.eval_users < 1:
            raise ValueError(f"eval_users must be at least 1, got {self.eval_users}")
        if self.teacher == "moe-lora" and self.r % self.experts:
            raise ValueError(
                f"r ({self.r}) must be divisible by experts ({self.experts}): each expert gets r / experts"
            )
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        for name in ("lr", "projector_lr", "gate_lr", "head_lr", "sasrec_lr", "lora_alpha"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 (0 disables early stopping), got {self.patience}")


@dataclass(frozen=True)
class ExportConfig:
    """``distill export-logits``: a teacher run's soft labels over the catalogue, as a score directory.

    ``positions`` is how many of each user's last training targets get a row (None: every one);
    ``top_k`` how many items each row keeps (None: the whole catalogue).
    """

    run: str = ""
    data: str = ""
    output: str = ""
    top_k: int | None = 100
    positions: int | None = 4
    batch_size: int = 16
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name, flag in (("run", "--run RUN"), ("data", "--data DIR"), ("output", "--output SCORES")):
            if not getattr(self, name):
                raise ValueError(f"{name} is required ({flag})")
        for name in ("top_k", "positions"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or unset for all), got {value}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class PipelineConfig:
    """``distill pipeline``: every stage in order, with the knobs that matter for a first run.

    prepare (the synthetic data unless ``data`` names a prepared directory) → SASRec → teacher →
    export-logits → the distilled student. Each stage's full config is written to its own run
    directory; run the stages one by one for every option.
    """

    output: str = ""
    data: str | None = None
    num_users: int = 1000
    num_items: int = 500
    llm: str = "tiny"
    teacher: Literal["moe-lora", "e4srec"] = "moe-lora"
    student_epochs: int = 30
    teacher_epochs: int = 1
    max_len: int = 50
    teacher_max_len: int = 10
    samples_per_user: int = 1
    top_k: int = 100
    kd: Literal["kl", "rank"] = "kl"
    alpha: float = 0.5
    temperature: float = 1.0
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("output is required (--output DIR)")
        for name in (
            "num_users",
            "num_items",
            "student_epochs",
            "teacher_epochs",
            "max_len",
            "teacher_max_len",
            "samples_per_user",
            "top_k",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
