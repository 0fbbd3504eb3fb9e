"""A large catalogue a block of items at a time: ``evaluate`` and ``export-logits --top-k`` give what the
whole-catalogue path gives, for a student run and a teacher run, through the options and on their own."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import distill.scoring
import pipeline.export
from cli import main
from distill import metrics
from distill.data import Dataset
from distill.scores import read_scores
from pipeline.config import EvaluateConfig, ExportConfig
from pipeline.export import export_block
from pipeline.runs import open_run


def invoke(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def without_dates(manifest: dict) -> dict:
    return {key: value for key, value in manifest.items() if key not in ("created", "shards")}


def test_a_student_evaluates_the_same_in_blocks(setup):
    data = Dataset(setup / "data")
    scorer = open_run(setup / "sasrec", data, "cpu")
    for split in ("valid", "test"):
        full = scorer.evaluate(data, split, 16, block=0)
        for size in (1, 4, 7, data.num_items, 1000):
            assert scorer.evaluate(data, split, 16, block=size) == full
        users, ranks = scorer.ranks(data, split, 16, block=3)
        assert torch.equal(ranks, scorer.ranks(data, split, 16, block=0)[1])


def test_evaluate_takes_the_block_path_above_the_budget_by_itself(setup, monkeypatch):
    data = Dataset(setup / "data")
    scorer = open_run(setup / "sasrec", data, "cpu")
    full = scorer.evaluate(data, "test", 16)
    called = []
    real = metrics.block_ranks

    def spy(*args, **kwargs):
        called.append(kwargs["size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(distill.scoring, "block_ranks", spy)
    assert scorer.evaluate(data, "test", 16) == full and not called  # 16 x 31 scores: within the budget
    monkeypatch.setattr(distill.scoring, "SCORE_BUDGET", 16 * 8)  # a budget of 8 items per user
    monkeypatch.setattr(distill.scoring, "BLOCK_VALUES", 16 * 8)  # in blocks of 8 items
    assert scorer.evaluate(data, "test", 16) == full
    assert called and set(called) == {8}


def test_evaluate_command_gives_the_same_table_in_blocks(setup):
    args = ("evaluate", "--run", setup / "sasrec", "--data", setup / "data", "--device", "cpu")
    assert invoke(*args, "--item-block", "3") == invoke(*args, "--item-block", "0") == invoke(*args)


@pytest.mark.parametrize("run", ["sasrec", "teacher"])
@pytest.mark.parametrize("positions", [("--all-positions",), ("--positions", "2")])
def test_top_k_export_in_blocks_writes_the_same_rows(setup, teacher_run, tmp_path, run, positions):
    data = Dataset(setup / "data")
    run_dir = setup / "sasrec" if run == "sasrec" else teacher_run
    common = ("export-logits", "--run", run_dir, "--data", setup / "data", "--device", "cpu",
              "--top-k", "7", "--batch-size", "5", *positions)  # fmt: skip
    invoke(*common, "-o", tmp_path / "full", "--item-block", "0")
    invoke(*common, "-o", tmp_path / "blocks", "--item-block", "4")
    full, blocks = read_scores(tmp_path / "full", data), read_scores(tmp_path / "blocks", data)
    assert without_dates(full.manifest) == without_dates(blocks.manifest)
    (full_items, full_logits, full_tail), (items, logits, tail) = full.table(), blocks.table()
    assert len(items) == full.rows > 0
    assert torch.equal(items, full_items)  # random float scores: no ties to order
    torch.testing.assert_close(logits, full_logits, atol=1e-3, rtol=1e-3)  # float16 in the files
    assert (logits[:, :-1] >= logits[:, 1:]).all()
    assert blocks.has_tail and full.has_tail  # the normaliser over every item, summed block by block
    torch.testing.assert_close(tail, full_tail, atol=1e-4, rtol=1e-4)


def test_the_export_block_follows_the_full_paths_size_and_the_options(setup, monkeypatch):
    data = Dataset(setup / "data")
    scorer = open_run(setup / "sasrec", data, "cpu")  # width 10
    n = data.num_items

    def cfg(**changes):
        base = {"runs": ("r",), "data": "d", "output": "o", "batch_size": 4}
        return ExportConfig(**{**base, **changes})

    assert export_block(cfg(), scorer, n) is None  # 4 x 10 x 31 scores: the full path
    assert export_block(cfg(item_block=5), scorer, n) == 5
    assert export_block(cfg(item_block=5, full=True), scorer, n) is None  # --full is the full table
    monkeypatch.setattr(distill.scoring, "SCORE_BUDGET", 320)  # below the full path's 4 x 10 x 31 scores
    monkeypatch.setattr(pipeline.export, "BLOCK_VALUES", 320)
    # blocks sized for the positions the block path holds: 4 windows x 4 positions by default
    assert export_block(cfg(), scorer, n) == 320 // 16
    assert export_block(cfg(all_positions=True), scorer, n) == 320 // 40
    assert export_block(cfg(per_prefix=True), scorer, n) == n  # 4 rows x n items fit: one block
    assert export_block(cfg(positions=1), scorer, n) == n
    assert export_block(cfg(item_block=0), scorer, n) is None
    assert export_block(cfg(full=True), scorer, n) is None


@pytest.mark.parametrize("bad", ["-1", str(2**31)])
def test_a_bad_item_block_is_refused(setup, tmp_path, bad):
    for command in (
        ("evaluate", "--run", setup / "sasrec", "--data", setup / "data"),
        ("export-logits", "--run", setup / "sasrec", "--data", setup / "data", "-o", tmp_path / "s"),
        ("compare", setup / "sasrec", setup / "sasrec", "--data", setup / "data"),
    ):
        result = CliRunner().invoke(main, [str(a) for a in command] + ["--item-block", bad])
        assert result.exit_code != 0 and "item_block must be in 0.." in result.output, result.output
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="item_block"):
        EvaluateConfig(runs=("r",), data="d", item_block=-2)
