"""``teacher-train --sasrec-fold``: training windows read the cross-fitted SASRec that did not see
their user."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import teacher.train
from cli import main
from distill.data import Dataset
from student.run import load_run
from teacher.model import Teacher, load_teacher
from tests.teacher.test_teachers import TINY_TEACHER

FOLDS = 2
SASREC = ("--max-len", "10", "--epochs", "1", "--device", "cpu")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def folds(setup, tmp_path_factory):
    """The runs of a 2-fold cross-fit of SASRecs shaped as the fixture's (hidden 16, max_len 10), and a
    3-fold run and a hidden-8 fold for the errors."""
    root = tmp_path_factory.mktemp("sasrec_folds")
    for fold in range(FOLDS):
        result = invoke("student-train", "--data", setup / "data", "-o", root / f"fold{fold}",
                        "--hidden", 16, "--folds", FOLDS, "--fold", fold, *SASREC)  # fmt: skip
        assert result.exit_code == 0, result.output
    for name, extra in (("k3", ("--hidden", 16, "--folds", 3, "--fold", 1)),
                        ("narrow", ("--hidden", 8, "--folds", FOLDS, "--fold", 1))):  # fmt: skip
        result = invoke("student-train", "--data", setup / "data", "-o", root / name, *extra, *SASREC)
        assert result.exit_code == 0, result.output
    return root


def train_args(setup, output, *fold_runs):
    args = ["teacher-train", "--data", setup / "data", "--sasrec", setup / "sasrec", "--output", output]
    for run in fold_runs:
        args += ["--sasrec-fold", run]
    return [*args, *TINY_TEACHER, "--teacher", "e4srec"]


def test_epoch_batches_hold_one_fold_each_and_cover_every_window_once():
    groups = np.array([0, 1, 1, 0, 2, 1, 0, 0, 2, 1, 1])
    batches = teacher.train.epoch_batches(len(groups), 3, torch.Generator().manual_seed(0), groups)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(groups)))
    assert all(len(b) <= 3 and len(set(groups[b].tolist())) == 1 for b in batches)
    assert len(batches) == 2 + 2 + 1  # folds of 4, 5 and 2 windows: what the schedule counts
    again = teacher.train.epoch_batches(len(groups), 3, torch.Generator().manual_seed(0), groups)
    assert [b.tolist() for b in batches] == [b.tolist() for b in again]
    # Without folds: the shuffled order cut in turn, as before the option existed.
    plain = teacher.train.epoch_batches(7, 3, torch.Generator().manual_seed(1))
    order = torch.randperm(7, generator=torch.Generator().manual_seed(1)).numpy()
    assert [b.tolist() for b in plain] == [order[:3].tolist(), order[3:6].tolist(), order[6:].tolist()]


def test_each_training_window_reads_the_sasrec_that_held_out_its_user(setup, folds, tmp_path, monkeypatch):
    data = Dataset(setup / "data")
    tables = [load_run(folds / f"fold{f}", data).item_embeddings().detach() for f in range(FOLDS)]
    own_table = load_run(setup / "sasrec", data).item_embeddings().detach()
    seen = {"windows": [], "batches": [], "read": [], "scored": []}

    def train_windows(self, *args, **kwargs):
        seen["windows"].append(original_windows(self, *args, **kwargs))
        return seen["windows"][-1]

    def epoch_batches(*args):
        seen["batches"].append(original_batches(*args))
        return seen["batches"][-1]

    def queries(self, history, module=None):  # which SASRec the model reads during this call
        table = self.model.sasrec.item_embeddings().detach()
        fold = next((f for f, t in enumerate(tables) if torch.equal(t, table)), None)
        read = "own" if fold is None and torch.equal(table, own_table) else fold
        seen["read" if self.model.training else "scored"].append(read)
        return original_queries(self, history, module)

    original_windows, original_batches, original_queries = Dataset.train_windows, None, Teacher.queries
    original_batches = teacher.train.epoch_batches
    monkeypatch.setattr(Dataset, "train_windows", train_windows)
    monkeypatch.setattr(teacher.train, "epoch_batches", epoch_batches)
    monkeypatch.setattr(Teacher, "queries", queries)
    run = tmp_path / "run"
    result = invoke(*train_args(setup, run, folds / "fold1", folds / "fold0"))  # any order
    assert result.exit_code == 0, result.output

    [windows], [batches] = seen["windows"], seen["batches"]
    fold_of = data.folds(FOLDS)[windows.users]
    assert len(seen["read"]) == len(batches) and set(fold_of.tolist()) == set(range(FOLDS))
    for batch, read in zip(batches, seen["read"], strict=True):
        assert set(fold_of[batch].tolist()) == {read}  # the fold that held out every user of the batch
    # Validation and test read the run's own SASRec (the --sasrec run), never a fold's; so does a
    # loaded run.
    assert seen["scored"] and set(seen["scored"]) == {"own"}
    teacher_model = load_teacher(run, data)
    assert torch.equal(teacher_model.model.sasrec.item_embeddings().detach(), own_table)
    config = json.loads((run / "config.json").read_text())
    assert config["sasrec_folds"]["k"] == FOLDS
    for f, copy in enumerate(config["sasrec_folds"]["runs"]):
        assert json.loads((run / copy / "config.json").read_text())["folds"]["fold"] == f
        assert torch.equal(load_run(run / copy, data).item_embeddings().detach(), tables[f])


def test_a_resumed_run_reads_its_own_copies_and_keeps_its_folds(setup, folds, tmp_path):
    moved = tmp_path / "folds"
    for f in range(FOLDS):
        shutil.copytree(folds / f"fold{f}", moved / f"fold{f}")
    run = tmp_path / "run"
    assert invoke(*train_args(setup, run, *(moved / f"fold{f}" for f in range(FOLDS)))).exit_code == 0
    shutil.rmtree(moved)  # the run holds copies of what it reads
    args = train_args(setup, run, *(moved / f"fold{f}" for f in range(FOLDS)))
    result = invoke(*args, "--epochs", 2, "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output
    assert json.loads((run / "last" / "config.json").read_text())["epoch"] == 2
    result = invoke(*train_args(setup, run), "--epochs", 3, "--resume")  # without the cross-fit
    assert result.exit_code != 0 and "sasrec_folds" in result.output


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        (["fold0"], "cross-fit of 2 folds: fold(s) 1 missing"),
        (["fold0", "fold0", "fold1"], "fold 0 is given twice"),
        (["fold0", "fold1", "k3"], "runs of cross-fits of 2 and 3 folds"),
        (["fold0", "narrow"], "has hidden 8 and max_len 10, the --sasrec run 16 and 10"),
        (["plain"], "is not a cross-fitted run"),
    ],
)
def test_a_wrong_set_of_fold_runs_is_a_one_line_error_and_writes_nothing(
    setup, folds, tmp_path, runs, message
):
    paths = [setup / "sasrec" if name == "plain" else folds / name for name in runs]
    result = invoke(*train_args(setup, tmp_path / "run", *paths))
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_fold_runs_are_not_fine_tuned(setup, folds, tmp_path):
    args = train_args(setup, tmp_path / "run", folds / "fold0", folds / "fold1")
    result = invoke(*args[:-2], "--train-sasrec")  # the MoE-LoRA teacher: the one that can fine-tune
    assert result.exit_code != 0 and "--sasrec-fold with --train-sasrec" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("sasrec", "message"),
    [
        (None, "and it trained on every user"),
        ("fold0", "and it is fold 0 of 2"),
        ("k3", "and it is fold 1 of 3"),
    ],
)
def test_a_cross_fitted_teacher_needs_the_sasrec_that_held_out_its_fold(
    setup, folds, tmp_path, sasrec, message
):
    """Teacher fold 1 fuses its --sasrec wherever it scores: a SASRec that saw fold 1 is refused."""
    run = tmp_path / "run"
    args = train_args(setup, run)
    if sasrec is not None:
        args[args.index("--sasrec") + 1] = folds / sasrec
    result = invoke(*args, "--folds", FOLDS, "--fold", 1)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"--sasrec {args[args.index('--sasrec') + 1]} must hold out the same users" in result.output
    assert message in result.output and not run.exists()
    args[args.index("--sasrec") + 1] = folds / "fold1"
    result = invoke(*args, "--folds", FOLDS, "--fold", 1)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["folds"]["fold"] == 1
