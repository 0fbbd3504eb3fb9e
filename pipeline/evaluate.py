"""``distill evaluate``: full-ranking metrics of a saved run, whatever model it holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.data import Dataset, EvalBatch
from distill.dist import resolve_device
from distill.errors import DistillError
from distill.io import read_json
from distill.metrics import evaluate, user_ranks
from distill.outputs import RUN_KINDS
from distill.runs import warn_if_unfinished
from pipeline.config import EvaluateConfig

TEACHER_KINDS = tuple(kind for kind in RUN_KINDS if kind != "student")


@dataclass(frozen=True)
class RunScorer:
    """A saved run's model, scoring the held-out targets of ``data``; called as ``metrics(split)``.

    Attributes:
        score: ``batch -> (B, num_items + 1)`` scores of every item.
        max_len: the history length the model reads.
        parameters: the model's parameter count (a teacher's includes its frozen backbone).
    """

    score: Callable[[EvalBatch], torch.Tensor]
    max_len: int
    parameters: int
    data: Dataset
    batch_size: int

    def __call__(self, split: str) -> dict[str, float]:
        """Full-ranking metrics on the ``split`` target of every user."""
        return evaluate(self.score, self._batches(split))

    def ranks(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Users and the 0-based ranks of their ``split`` targets (:func:`distill.metrics.user_ranks`)."""
        return user_ranks(self.score, self._batches(split))

    @torch.no_grad()
    def ms_per_user(self, split: str = "test") -> float:
        """Wall milliseconds to score the whole catalogue for one user, in batches of ``batch_size``."""
        batches = list(self._batches(split))
        started = time.perf_counter()
        for batch in batches:
            self.score(batch)
        return 1000 * (time.perf_counter() - started) / max(sum(len(b.users) for b in batches), 1)

    def _batches(self, split: str):
        return self.data.eval_batches(split, self.batch_size, self.max_len)


def scorer(run_dir: str | Path, data: Dataset, batch_size: int, device: str = "auto") -> RunScorer:
    """The model of the run in ``run_dir`` (a student or either teacher), checked against ``data``; the
    run directory's ``config.json`` says which model it holds."""
    kind = read_json(Path(run_dir) / "config.json", "run").get("kind")
    dev = resolve_device(device)
    if kind == "student":
        from student.run import load_run

        model = load_run(run_dir, data, dev)
        warn_if_unfinished(run_dir)
        return RunScorer(
            lambda batch: model.score(model.user_embedding(batch.inputs.to(dev))),
            model.config.max_len,
            sum(p.numel() for p in model.parameters()),
            data,
            batch_size,
        )
    if kind in TEACHER_KINDS:
        from teacher.model import load_teacher

        teacher = load_teacher(run_dir, data, dev)  # which warns when the run is unfinished
        return RunScorer(
            lambda batch: teacher(batch.inputs),
            teacher.context,  # the teacher reads its SASRec's window
            sum(p.numel() for p in teacher.model.parameters()),
            data,
            batch_size,
        )
    raise DistillError(f"{run_dir}: unknown run kind {kind!r}")


def run(cfg: EvaluateConfig) -> dict[str, dict[str, float]]:
    """Metrics of ``cfg.run`` on the requested splits: ``{split: {metric: value}}``."""
    data = Dataset(cfg.data)
    metrics = scorer(cfg.run, data, cfg.batch_size, cfg.device)
    splits = ["valid", "test"] if cfg.split == "both" else [cfg.split]
    return {split: metrics(split) for split in splits}
