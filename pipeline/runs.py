"""The one way to open a run: its ``config.json`` says its kind, the kind says how to load it.

Every command that reads runs (``export-logits``, ``evaluate``, ``compare``, ``recommend``, ``serve``
and the pipeline's summary) opens them here and gets a :class:`~distill.scoring.Scorer`, whatever model
the run holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from distill.data import Dataset
from distill.dist import resolve_device
from distill.errors import DistillError
from distill.outputs import STUDENT, TEACHER_KINDS
from distill.runs import read_run_config
from distill.scoring import Scorer
from student.run import open_student
from teacher.model import open_teacher

# How each run kind opens: (run directory, dataset, device) -> Scorer.
OPENERS: dict[str, Callable[[Path, Dataset, torch.device], Scorer]] = {
    STUDENT: open_student,
    **dict.fromkeys(TEACHER_KINDS.values(), open_teacher),
}


def open_run(run_dir: str | Path, data: Dataset, device: str | torch.device = "auto") -> Scorer:
    """The model of the run in ``run_dir``, checked against ``data``, ready to score on ``device``."""
    run_dir = Path(run_dir)
    kind = read_run_config(run_dir).get("kind")
    if kind not in OPENERS:
        known = ", ".join(OPENERS)
        raise DistillError(f"{run_dir}: unknown run kind {kind!r} (distill writes {known})")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    return OPENERS[kind](run_dir, data, device)
