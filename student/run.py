"""Using a trained ``student-train`` run: load its best SASRec, score users with it.

What other stages need of a student run (the teacher's ID encoder, ``evaluate``, export, serving)
lives here, apart from the training loop in :mod:`student.train`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distill.config import from_dict
from distill.data import Dataset
from distill.dist import shard
from distill.errors import DistillError
from distill.io import read_json
from distill.metrics import evaluate
from distill.runs import check_dataset, load_checkpoint
from student.config import SASRecConfig
from student.sasrec import SASRec

KIND = "student"


def load_run(run_dir: str | Path, data: Dataset, device: torch.device | str = "cpu") -> SASRec:
    """The best-validation SASRec of a ``student-train`` run, checked against ``data``, in eval mode."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json", "student run")
    if config.get("kind") != KIND:
        raise DistillError(f"{run_dir} is not a student run (kind {config.get('kind')!r})")
    check_dataset(config, data, run_dir)
    weights, _, _ = load_checkpoint(run_dir / "best")
    model_config = config.get("model")
    if not isinstance(model_config, dict):
        raise DistillError(f"{run_dir / 'config.json'}: 'model' is not a table of SASRec settings")
    model = SASRec(from_dict(SASRecConfig, model_config, f"{run_dir}/config.json"))
    check_weights(model.state_dict(), weights, run_dir / "best")
    model.load_state_dict(weights)
    return model.to(device).eval()


def check_weights(expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], where: Path) -> None:
    """Refuse weights that do not fit a model, naming the first weight that differs and how."""
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        raise DistillError(
            f"checkpoint {where} does not fit its config: {len(missing)} missing weights "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    for name, value in expected.items():
        if weights[name].shape != value.shape:
            raise DistillError(
                f"checkpoint {where} does not fit its config: {name} has shape "
                f"{tuple(weights[name].shape)}, its config gives {tuple(value.shape)}"
            )


def evaluate_model(model: SASRec, data: Dataset, split: str, batch_size: int, device: torch.device) -> dict:
    """Full-ranking metrics of ``model`` on the ``split`` targets of every user (each rank its share)."""
    model.eval()

    def score(batch) -> torch.Tensor:
        return model.score(model.user_embedding(batch.inputs.to(device)))  # (B, num_items + 1)

    return evaluate(
        score, data.eval_batches(split, batch_size, model.config.max_len, shard(data.eval_users()))
    )
