"""Fixtures shared by every test package. Tiny, deterministic, CPU-only; files live in pytest's tmp dirs."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from distill import prepare
from distill.config import PrepareConfig
from student.config import StudentTrainConfig
from student.train import run as train

# ---------------------------------------------------------------------------------------------- data

SYNTHETIC_USERS = 60
SYNTHETIC_ITEMS = 40


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset directory prepared from the synthetic generator (seed 0). Read it; never modify it."""
    out = tmp_path_factory.mktemp("data") / "synthetic"
    prepare.run(
        PrepareConfig(
            synthetic=True, num_users=SYNTHETIC_USERS, num_items=SYNTHETIC_ITEMS, seed=0, output=str(out)
        )
    )
    return out


# ------------------------------------------------------------------ a student that learnt a planted rule
# On a ring of items, item i is always followed by item i + 1.

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
    prepare.run(PrepareConfig(inputs=(str(root / "ring.csv"),), format="csv", output=str(data)))
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


# ------------------------------------------------------------ a dataset with titles, its SASRec, a teacher


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """A dataset with titles and a SASRec run on it."""
    root = tmp_path_factory.mktemp("teacher")
    prepare.run(PrepareConfig(output=str(root / "data"), synthetic=True, num_users=40, num_items=30, seed=1))
    # Give the items titles, as a dataset prepared with --items would have.
    items = pl.read_parquet(root / "data" / "items.parquet")
    items.with_columns(title=pl.format("the story of {}", pl.col("item"))).write_parquet(
        root / "data" / "items.parquet"
    )
    meta = json.loads((root / "data" / "meta.json").read_text())
    meta.update(has_titles=True, num_titles=items.height)
    (root / "data" / "meta.json").write_text(json.dumps(meta))

    result = CliRunner().invoke(
        main,
        [
            "student-train",
            "--data",
            str(root / "data"),
            "--output",
            str(root / "sasrec"),
            "--epochs",
            "1",
            "--max-len",
            "10",
            "--hidden",
            "16",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="session")
def teacher_run(setup):
    """A one-epoch MoE-LoRA teacher on the tiny backbone."""
    run = setup / "teacher"
    args = [
        "teacher-train",
        "--data",
        str(setup / "data"),
        "--sasrec",
        str(setup / "sasrec"),
        "--output",
        str(run),
        "--epochs",
        "1",
        "--positions",
        "1",
        "--prompt-items",
        "5",
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return run
