"""``distill evaluate``: full-ranking metrics of a saved run, whatever model it holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from distill.data import Dataset
from distill.dist import resolve_device
from distill.errors import DistillError
from distill.training import read_json, warn_if_unfinished
from pipeline.config import EvaluateConfig

TEACHER_KINDS = ("teacher-moe-lora", "teacher-e4srec")


def scorer(run_dir: str | Path, data: Dataset, batch_size: int, device: str = "auto") -> Callable[..., dict]:
    """``metrics(split=...)`` of the run in ``run_dir`` (a student or either teacher), checked against
    ``data``; the run directory's ``config.json`` says which model it holds."""
    kind = read_json(Path(run_dir) / "config.json", "run").get("kind")
    dev = resolve_device(device)
    if kind == "student":
        from student.run import evaluate_model, load_run

        model = load_run(run_dir, data, dev)
        warn_if_unfinished(run_dir)
        return lambda split: evaluate_model(model, data, split, batch_size, dev)
    if kind in TEACHER_KINDS:
        from teacher.model import evaluate_teacher, load_teacher

        teacher = load_teacher(run_dir, data, dev)
        return lambda split: evaluate_teacher(teacher, data, split, batch_size)
    raise DistillError(f"{run_dir}: unknown run kind {kind!r}")


def run(cfg: EvaluateConfig) -> dict[str, dict[str, float]]:
    """Metrics of ``cfg.run`` on the requested splits: ``{split: {metric: value}}``."""
    data = Dataset(cfg.data)
    metrics = scorer(cfg.run, data, cfg.batch_size, cfg.device)
    splits = ["valid", "test"] if cfg.split == "both" else [cfg.split]
    return {split: metrics(split=split) for split in splits}
