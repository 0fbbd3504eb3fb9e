"""Typed configs for the SASRec student.

This module must not import torch: ``distill --help`` imports it to build its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SASRecConfig:
    """Architecture of the SASRec student.

    Attributes:
        num_items: Catalogue size. Item ids are ``1..num_items``; 0 is padding.
        max_len: Longest input sequence; also the number of learned positions.
        hidden: Width ``d`` of item embeddings and transformer states.
        blocks: Number of pre-LN causal transformer blocks.
        heads: Attention heads; must divide ``hidden``.
        dropout: Dropout on embeddings, attention weights and residual branches.
    """

    num_items: int
    max_len: int = 200
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {self.num_items}")
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if self.blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {self.blocks}")
        if self.heads < 1:
            raise ValueError(f"heads must be >= 1, got {self.heads}")
        if self.hidden % self.heads != 0:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class StudentTrainConfig:
    """``distill student-train``: SASRec on next-item labels, and on a teacher's soft labels when given.

    With ``teacher_scores`` (a score directory from ``distill export-logits``) the loss is
    ``(1 - alpha) * CE(labels) + alpha * KD`` where KD (``kl`` or ``rank``, at ``temperature``) is
    computed at the positions the teacher scored. ``length_group`` > 1 batches users of similar
    length together (see :meth:`distill.data.Dataset.train_batches`): less padding per epoch, but on
    ML-1M slower progress per epoch too, so the default is the plain shuffle (1).

    The architecture fields mirror :class:`SASRecConfig` (whose checks they go through);
    ``num_items`` comes from the data.
    """

    data: str = ""
    output: str = ""
    max_len: int = 200
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: Literal["ce", "bce"] = "ce"
    negatives: int = 1
    length_group: int = 1
    patience: int = 10
    eval_every: int = 1
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    teacher_scores: str | None = None
    kd: Literal["kl", "rank"] = "kl"
    alpha: float = 0.5
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("a dataset directory is required (--data DIR)")
        if not self.output:
            raise ValueError("a run directory is required (--output RUN)")
        self.sasrec(num_items=1)  # validates the architecture fields
        for name in ("epochs", "batch_size", "negatives", "length_group", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(
                f"alpha mixes label and distillation loss and must be in [0, 1], got {self.alpha}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 (0 disables early stopping), got {self.patience}")

    def sasrec(self, num_items: int) -> SASRecConfig:
        """The model config for a catalogue of ``num_items`` items."""
        return SASRecConfig(
            num_items=num_items,
            max_len=self.max_len,
            hidden=self.hidden,
            blocks=self.blocks,
            heads=self.heads,
            dropout=self.dropout,
        )
