"""teacher-train and export-logits as two-process jobs give what one process gives."""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner

from cli import main
from distill.data import Dataset
from distill.scores import read_scores
from tests.distributed import assert_two_ranks_match_one_process, torchrun


def test_two_ranks_export_the_same_scores_into_one_directory(setup, teacher_run, tmp_path):
    args = ["export-logits", "--run", teacher_run, "--data", setup / "data", "--top-k", 5, "--device", "cpu"]
    args += ["--all-positions", "--batch-size", 8]
    single = CliRunner().invoke(main, [*map(str, args), "--output", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    torchrun(*args, "--output", tmp_path / "two")

    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert {name.split("-")[1] for name in manifest["shards"]} == {"000", "001"}  # one set per rank
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        ["manifest.json", *(f"{s}.{c}.npy" for s in manifest["shards"] for c in manifest["columns"])]
    )
    assert not list(tmp_path.glob(".two*"))  # no temporary directory left behind
    data = Dataset(setup / "data")
    one, two = read_scores(tmp_path / "one", data), read_scores(tmp_path / "two", data)
    assert two.manifest["rows"] == one.manifest["rows"] == len(data.prefix_samples(None, 5).targets)
    users = [
        np.concatenate(
            [
                np.load(tmp_path / run / f"{name}.user.npy")
                for name in json.loads((tmp_path / run / "manifest.json").read_text())["shards"]
            ]
        )
        for run in ("one", "two")
    ]
    assert users[0].tolist() == users[1].tolist()  # rank order keeps user order
    (items_one, logits_one, tail_one), (items_two, logits_two, tail_two) = one.table(), two.table()
    assert torch.equal(items_one, items_two)
    torch.testing.assert_close(logits_one, logits_two, rtol=1e-3, atol=1e-3)  # float16, relative to the top
    torch.testing.assert_close(tail_one, tail_two, rtol=1e-5, atol=1e-5)


def test_two_ranks_train_the_same_teacher_as_one_process(setup, tmp_path):
    # No dropout anywhere and equal halves of every batch (40 samples, batches of 8): the averaged
    # gradients are one process's.
    args = ["teacher-train", "--data", setup / "data", "--sasrec", setup / "sasrec", "--epochs", 2]
    args += ["--positions", 1, "--prompt-items", 5, "--batch-size", 8, "--lora-dropout", 0]
    args += ["--device", "cpu"]
    _, two = assert_two_ranks_match_one_process(args, tmp_path)
    result = CliRunner().invoke(main, ["evaluate", "--run", str(two), "--data", str(setup / "data")])
    assert result.exit_code == 0, result.output


def test_a_last_batch_smaller_than_the_rank_count_still_trains(setup, tmp_path):
    # 40 samples in batches of 13: the last batch holds one sample for two ranks.
    args = ["teacher-train", "--data", setup / "data", "--sasrec", setup / "sasrec", "--epochs", 1]
    args += ["--positions", 1, "--prompt-items", 5, "--batch-size", 13, "--device", "cpu"]
    torchrun(*args, "--output", tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and 0 <= metrics["test"]["ndcg@10"] <= 1
