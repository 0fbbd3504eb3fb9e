"""Typed configs for the SASRec student.

This module must not import torch: ``distill --help`` imports it to build its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distill.config import FOLDS_HELP, check, check_folds, check_resume, option

# The KD temperatures a student accepts. Past 100 the float32 KL of T^2-scaled softened rows drifts (2% off
# a float64 reference at T = 1000, of the wrong sign at 10^4); below 0.01 the rows are as good as one-hot.
TEMPERATURES = (0.01, 100.0)


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
        check(
            self, at_least_one=("num_items", "max_len", "hidden", "blocks", "heads"), fractions=("dropout",)
        )
        if self.hidden % self.heads != 0:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")


@dataclass(frozen=True)
class StudentTrainConfig:
    """``distill student-train``: SASRec on next-item labels, and on a teacher's soft labels when given.

    With ``teacher_scores`` (a score directory from ``distill export-logits``) the loss per position is
    ``(1 - alpha) * CE(label) + alpha * KD`` where the teacher scored it and CE alone where it did
    not, averaged over positions; KD (``kl`` or ``rank``, at ``temperature``) is fused into the
    chunked full-softmax CE pass (``loss = "ce"``) or, with ``loss = "sampled"``, estimated over the
    teacher's top-k plus the sampled items (:func:`student.losses.sampled_loss`); ``loss = "bce"`` has
    no normaliser to distil against and takes no teacher. ``alpha = 0`` trains exactly as without a
    teacher. ``loss = "sampled"`` is the sampled softmax for catalogues too large for a full softmax:
    the batch's own targets plus ``negatives`` draws per batch from ``sampler`` (uniform unless set;
    ``popularity``: the training split's item counts), logQ-corrected; ``negatives`` must be below the
    catalogue size, checked by ``student-train`` once the data is read. ``hint_run`` (a wider SASRec
    run) adds ``hint_weight`` times the representation loss of :mod:`student.hint` at every position,
    with or without soft labels.
    ``item_updates`` says how the item table learns: densely (Adam on every row, the default) or, with
    ``loss = "sampled"`` in one process, by rows (Adam on the rows a batch reads, each row's missed
    steps replayed before it is read: the same model; :mod:`student.optim`).
    ``length_group`` > 1 batches users of similar length together (see
    :meth:`distill.data.Dataset.train_batches`): less padding per epoch, but on ML-1M slower progress
    per epoch too, so the default is the plain shuffle (1).

    The architecture fields mirror :class:`SASRecConfig` (whose checks they go through);
    ``num_items`` comes from the data.
    """

    data: str = option("")
    output: str = option("")
    max_len: int = option(200)
    hidden: int = option(64, "Embedding and state width.")
    blocks: int = option(2, "Transformer blocks.")
    heads: int = option(1, "Attention heads (must divide --hidden).")
    dropout: float = option(0.2, "Dropout rate.")
    epochs: int = option(200)
    batch_size: int = option(128)
    lr: float = option(1e-3)
    weight_decay: float = option(0.0)
    loss: Literal["ce", "bce", "sampled"] = option(
        "ce",
        "ce: full-softmax cross-entropy; bce: binary cross-entropy with sampled negatives; sampled: "
        "softmax over the batch's target items plus --negatives draws, logQ-corrected (for catalogues "
        "too large for ce; takes --teacher-scores too).",
    )
    negatives: int = option(
        1,
        "--loss bce: negatives per position; --loss sampled: extra negatives drawn per batch, beside "
        "the batch's own items. At least 1, below the number of items.",
    )
    sampler: Literal["uniform", "popularity"] | None = option(
        None,
        "--loss sampled: draw the extra negatives uniformly (the default) or by popularity (the "
        "training split's item counts, plus one).",
    )
    item_updates: Literal["rows", "dense"] | None = option(
        None,
        "How the item table learns. dense (the default): Adam over the whole table every step. rows "
        "(--loss sampled, one process): only the rows a batch reads (its inputs, targets, negatives, "
        "teacher items), by Adam on a sparse gradient, so a step costs the same at any catalogue size; "
        "the steps a row missed are replayed before it is read and at each epoch's end, so it trains "
        "the model dense trains (without --weight-decay). For catalogues where a dense step is the "
        "cost (10^5 items and up).",
    )
    length_group: int = option(
        1, "Sort shuffled users by length within runs of N batches: faster epochs, less mixed batches."
    )
    precision: Literal["float32", "bfloat16"] = option(
        "float32",
        "bfloat16: mixed precision. The transformer runs under autocast and the full CE's catalogue "
        "products in bfloat16; weights, Adam, the softmax's sums and evaluation stay float32. Faster "
        "where the CPU multiplies bfloat16 natively (with AMX: 0.70x a float32 epoch on ML-1M, the same "
        "test NDCG@10 on Beauty; bench/results/student_precision.md), slower where it does not.",
    )
    patience: int = option(10)
    eval_every: int = option(1, "Validate every N epochs.")
    eval_batch_size: int = 512
    seed: int = option(0)
    device: str = option("auto")
    resume: bool = option(False)
    overwrite: bool = option(False)
    teacher_scores: str | None = option(
        None, "A score directory from `distill export-logits`: distill the teacher into the student."
    )
    kd: Literal["kl", "rank"] = option(
        "kl", "Distillation loss: kl (Hinton) or rank (position-weighted top-k)."
    )
    alpha: float = option(
        0.5, "Per position the teacher scored: (1 - alpha) * CE(label) + alpha * KD; CE alone elsewhere."
    )
    temperature: float = option(1.0, "Distillation temperature, 0.01 to 100.")
    hint_run: str | None = option(
        None,
        "A `distill student-train` run (max_len at least --max-len) whose hidden states the student "
        "learns to reproduce through distillation experts (DE-RRD's DE).",
    )
    hint_weight: float = option(1.0, "--hint-run: weight of the representation loss added to the loss.")
    hint_experts: int = option(4, "--hint-run: number of distillation experts.")
    folds: int | None = option(None, FOLDS_HELP[0])
    fold: int | None = option(None, FOLDS_HELP[1])

    def __post_init__(self) -> None:
        check(self, required={"data": "--data DIR", "output": "--output RUN"})
        self.sasrec(num_items=1)  # validates the architecture fields
        check(
            self,
            at_least_one=(
                "epochs",
                "batch_size",
                "negatives",
                "length_group",
                "eval_every",
                "eval_batch_size",
                "hint_experts",
            ),
            positive=("lr", "temperature"),
            non_negative=("weight_decay", "patience", "hint_weight"),
            seeds=("seed",),
        )
        if not 0 <= self.alpha <= 1:
            raise ValueError(
                f"alpha mixes label and distillation loss and must be in [0, 1], got {self.alpha}"
            )
        if not TEMPERATURES[0] <= self.temperature <= TEMPERATURES[1]:
            raise ValueError(
                f"temperature must be in [{TEMPERATURES[0]:g}, {TEMPERATURES[1]:g}], got "
                f"{self.temperature:g}: beyond, float32's KL of the softened rows is no longer reliable"
            )
        if self.teacher_scores is not None and not str(self.teacher_scores).strip():
            raise ValueError(
                "teacher_scores (--teacher-scores) is empty: give a score directory, or leave the option out"
            )
        check_folds(self)
        check_resume(self)
        if self.sampler is not None and self.loss != "sampled":
            raise ValueError(f"--sampler draws the negatives of --loss sampled; --loss {self.loss} has none")
        if self.item_updates == "rows" and self.loss != "sampled":
            raise ValueError(
                f"--item-updates rows is for --loss sampled; --loss {self.loss} reaches every item's row"
            )
        if self.teacher_scores and self.loss == "bce":
            raise ValueError(
                "distillation (--teacher-scores) needs --loss ce or sampled (a softmax); --loss bce has none"
            )

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


@dataclass(frozen=True)
class ExportModelConfig:
    """``distill export-model``: a student's scoring path as ONNX, with its item vocabulary beside it."""

    run: str = option("", "A `distill student-train` run.")
    output: str = option("", "ONNX file to write (the vocabulary goes beside it).", "--output", "-o")
    data: str | None = option(None, "Dataset directory (default: the one the run was trained on).")
    opset: int = option(18, "ONNX opset version.")
    overwrite: bool = option(False)

    def __post_init__(self) -> None:
        check(self, required={"run": "--run RUN", "output": "--output FILE"}, at_least_one=("opset",))
        if not self.output.endswith(".onnx"):
            raise ValueError(f"the output should be a .onnx file, got {self.output!r}")
