"""What a writing command may replace (only what distill wrote) and what a killed writer left behind."""

import json
import os

import pytest

from distill.errors import DistillError
from distill.outputs import claim, clean_stale, kind_of

LAYOUT = {"data": "dataset", "sasrec": "run"}  # a writer's parts, as the pipeline's stages


def dataset_dir(path):
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"format_version": 1, "fingerprint": "abc"}))
    return path


def test_kinds_are_recognised_by_their_description(tmp_path):
    assert kind_of(dataset_dir(tmp_path / "d")) == "dataset"
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({"format_version": 1, "shards": []}))
    assert kind_of(tmp_path / "s") == "scores"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text(json.dumps({"kind": "student"}))
    assert kind_of(tmp_path / "r") == "run"
    (tmp_path / "p").mkdir()
    dataset_dir(tmp_path / "p" / "data")
    (tmp_path / "p" / "sasrec").mkdir()  # a stage that failed at setup
    (tmp_path / "p" / "summary.md").write_text("# x")
    assert kind_of(tmp_path / "p", LAYOUT) == "outputs"
    assert kind_of(tmp_path / "p") is None  # only its writer knows its layout


@pytest.mark.parametrize(
    "files",
    [
        {"thesis.tex": "x"},
        {"meta.json": '{"fingerprint": "abc"}'},  # no format_version
        {"meta.json": "[1, 2]"},  # JSON, not an object
        {"config.json": '{"kind": "oracle"}'},
        {"manifest.json": "{not json"},
        {"summary.md": "mine", "notes.txt": "mine too"},
    ],
)
def test_foreign_directories_are_not_ours(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert kind_of(tmp_path, LAYOUT) is None


def test_outputs_with_a_foreign_part_are_not_ours(tmp_path):
    (tmp_path / "data").mkdir()
    assert kind_of(tmp_path, LAYOUT) is None  # only empty parts: nothing says distill wrote it
    (tmp_path / "sasrec").mkdir()
    (tmp_path / "sasrec" / "config.json").write_text(json.dumps({"kind": "student"}))
    assert kind_of(tmp_path, LAYOUT) == "outputs"
    (tmp_path / "data" / "thesis.tex").write_text("x")
    assert kind_of(tmp_path, LAYOUT) is None


def test_claim_rules(tmp_path):
    assert claim(tmp_path / "new", kind="dataset", overwrite=False, what="output") is False
    (tmp_path / "empty").mkdir()
    assert claim(tmp_path / "empty", kind="dataset", overwrite=False, what="output") is False
    ours = dataset_dir(tmp_path / "ours")
    with pytest.raises(DistillError, match="output .*ours already exists \\(use --overwrite"):
        claim(ours, kind="dataset", overwrite=False, what="output")
    assert claim(ours, kind="dataset", overwrite=True, what="output") is True
    with pytest.raises(
        DistillError, match="is not a score directory written by distill \\(it is a dataset\\)"
    ):
        claim(ours, kind="scores", overwrite=True, what="score directory")
    (tmp_path / "file.txt").write_text("keep me")
    with pytest.raises(DistillError, match="file.txt exists and is not a directory"):
        claim(tmp_path / "file.txt", kind="scores", overwrite=True, what="score directory")
    with pytest.raises(DistillError, match="file.txt is not a directory"):
        claim(tmp_path / "file.txt" / "out", kind="scores", overwrite=True, what="score directory")
    assert (tmp_path / "file.txt").read_text() == "keep me"


def test_clean_stale_removes_dead_writers_leftovers_only(tmp_path):
    dead = 999_999_999  # above any pid_max
    (tmp_path / f".out.tmp-{dead}").mkdir()
    (tmp_path / f".other.tmp-{dead}").mkdir()
    (tmp_path / f".out.tmp-{os.getpid()}").mkdir()  # a live writer's
    (tmp_path / ".hidden").mkdir()
    clean_stale(tmp_path, "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".other.tmp-{dead}", f".out.tmp-{os.getpid()}", ".hidden"]
    )
    clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".out.tmp-{os.getpid()}", ".hidden"])


def test_clean_stale_puts_back_an_old_copy_whose_replacement_never_arrived(tmp_path):
    dead = 999_999_999
    old = dataset_dir(tmp_path / f".data.old-{dead}")  # killed between the two renames of --overwrite
    (tmp_path / f".data.tmp-{dead}").mkdir()
    clean_stale(tmp_path, "data")
    assert [p.name for p in tmp_path.iterdir()] == ["data"] and not old.exists()
    assert kind_of(tmp_path / "data") == "dataset"


def test_the_next_writer_removes_a_killed_writers_temporary_directory(tmp_path):
    from distill import prepare
    from distill.config import PrepareConfig

    stale = tmp_path / ".data.tmp-999999999"  # prepare killed while writing
    stale.mkdir()
    (stale / "sequences.parquet").write_bytes(b"half")
    prepare.run(PrepareConfig(synthetic=True, num_users=10, num_items=10, output=str(tmp_path / "data")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
