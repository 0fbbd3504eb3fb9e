"""A model as every command that reads runs uses it: what it reads, what it scores, how to rank with it.

Each run kind opens into a :class:`Scorer` (a student in :mod:`student.run`, either teacher in
:mod:`teacher.model`, ensembles and cross-fits of them in :mod:`pipeline.runs`, which is the one
loader). Export, evaluate, compare, recommend, serve, the pipeline's summary and both training loops'
validation all score through it, so "score a user's history" is written once per model kind.

Histories are ``(B, L)`` item ids, left-padded with 0, ``L <= context``. ``users`` are the dataset's
user ids of those rows, or None for histories of no known user (a cross-fit needs them: each user is
scored by the run that did not train on them).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.data import Dataset
from distill.dist import shard
from distill.errors import DistillError
from distill.metrics import evaluate, user_ranks

ScoreFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class Scorer:
    """A model that scores the whole catalogue after a history.

    Attributes:
        kind: the run kind (``student``, ``teacher-moe-lora``, …, ``ensemble``, ``cross-fit``).
        context: history items the model reads (its window).
        width: positions one pass scores: the last ``width`` columns of the window.
        dense: ``(history (B, L), users) -> (B, width, num_items + 1)``: column j scores the item after
            history column ``L - width + j`` (rows of padding columns are meaningless).
        last: ``(history (B, L), users) -> (B, num_items + 1)``: the scores after the last column.
        modules: the torch modules behind it (their parameters are counted, their mode set to eval).
        source: what it was opened from, for the records that name it (a score manifest): its kind and
            run directory, or its members'; paths as :class:`~pathlib.Path`, made relative by the writer.
    """

    kind: str
    context: int
    width: int
    dense: ScoreFn
    last: ScoreFn
    modules: tuple[nn.Module, ...]
    source: dict = field(default_factory=dict)

    @property
    def parameters(self) -> int:
        """Parameters of every module (a teacher's include its frozen backbone), each counted once."""
        seen = {id(p): p.numel() for m in self.modules for p in m.parameters()}
        return sum(seen.values())

    def eval(self) -> Scorer:
        for module in self.modules:
            module.eval()
        return self

    @torch.no_grad()
    def evaluate(
        self, data: Dataset, split: str, batch_size: int, users: np.ndarray | None = None
    ) -> dict[str, float]:
        """Full-ranking metrics on the ``split`` targets of ``users`` (default all; each rank of a
        multi-process job scores its share, every rank gets the metrics of all)."""
        self.eval()
        users = shard(data.eval_users() if users is None else users)
        return evaluate(self._score_batch, data.eval_batches(split, batch_size, self.context, users))

    @torch.no_grad()
    def ranks(self, data: Dataset, split: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every user and the 0-based rank of their ``split`` target (:func:`distill.metrics.user_ranks`)."""
        self.eval()
        return user_ranks(self._score_batch, data.eval_batches(split, batch_size, self.context))

    @torch.no_grad()
    def ms_per_user(self, data: Dataset, split: str, batch_size: int, repeats: int = 5) -> float:
        """Wall milliseconds to score the whole catalogue for one user, in batches of ``batch_size``: the
        median of ``repeats`` passes over every user after one warm-up pass (the first pass pays for
        allocation and kernel selection, which serving does once)."""
        self.eval()
        batches = list(data.eval_batches(split, batch_size, self.context))
        users = max(sum(len(b.users) for b in batches), 1)
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            for batch in batches:
                self._score_batch(batch)
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times[1:]) / users

    @torch.no_grad()
    def check_finite(self, data: Dataset, where: str | Path) -> Scorer:
        """Refuse (one line) a model whose scores are NaN or infinite: weights that are finite each but
        overflow together. A few users' validation histories are scored; a blown-up model fails on any."""
        self.eval()
        users = data.eval_users()[:8]
        if len(users):
            batch = next(data.eval_batches("valid", len(users), self.context, users))
            if not torch.isfinite(self._score_batch(batch)[:, 1:]).all():
                raise DistillError(
                    f"{where} scores NaN or infinite values (its weights overflow): it cannot rank; "
                    "retrain it, or use an earlier checkpoint"
                )
        return self

    def _score_batch(self, batch) -> torch.Tensor:
        return self.last(batch.inputs, batch.users)
