"""Fixtures of the teacher tests: a tiny dataset with titles and a SASRec run on it."""

import json

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from distill.config import PrepareConfig
from distill.prepare import run as prepare


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """A dataset with titles and a SASRec run on it."""
    root = tmp_path_factory.mktemp("teacher")
    prepare(PrepareConfig(output=str(root / "data"), synthetic=True, num_users=40, num_items=30, seed=1))
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
        "--max-len",
        "5",
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return run
