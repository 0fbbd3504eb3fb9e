"""Runs are opened one way, and a moved tree of runs keeps working."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from distill.data import Dataset
from distill.errors import DistillError
from distill.outputs import RUN_KINDS
from pipeline.runs import OPENERS, open_run


def ok(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_every_run_kind_has_one_opener():
    assert set(OPENERS) == set(RUN_KINDS)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A whole chain under one directory: data, SASRec, teacher, its scores, a distilled student."""
    root = tmp_path_factory.mktemp("tree") / "a"
    ok("prepare", "--synthetic", "--num-users", "40", "--num-items", "30", "-o", root / "data")
    common = ("--data", root / "data", "--epochs", "1", "--device", "cpu")
    ok("student-train", *common, "-o", root / "sasrec", "--max-len", "10", "--hidden", "16")
    ok("teacher-train", *common, "--sasrec", root / "sasrec", "-o", root / "teacher", "--prompt-items", "5")
    ok("export-logits", "--run", root / "teacher", "--data", root / "data", "-o", root / "scores",
       "--top-k", "5", "--device", "cpu")  # fmt: skip
    ok("student-train", *common, "-o", root / "kd", "--max-len", "10", "--hidden", "16",
       "--teacher-scores", root / "scores")  # fmt: skip
    return root


def test_a_teacher_run_holds_its_sasrec_and_records_paths_relative_to_itself(tree):
    config = json.loads((tree / "teacher" / "config.json").read_text())
    assert config["sasrec_run"] == "sasrec" and (tree / "teacher" / "sasrec" / "best").is_dir()
    assert config["dataset"]["path"] == "../data"
    distilled = json.loads((tree / "kd" / "config.json").read_text())
    assert distilled["teacher_scores"]["path"] == "../scores" and distilled["dataset"]["path"] == "../data"
    manifest = json.loads((tree / "scores" / "manifest.json").read_text())
    assert manifest["teacher"]["run"] == "../teacher"


def test_every_command_works_after_the_tree_moves(tree, tmp_path):
    before = {run: ok("evaluate", "--run", tree / run, "--data", tree / "data") for run in ("teacher", "kd")}
    moved = tmp_path / "elsewhere" / "b"
    moved.parent.mkdir()
    tree.rename(moved)  # nothing is left at the path the tree was built under
    try:
        for run in ("teacher", "kd"):
            after = ok("evaluate", "--run", moved / run, "--data", moved / "data")
            assert after.splitlines()[1:] == before[run].splitlines()[1:]  # the same metrics
        ok("export-logits", "--run", moved / "teacher", "--data", moved / "data", "-o", moved / "again",
           "--top-k", "5", "--device", "cpu")  # fmt: skip
        again, first = (json.loads((moved / d / "manifest.json").read_text()) for d in ("again", "scores"))
        assert again == first
        ok("compare", moved / "sasrec", moved / "teacher", moved / "kd", "--data", moved / "data",
           "--device", "cpu")  # fmt: skip
        # the dataset a run records is found from the run
        user = str(pl.read_parquet(moved / "data" / "sequences.parquet")["raw_user"][0])
        for run in ("kd", "teacher"):
            assert "rank" in ok("recommend", "--run", moved / run, "--user", user)
        ok("student-train", "--data", moved / "data", "--epochs", "1", "--device", "cpu", "-o", moved / "kd2",
           "--max-len", "10", "--hidden", "16", "--teacher-scores", moved / "again")  # fmt: skip
        shutil.rmtree(moved / "again")
        shutil.rmtree(moved / "kd2")
    finally:
        moved.rename(tree)


def test_a_teacher_run_moved_alone_keeps_working(tree, tmp_path):
    alone = tmp_path / "somewhere" / "teacher"
    shutil.copytree(tree / "teacher", alone)
    data = Dataset(tree / "data")
    expected = open_run(tree / "teacher", data, "cpu").evaluate(data, "test", 16)
    assert open_run(alone, data, "cpu").evaluate(data, "test", 16) == expected


def test_an_old_run_that_recorded_an_absolute_path_still_loads_with_a_note(tree, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(tree / "teacher", old)
    shutil.rmtree(old / "sasrec")
    config = json.loads((old / "config.json").read_text())
    config["sasrec_run"] = str((tree / "sasrec").resolve())
    (old / "config.json").write_text(json.dumps(config))
    data = Dataset(tree / "data")
    expected = open_run(tree / "teacher", data, "cpu").evaluate(data, "test", 16)
    capsys.readouterr()
    assert open_run(old, data, "cpu").evaluate(data, "test", 16) == expected
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "absolute path" in notes[0] and "run the stage again" in notes[0]
    config["sasrec_run"] = str(tmp_path / "gone")
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(DistillError, match="gone"):
        open_run(old, data, "cpu")
