"""A student that has learnt a planted rule: on a ring of items, item i is always followed by item i + 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.config import PrepareConfig
from distill.prepare import run as prepare
from student.config import StudentTrainConfig
from student.train import run as train

RING = 12  # items m0 .. m11; raw users u0, u1, ...


def successor(raw: str) -> str:
    return f"m{(int(raw[1:]) + 1) % RING}"


@pytest.fixture(scope="session")
def ring_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(run, data)``: a tiny SASRec trained on walks around the ring (raw ids are strings)."""
    root = tmp_path_factory.mktemp("ring")
    lines = ["user,item"]
    for user in range(96):
        start, length = user % RING, 5 + user % 7
        lines += [f"u{user},m{(start + t) % RING}" for t in range(length)]
    (root / "ring.csv").write_text("\n".join(lines) + "\n")
    data, run = root / "data", root / "run"
    prepare(PrepareConfig(inputs=(str(root / "ring.csv"),), format="csv", output=str(data)))
    train(
        StudentTrainConfig(
            data=str(data),
            output=str(run),
            max_len=8,
            hidden=16,
            dropout=0.0,
            epochs=20,
            lr=0.02,
            eval_every=10,
            batch_size=32,
            patience=0,
            device="cpu",
        )
    )
    return run, data
