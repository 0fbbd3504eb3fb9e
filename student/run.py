"""Using a trained ``student-train`` run: load its best SASRec, score users with it.

What other stages need of a student run (the teacher's ID encoder, the run loader of
:mod:`pipeline.runs`, ONNX export) lives here, apart from the training loop in :mod:`student.train`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distill.config import from_dict
from distill.data import Dataset
from distill.errors import DistillError
from distill.outputs import STUDENT
from distill.runs import check_dataset, load_checkpoint, read_run_config, warn_if_unfinished
from distill.scoring import Scorer, dot_blocks
from student.config import SASRecConfig
from student.sasrec import SASRec


def load_run(run_dir: str | Path, data: Dataset, device: torch.device | str = "cpu") -> SASRec:
    """The best-validation SASRec of a ``student-train`` run, checked against ``data``, in eval mode."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config.get("kind") != STUDENT:
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


def open_student(run_dir: str | Path, data: Dataset, device: torch.device | str = "cpu") -> Scorer:
    """A ``student-train`` run as a :class:`~distill.scoring.Scorer` (warns when it is unfinished)."""
    model = load_run(run_dir, data, device)
    warn_if_unfinished(run_dir)
    return sasrec_scorer(model)


def sasrec_scorer(model: SASRec) -> Scorer:
    """Score with ``model`` as it is (also a model still training: its validation goes through this).

    SASRec reads any history of at most ``max_len`` items and scores every column of it in one pass.
    Its scores are dot products with the item table, so a block of items is a slice of that table.
    """
    device = model.item_emb.weight.device

    def dense(history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return model.score(model(history.to(device)))  # (B, L, N + 1)

    def last(history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return model.score(model.user_embedding(history.to(device)))  # (B, N + 1)

    blocks = dot_blocks(
        last_query=lambda history, users=None: model.user_embedding(history.to(device)),  # (B, d)
        dense_query=lambda history, users=None: model(history.to(device)),  # (B, L, d)
        items=lambda start, stop: model.item_embeddings()[start:stop],  # (n, d)
    )
    n = model.config.max_len
    return Scorer(STUDENT, context=n, width=n, dense=dense, last=last, modules=(model,), blocks=blocks)


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
        if weights[name].is_floating_point() != value.is_floating_point():
            raise DistillError(
                f"checkpoint {where} does not fit its config: {name} holds {weights[name].dtype}, "
                f"the model {value.dtype}"
            )
