"""Hostile inputs through the CLI (issue 13): every one is a one-line error, leaves nothing behind and
deletes nothing distill did not write. ``bench/hostile_inputs.py`` runs the same kinds of case as
separate processes and tabulates them in ``bench/results/hostile_inputs.md``."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ["--max-len", "8", "--hidden", "8", "--epochs", "1", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    info = ("warning: ", "read as --format", "scoring ")  # what stderr says besides the error
    lines = [ln for ln in result.output.strip().splitlines() if not any(i in ln for i in info)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def student_run(synthetic_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("hostile") / "sasrec"
    result = invoke("student-train", "--data", synthetic_dataset, "-o", run, *STUDENT)
    assert result.exit_code == 0 and "unfinished" not in result.output, result.output  # its own last load
    return run


def test_prepare_overwrite_keeps_unrelated_files(tmp_path):
    out = tmp_path / "v"
    out.mkdir()
    (out / "thesis.tex").write_text("chapter 1")
    one_line_error(
        invoke("prepare", "--synthetic", "-o", out, "--overwrite"), "not a dataset written by distill"
    )
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    (out / "data").mkdir()  # a stage's name does not make a directory distill's
    (out / "data" / "ratings.csv").write_text("user,item\n")
    one_line_error(invoke("pipeline", "-o", out, "--overwrite"), "not a pipeline output written by distill")
    assert (out / "data" / "ratings.csv").is_file() and (out / "thesis.tex").is_file()


@pytest.mark.parametrize("name", ["summary.md", "summary.json"])
def test_pipeline_overwrite_keeps_a_users_own_summary(tmp_path, name):
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text("my notes")
    one_line_error(
        invoke("pipeline", "-o", out, "--overwrite"), f"{name} exists and was not written by distill pipeline"
    )
    assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() == "my notes"


@pytest.mark.parametrize("command", ["student-train", "teacher-train", "pipeline", "prepare"])
def test_an_output_that_is_a_file_is_refused(command, synthetic_dataset, student_run, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    args = {
        "student-train": ["--data", synthetic_dataset, *STUDENT],
        "teacher-train": [
            "--data",
            synthetic_dataset,
            "--sasrec",
            student_run,
            "--prompt-items",
            5,
            "--device",
            "cpu",
        ],
        "pipeline": [],
        "prepare": ["--synthetic"],
    }[command]
    one_line_error(
        invoke(command, *args, "-o" if command != "teacher-train" else "--output", target, "--overwrite"),
        "exists and is not a directory",
    )
    assert target.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_an_unwritable_directory_is_one_line(tmp_path, monkeypatch):
    import distill.outputs

    monkeypatch.setattr(distill.outputs.os, "access", lambda path, mode: False)
    one_line_error(invoke("prepare", "--synthetic", "-o", tmp_path / "x"), "permission denied on")
    monkeypatch.undo()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr("polars.DataFrame.write_parquet", refuse)
    one_line_error(invoke("prepare", "--synthetic", "-o", tmp_path / "x"), "Permission denied")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_batch_size_zero(synthetic_dataset, student_run):
    one_line_error(
        invoke("evaluate", "--run", student_run, "--data", synthetic_dataset, "--batch-size", "0"),
        "batch_size must be at least 1",
    )


def test_a_run_config_that_is_not_an_object(synthetic_dataset, student_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(student_run, run)
    (run / "config.json").write_text("[1, 2]")
    one_line_error(invoke("evaluate", "--run", run, "--data", synthetic_dataset), "is not a JSON object")


def test_an_edited_model_config_names_the_weight(synthetic_dataset, student_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(student_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["hidden"] = 32
    (run / "config.json").write_text(json.dumps(config))
    one_line_error(
        invoke("evaluate", "--run", run, "--data", synthetic_dataset),
        "does not fit its config: item_emb.weight has shape (41, 8), its config gives (41, 32)",
    )


def test_a_max_len_too_large_to_allocate(synthetic_dataset, tmp_path):
    result = invoke(
        "student-train",
        "--data",
        synthetic_dataset,
        "-o",
        tmp_path / "r",
        "--max-len",
        2**31 - 1,  # the largest a size may be; 550 GB of positional embeddings
        "--device",
        "cpu",
    )
    one_line_error(result, "out of memory", "--max-len")
    assert not (tmp_path / "r").exists()
    result = invoke("student-train", "--data", synthetic_dataset, "-o", tmp_path / "r", "--max-len", 10**13)
    one_line_error(result, "max_len must be at most 2147483647")
    assert not (tmp_path / "r").exists()


def test_a_teacher_prompt_beyond_its_sasrec(synthetic_dataset, student_run, tmp_path):
    result = invoke(
        "teacher-train",
        "--data",
        synthetic_dataset,
        "--sasrec",
        student_run,
        "--output",
        tmp_path / "t",
        "--prompt-items",
        9,
        "--device",
        "cpu",
    )
    one_line_error(
        result, "--prompt-items 9 is more than its SASRec run's max_len 8", "--prompt-items 8 or less"
    )
    assert not (tmp_path / "t").exists()


def test_misleading_messages_are_precise(synthetic_dataset, tmp_path):
    (tmp_path / "f.txt").write_text("1 2\n")
    one_line_error(
        invoke("evaluate", "--run", tmp_path, "--data", tmp_path / "f.txt"),
        "is a file, not a dataset directory",
    )
    one_line_error(invoke("prepare", tmp_path, "-o", tmp_path / "out"), "is a directory")
    big = tmp_path / "big.txt"
    big.write_text("".join(f"{10**25 + u} {i}\n" for u in range(3) for i in range(1, 4)))
    assert invoke("prepare", big, "-o", tmp_path / "big").exit_code == 0  # 26-digit ids are integers
    (tmp_path / "bin.csv").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
    message = one_line_error(
        invoke("prepare", tmp_path / "bin.csv", "-o", tmp_path / "o2"), "not a text file"
    )
    assert "\x1f" not in message
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("".join(f"{u} {i}\n" for u in range(4) for i in range(1, 4)) + "9 1 2\n")
    one_line_error(invoke("prepare", mixed, "-o", tmp_path / "o3"), "cannot tell the format", "--format")
    assert not any((tmp_path / o).exists() for o in ("out", "o2", "o3"))


def test_auto_detection_says_what_it_chose(tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("".join(f"{u} {i}\n" for u in range(4) for i in range(1, 4)))
    result = invoke("prepare", data, "-o", tmp_path / "out")
    assert result.exit_code == 0 and "read as --format sasrec (the first 12 lines are 'user item' pairs)" in (
        result.output
    )


def test_an_unfinished_run_is_used_with_a_warning(synthetic_dataset, student_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(student_run, run)
    (run / "metrics.json").unlink()
    result = invoke("evaluate", "--run", run, "--data", synthetic_dataset, "--split", "test")
    assert result.exit_code == 0, result.output
    assert (
        f"warning: {run} is unfinished (no metrics.json): using its best checkpoint so far, from epoch 1"
        in (result.output)
    )
    result = invoke("evaluate", "--run", student_run, "--data", synthetic_dataset, "--split", "test")
    assert "unfinished" not in result.output
    result = invoke(
        "teacher-train",
        "--data",
        synthetic_dataset,
        "--sasrec",
        run,
        "--output",
        tmp_path / "t",
        "--prompt-items",
        9,
        "--device",
        "cpu",
    )
    assert (
        result.output.startswith(f"warning: {run} is unfinished")
        and "Error: --prompt-items 9 is more than" in result.output
    )


def test_a_run_with_nan_weights_is_refused_not_scored(student_run, synthetic_dataset, tmp_path):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "nan"
    shutil.copytree(student_run, run)
    weights = load_file(str(run / "best" / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] * float("nan")
    save_file(weights, str(run / "best" / "model.safetensors"))
    for args in (
        ("evaluate", "--run", run, "--data", synthetic_dataset),
        ("recommend", "--run", run, "--history", "1"),
    ):
        one_line_error(invoke(*args), "holds NaN or infinite weights")


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _nothing_left(parent, before):
    """Nothing new in ``parent``: no output, no temporary directory beside it."""
    assert sorted(p.name for p in parent.iterdir()) == before


@pytest.mark.parametrize(
    "target",
    [
        "distill.runs.save_file",  # safetensors: the weights of a checkpoint
        "distill.runs.torch.save",  # the trainer state of a checkpoint
    ],
)
def test_a_full_disk_during_a_run_leaves_nothing(synthetic_dataset, tmp_path, monkeypatch, target):
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(target, _no_space)
    result = invoke("student-train", "--data", synthetic_dataset, "-o", tmp_path / "run", *STUDENT)
    one_line_error(result, "cannot write checkpoint", "No space left on device")
    _nothing_left(tmp_path, before)


def test_a_full_disk_during_an_export_leaves_nothing(synthetic_dataset, student_run, tmp_path, monkeypatch):
    def no_space(path, parts):  # a score shard's .npy file, written as the disk fills
        path.write_bytes(b"\x93NUMPY")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("distill.scores._save", no_space)
    result = invoke("export-logits", "--run", student_run, "--data", synthetic_dataset, "-o", tmp_path / "s")
    one_line_error(result, "cannot write", "No space left on device")
    _nothing_left(tmp_path, [])


def _small_filesystem(path) -> bool:
    """Mount a 600 KiB tmpfs at ``path`` (root, where mounts are allowed)."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_real_full_disk_is_one_line_and_leaves_nothing(synthetic_dataset, student_run, tmp_path):
    """The real thing, where this machine lets a test mount a small filesystem: each writer's own
    words for ENOSPC (safetensors, torch, polars) become one line, and the disk is left as it was."""
    small = tmp_path / "small"
    if not _small_filesystem(small):
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        cases = [
            ["student-train", "--data", synthetic_dataset, "-o", small / "run", *STUDENT, "--hidden", "300"],
            ["export-logits", "--run", student_run, "--data", synthetic_dataset, "-o", small / "s", "--full"],
        ]
        (small / "filler").write_bytes(bytes(600 * 1024 - 16 * 1024))  # 16 KiB left
        for args in cases:
            result = subprocess.run(
                [sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT
            )
            assert result.returncode == 1, result.stderr
            lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("Error: ")]
            assert len(lines) == 1 and "No space left on device" in lines[0], result.stderr
            assert "Traceback" not in result.stderr
            assert sorted(p.name for p in small.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["prepare", "--synthetic", "-o", "out", "--seed", "-1"], "seed must be in 0..4294967295"),
        (["prepare", "--synthetic", "-o", "out", "--seed", str(2**64)], "seed must be in 0..4294967295"),
        (["pipeline", "-o", "out", "--num-items", "5"], "num_items >= 10"),
        (["pipeline", "-o", "out", "--llm", "./nosuch-model"], "no such local path"),
        (["pipeline", "-o", "out", "--seed", "4294967295", "--seeds", "2"], "runs seeds up to 4294967296"),
        (
            ["pipeline", "-o", "out", "--teacher", "ensemble", "--seed", "4294967295"],
            "runs seeds up to 4294967297",
        ),
        (
            ["pipeline", "-o", "out", "--teacher", "ensemble", "--members", "1"],
            "needs --members (SASRec seeds) >= 2",
        ),
        (["pipeline", "-o", "out", "--temperatures", "1,1.0000001"], "would share their runs' directories"),
        (["pipeline", "-o", "out", "--temperatures", "0.5,1e30"], "temperatures must be in [0.01, 100]"),
        (
            ["student-train", "--data", "d", "-o", "out", "--temperature", "1e4"],
            "temperature must be in [0.01, 100]",
        ),
        (
            ["student-train", "--data", "d", "-o", "out", "--teacher-scores", ""],
            "(--teacher-scores) is empty",
        ),
        (["compare", "a", "b", "--data", "d", "--samples", "1"], "--samples must be at least 200"),
        (["student-train", "--data", "d", "-o", "out", "--resume", "--overwrite"], "give one of them"),
        (
            ["teacher-train", "--data", "d", "--sasrec", "s", "-o", "out", "--resume", "--overwrite"],
            "give one of them",
        ),
        (["pipeline", "-o", "out", "--alphas", "0.5,0.5000001"], "would share their runs' directories"),
    ],
)
def test_options_are_checked_before_anything_is_written(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke(*args), fragment)
    assert list(tmp_path.iterdir()) == []


def test_export_model_checks_the_opset_and_keeps_a_users_file(student_run, tmp_path):
    one_line_error(
        invoke("export-model", "--run", student_run, "-o", tmp_path / "a/m.onnx", "--opset", "5"), "14"
    )
    assert list(tmp_path.iterdir()) == []
    mine = tmp_path / "mine.onnx"
    mine.write_text("a user's model")
    result = invoke("export-model", "--run", student_run, "-o", mine, "--overwrite")
    one_line_error(result, "was not written by distill export-model")
    assert mine.read_text() == "a user's model"


@pytest.mark.parametrize("device", ["mps", "meta", "cpu:1", "cuda:7", "bogus"])
def test_a_device_this_machine_cannot_use_is_refused(synthetic_dataset, student_run, device):
    for command in (
        ["evaluate", "--run", student_run, "--data", synthetic_dataset],
        ["recommend", "--run", student_run, "--user", "3"],
    ):
        one_line_error(invoke(*command, "--device", device), repr(device))


@pytest.mark.parametrize(
    "option, value", [("--hidden", 2**64), ("--blocks", 2**31), ("--folds", 2**64), ("--batch-size", 2**40)]
)
def test_a_size_beyond_any_tensor_is_refused(synthetic_dataset, tmp_path, option, value):
    extra = ["--fold", "0"] if option == "--folds" else []
    result = invoke("student-train", "--data", synthetic_dataset, "-o", tmp_path / "r", option, value, *extra)
    one_line_error(result, "must be" if option != "--folds" else "--folds K >= 2")
    assert list(tmp_path.iterdir()) == []


def _rewrite_weights(run, to, change):
    from safetensors.torch import load_file, save_file

    shutil.copytree(run, to)
    weights = load_file(str(to / "best" / "model.safetensors"))
    save_file({k: change(v) for k, v in weights.items()}, str(to / "best" / "model.safetensors"))
    return to


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda w: w * 1e30, "scores NaN or infinite values"),  # finite weights whose scores overflow
        (lambda w: w.long(), "holds torch.int64"),
    ],
)
def test_weights_that_cannot_score_are_refused_everywhere(
    synthetic_dataset, student_run, tmp_path, change, fragment
):
    run = _rewrite_weights(student_run, tmp_path / "run", change)
    for command in (
        ["evaluate", "--run", run, "--data", synthetic_dataset],
        ["recommend", "--run", run, "--user", "3"],
        ["export-model", "--run", run, "-o", tmp_path / "m.onnx"],
        ["export-logits", "--run", run, "--data", synthetic_dataset, "-o", tmp_path / "s"],
    ):
        one_line_error(invoke(*command), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_never_deletes_a_users_file_inside_an_output(synthetic_dataset, student_run, tmp_path):
    """A user's note inside an output distill wrote: --overwrite refuses, naming it, and keeps it."""
    scores = tmp_path / "scores"
    assert (
        invoke("export-logits", "--run", student_run, "--data", synthetic_dataset, "-o", scores).exit_code
        == 0
    )
    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    run = tmp_path / "run"
    shutil.copytree(student_run, run)
    cases = {
        data: ["prepare", "--synthetic", "-o", data, "--overwrite"],
        scores: [
            "export-logits",
            "--run",
            student_run,
            "--data",
            synthetic_dataset,
            "-o",
            scores,
            "--overwrite",
        ],
        run: ["student-train", "--data", synthetic_dataset, "-o", run, *STUDENT, "--overwrite"],
    }
    for output, command in cases.items():
        (output / "notes.txt").write_text("mine")
        one_line_error(invoke(*command), "distill did not write (notes.txt)")
        assert (output / "notes.txt").read_text() == "mine"


def _files(path):
    """Every file under ``path`` with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_failed_overwrite_puts_the_old_run_back(synthetic_dataset, student_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(student_run, run)
    before = _files(run)
    args = ("student-train", "--data", synthetic_dataset, "-o", run, *STUDENT, "--seed", "1", "--overwrite")
    monkeypatch.setattr("distill.runs.save_file", _no_space)  # the new run's first checkpoint
    one_line_error(invoke(*args), "cannot write checkpoint", "No space left on device")
    assert _files(run) == before and [p.name for p in tmp_path.iterdir()] == ["run"]

    monkeypatch.setattr("distill.runs.save_file", _interrupt)  # Ctrl-C: the same
    result = invoke(*args)
    assert result.exit_code == 1 and "Aborted" in result.output, result.output
    assert _files(run) == before and [p.name for p in tmp_path.iterdir()] == ["run"]

    fresh = (*args[:4], tmp_path / "fresh", *args[5:-1])  # Ctrl-C on a new run: nothing of it stays
    result = invoke(*fresh)
    assert result.exit_code == 1 and "Aborted" in result.output and not (tmp_path / "fresh").exists()

    monkeypatch.undo()
    assert invoke(*args).exit_code == 0  # a run that succeeds replaces it, and nothing old stays aside
    assert _files(run) != before and [p.name for p in tmp_path.iterdir()] == ["run"]
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 1


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_an_overwrite_that_fails_after_a_checkpoint_keeps_the_new_run(
    synthetic_dataset, student_run, tmp_path, monkeypatch
):
    from distill import runs

    run = tmp_path / "run"
    shutil.copytree(student_run, run)
    save, calls = runs.save_file, []

    def full_on_the_third(*args, **kwargs):  # epoch 1's best and last are written, epoch 2's are not
        calls.append(1)
        return _no_space() if len(calls) >= 3 else save(*args, **kwargs)

    monkeypatch.setattr("distill.runs.save_file", full_on_the_third)
    args = ("student-train", "--data", synthetic_dataset, "-o", run, *STUDENT, "--epochs", "2", "--seed", "1")
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 1 and result.output.splitlines()[-1].startswith(
        "Error: cannot write checkpoint"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the old run is gone: this one resumes
    assert torch.load(run / "last" / "state.pt", weights_only=True)["epoch"] == 1
    monkeypatch.undo()
    assert invoke(*args, "--resume").exit_code == 0


def test_an_empty_run_path_and_a_moved_dataset_are_named(synthetic_dataset, student_run, tmp_path):
    one_line_error(
        invoke("compare", f"{student_run},", student_run, "--data", synthetic_dataset), "a run path is empty"
    )
    run = tmp_path / "alone" / "run"
    shutil.copytree(student_run, run)  # without its dataset: the path it records leads nowhere now
    one_line_error(invoke("recommend", "--run", run, "--user", "1"), "which is not there now", "--data DIR")


def test_an_input_inside_the_output_overwrite_replaces_is_refused(synthetic_dataset, student_run, tmp_path):
    out = tmp_path / "t"
    shutil.copytree(student_run, out)
    (out / "sasrec").mkdir()
    before = _files(out)
    for command, option in (("teacher-train", "--sasrec"), ("student-train", "--hint-run")):
        result = invoke(
            command, "--data", synthetic_dataset, option, out / "sasrec", "-o", out, "--overwrite"
        )
        one_line_error(result, f"{option} {out / 'sasrec'} lies inside {out}, which --overwrite replaces")
        assert _files(out) == before


def test_data_with_nothing_to_train_on(tmp_path):
    rows = "".join(f"u{u},i{(u * 3 + k) % 10},{k}\n" for u in range(30) for k in range(3))
    (tmp_path / "three.csv").write_text("user_id,item_id,timestamp\n" + rows)  # 3 interactions a user
    result = invoke("prepare", tmp_path / "three.csv", "-o", tmp_path / "d")
    assert result.exit_code == 0 and "warning: no user has more than 3 interactions" in result.output
    for command, extra in (("student-train", STUDENT), ("teacher-train", ("--sasrec", tmp_path / "d"))):
        result = invoke(command, "--data", tmp_path / "d", "-o", tmp_path / "r", *extra)
        one_line_error(result, "has nothing to train on: no user has more than 3 interactions")
        assert not (tmp_path / "r").exists()


def test_columns_real_files_name(tmp_path):
    rows = [
        (f"u{u}", f"B0{(u + k) % 7}", f"A{k}", 1_600_000_000 + 1000 * (5 - k))
        for u in range(6)
        for k in range(5)
    ]
    header = "user_id,parent_asin,asin,rated_date\n"
    (tmp_path / "a.csv").write_text(header + "".join(f"{u},{p},{a},{t}\n" for u, p, a, t in rows))
    result = invoke("prepare", tmp_path / "a.csv", "-o", tmp_path / "d")  # the product, not its variant
    assert result.exit_code == 0 and "is 'rated_date' the time? give --time-col rated_date" in result.output
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["num_items"] == 7
    result = invoke("prepare", tmp_path / "a.csv", "-o", tmp_path / "t", "--time-col", "rated_date:float")
    assert result.exit_code == 0 and "warning" not in result.output
    (tmp_path / "z.csv").write_text(
        "user_id,item_id,date\n"
        + "u1,i1,2016-03-03T00:44:15Z\nu1,i2,2016-03-02T00:44:15+00:00\nu1,i3,2016-03-01T10:00:00Z\n"
    )
    assert invoke("prepare", tmp_path / "z.csv", "-o", tmp_path / "z").exit_code == 0  # ISO with a zone
    (tmp_path / "h.csv").write_text("B000033295,AE001,5.0,1609201600\nB000033296,AE001,4.0,1609201601\n")
    one_line_error(
        invoke("prepare", tmp_path / "h.csv", "-o", tmp_path / "h"),
        "its first line looks like values, not a header",
    )


def test_json_lines_reviews(tmp_path):
    times = [1_600_000_000_300, 1_600_000_000_100, 1_600_000_000_200, "1600000000400", 1.7e12]  # a string too
    lines = [
        {"rating": 5.0, "title": "ok", "parent_asin": f"B{(u + k) % 6}", "user_id": f"A{u}", "timestamp": t}
        for u in range(8)
        for k, t in enumerate(times)
    ]
    (tmp_path / "Beauty.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = invoke("prepare", tmp_path / "Beauty.jsonl", "-o", tmp_path / "d")
    assert result.exit_code == 0, result.output
    import polars as pl

    sequences = pl.read_parquet(tmp_path / "d" / "sequences.parquet")
    items = pl.read_parquet(tmp_path / "d" / "items.parquet")
    raw = dict(zip(items["item"], items["raw_item"], strict=True))
    first = sequences.filter(pl.col("raw_user") == "A0").row(0, named=True)
    assert [raw[i] for i in first["items"]] == ["B1", "B2", "B0", "B3", "B4"]  # in time order


def test_text_that_is_not_utf8_is_named(tmp_path):
    text = "user_id,item_id,timestamp\n" + "".join(f"Zoë{u},i{k},{k}\n" for u in range(3) for k in range(4))
    (tmp_path / "u16.csv").write_bytes(text.encode("utf-16"))
    one_line_error(
        invoke("prepare", tmp_path / "u16.csv", "-o", tmp_path / "a"), "is UTF-16 text; save it as UTF-8"
    )
    (tmp_path / "l1.csv").write_bytes(text.encode("latin-1"))
    one_line_error(
        invoke("prepare", tmp_path / "l1.csv", "-o", tmp_path / "b"), "is not UTF-8 text (byte 28 is 0xeb)"
    )


def test_inputs_of_different_formats_are_named(tmp_path):
    (tmp_path / "a.csv").write_text(
        "user_id,item_id\n" + "".join(f"u{u},i{k}\n" for u in range(3) for k in range(4))
    )
    (tmp_path / "b.tsv").write_text(
        "user_id\titem_id\n" + "".join(f"v{u}\ti{k}\n" for u in range(3) for k in range(4))
    )
    result = invoke("prepare", tmp_path / "a.csv", tmp_path / "b.tsv", "-o", tmp_path / "d")
    one_line_error(result, f"{tmp_path / 'a.csv'} reads as csv, {tmp_path / 'b.tsv'} as tsv")


def test_headers_that_look_like_numbers_and_json_lines_edges(tmp_path):
    rows = "".join(f"u{u},i{k},{k},x\n" for u in range(4) for k in range(5))
    (tmp_path / "y.csv").write_text("user_id,item_id,timestamp,2023\n" + rows)  # a real header, a year in it
    assert invoke("prepare", tmp_path / "y.csv", "-o", tmp_path / "y").exit_code == 0
    (tmp_path / "p.csv").write_text("0,1,2,3\n" + rows)  # pandas' default header, columns named
    assert (
        invoke(
            "prepare", tmp_path / "p.csv", "-o", tmp_path / "p", "--user-col", "0", "--item-col", "1"
        ).exit_code
        == 0
    )
    import polars as pl

    frame = pl.DataFrame(
        {
            "user:id": [f"u{u}" for u in range(4) for _ in range(5)],
            "item:id": [f"i{k}" for _ in range(4) for k in range(5)],
        }
    )
    frame.write_parquet(tmp_path / "c.parquet")  # a colon in a Parquet column's name is its name
    args = (
        "prepare",
        tmp_path / "c.parquet",
        "-o",
        tmp_path / "c",
        "--user-col",
        "user:id",
        "--item-col",
        "item:id",
    )
    assert invoke(*args).exit_code == 0
    lines = "".join(
        json.dumps({"user_id": f"u{u}", "item_id": f"i{k}"}) + "\n" for u in range(4) for k in range(5)
    )
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + lines.encode())
    one_line_error(
        invoke("prepare", tmp_path / "bom.jsonl", "-o", tmp_path / "b"), "starts with a byte-order mark"
    )
    (tmp_path / "array.json").write_text("[" + lines.strip().replace("\n", ",") + "]")
    one_line_error(invoke("prepare", tmp_path / "array.json", "-o", tmp_path / "a"), "is a JSON array")
    (tmp_path / "empty.jsonl").write_text("\n")
    one_line_error(invoke("prepare", tmp_path / "empty.jsonl", "-o", tmp_path / "e"), "is empty")
