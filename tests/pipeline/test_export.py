"""``distill export-logits`` and distilling its scores into a student, end to end on tiny data."""

import json

import torch
from click.testing import CliRunner

from cli import main
from distill.config import PrepareConfig
from distill.data import Dataset
from distill.prepare import run as prepare
from distill.scores import read_scores
from student.run import load_run
from teacher.model import load_teacher


def export(setup, teacher_run, out, *extra):
    args = [
        "export-logits",
        "--run",
        str(teacher_run),
        "--data",
        str(setup / "data"),
        "--output",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]
    return CliRunner().invoke(main, args)


def assert_rows_are_the_top_k(scores, rows, full, k):
    """Rows ``rows`` of a format-2 directory hold the top ``k`` of the teacher's full rows ``full``
    ``(m, N)``: ids exact, scores relative to the row's largest within float16's precision, and the
    tail the log of the full softmax's mass outside them, as exact as a float32 normaliser."""
    items, logits = scores.fetch(rows)
    top = full.topk(k)
    assert torch.equal(items, top.indices + 1)
    relative = top.values - top.values[:, :1]
    assert ((logits - relative).abs() <= 2.0**-11 * relative.abs() + 1e-5).all()
    assert scores.has_tail and scores.manifest["format_version"] == 2
    outside = full.log_softmax(-1).scatter(1, top.indices, float("-inf")).logsumexp(-1)  # (m,)
    torch.testing.assert_close(scores.fetch_tail(rows).exp(), outside.exp(), rtol=0, atol=1e-5)


def test_per_prefix_export_writes_the_teachers_top_k(setup, teacher_run, tmp_path):
    args = ("--top-k", "7", "--positions", "2", "--per-prefix")
    result = export(setup, teacher_run, tmp_path / "scores", *args)
    assert result.exit_code == 0, result.output
    data = Dataset(setup / "data")
    scores = read_scores(tmp_path / "scores", data)
    samples = data.prefix_samples(2, 10)  # the teacher reads its SASRec's 10 items
    assert scores.manifest["rows"] == len(samples.targets) and scores.k == 7
    assert scores.manifest["teacher"]["kind"] == "teacher-moe-lora"
    assert scores.manifest["scoring"] == "per-prefix"
    _, logits, _ = scores.table()
    assert (logits[:, :-1] >= logits[:, 1:]).all()  # descending
    # row i is the teacher's own top-7 for sample i
    teacher = load_teacher(teacher_run, data)
    with torch.no_grad():
        direct = teacher(torch.from_numpy(samples.histories[:5]))[:, 1:]  # (5, N)
    index = torch.from_numpy(data.offsets[samples.users[:5]] + samples.position[:5])
    assert_rows_are_the_top_k(scores, scores.lookup(index), direct, 7)


def test_dense_export_scores_every_position_of_each_window(setup, teacher_run, tmp_path):
    result = export(setup, teacher_run, tmp_path / "scores", "--top-k", "7", "--all-positions")
    assert result.exit_code == 0, result.output
    data = Dataset(setup / "data")
    scores = read_scores(tmp_path / "scores", data)
    windows = data.train_windows(5, 10)
    assert (
        scores.manifest["rows"]
        == int((windows.position >= 0).sum())
        == len(data.prefix_samples(None, 10).targets)
    )
    teacher = load_teacher(teacher_run, data)
    with torch.no_grad():
        direct = teacher.scores(torch.from_numpy(windows.histories[:4]))[:, :, 1:]  # (4, 5, N)
    for b in range(4):
        for j in range(5):
            position = windows.position[b, j]
            if position < 0:
                continue
            row = scores.lookup(torch.tensor([data.offsets[windows.users[b]] + position]))
            assert_rows_are_the_top_k(scores, row, direct[b, j][None], 7)


def test_a_student_run_exports_its_own_scores(setup, tmp_path):
    result = export(setup, setup / "sasrec", tmp_path / "scores", "--top-k", "5", "--all-positions")
    assert result.exit_code == 0, result.output
    data = Dataset(setup / "data")
    scores = read_scores(tmp_path / "scores", data)
    assert scores.manifest["teacher"]["kind"] == "student"
    batch = next(data.train_batches(8, 10))  # every position of 8 users, as SASRec trains on them
    sasrec = load_run(setup / "sasrec", data)
    with torch.no_grad():
        own = sasrec.score(sasrec(batch.inputs))[..., 1:]  # (B, L, N)
    rows = scores.lookup(batch.index)  # (B, L)
    assert ((rows >= 0) == (batch.index >= 0)).all()  # every training position has a row
    assert_rows_are_the_top_k(scores, rows[rows >= 0], own[rows >= 0], 5)


def test_full_distributions_and_all_positions(setup, teacher_run, tmp_path):
    result = export(setup, teacher_run, tmp_path / "scores", "--full", "--all-positions", "--top-k", "3")
    assert result.exit_code == 0, result.output
    data = Dataset(setup / "data")
    scores = read_scores(tmp_path / "scores", data)
    assert scores.k == data.num_items and not scores.has_tail  # nothing dropped: no tail
    assert scores.manifest["rows"] == len(data.prefix_samples(None, 10).targets)
    assert sorted(scores.fetch(torch.tensor([0]))[0][0].tolist()) == list(range(1, data.num_items + 1))


def test_existing_score_directory_is_refused(setup, teacher_run, tmp_path):
    assert export(setup, teacher_run, tmp_path / "scores", "--top-k", "3").exit_code == 0
    result = export(setup, teacher_run, tmp_path / "scores")
    assert result.exit_code != 0 and "already exists" in result.output
    assert export(setup, teacher_run, tmp_path / "scores", "--overwrite", "--top-k", "4").exit_code == 0
    assert json.loads((tmp_path / "scores" / "manifest.json").read_text())["k"] == 4


def test_overwrite_never_replaces_a_file_or_a_foreign_directory(setup, teacher_run, tmp_path):
    (tmp_path / "file.txt").write_text("keep")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("chapter 1")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text('{"format_version": 1, "fingerprint": "x"}')
    for out, why in (
        ("file.txt", "is not a directory"),
        ("mine", "no manifest.json"),
        ("data", "is a dataset"),
    ):
        result = export(setup, teacher_run, tmp_path / out, "--overwrite")
        assert result.exit_code == 1 and why in result.output and "refusing to replace" in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert (tmp_path / "file.txt").read_text() == "keep"
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "chapter 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file.txt", "mine"]


def test_student_distills_the_exported_scores(setup, teacher_run, tmp_path):
    """export-logits (format 2, with tails) into student-train: kl uses the tail at T = 1 (with the full
    CE and with the sampled softmax), and is the top k renormalised at T = 2; rank reads the order."""
    assert export(setup, teacher_run, tmp_path / "scores", "--top-k", "10").exit_code == 0
    cases = [
        ("kl", "1", "ce", True),
        ("kl", "1", "sampled", True),
        ("kl", "2", "ce", False),
        ("rank", "2", "ce", False),
    ]
    for kd, temperature, loss, tail in cases:
        run = tmp_path / f"student-{kd}-{temperature}-{loss}"
        args = [
            "student-train",
            "--data",
            str(setup / "data"),
            "--output",
            str(run),
            "--teacher-scores",
            str(tmp_path / "scores"),
            "--kd",
            kd,
            "--alpha",
            "0.7",
            "--temperature",
            temperature,
            "--loss",
            loss,
            *(["--negatives", "8"] if loss == "sampled" else []),
            "--epochs",
            "2",
            "--max-len",
            "10",
            "--hidden",
            "16",
            "--device",
            "cpu",
        ]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert ("tail at T = 1 only" in result.output) == (kd == "kl" and not tail)
        config = json.loads((run / "config.json").read_text())
        assert config["teacher_scores"]["k"] == 10 and config["train"]["kd"] == kd
        assert config["teacher_scores"]["format_version"] == 2 and config["teacher_scores"]["tail"] is tail
        metrics = json.loads((run / "metrics.json").read_text())
        assert all(h["kd_loss"] > 0 for h in metrics["history"])


def test_scores_of_another_dataset_are_refused(setup, teacher_run, tmp_path):
    assert export(setup, teacher_run, tmp_path / "scores", "--top-k", "5").exit_code == 0
    other = tmp_path / "other"
    prepare(PrepareConfig(output=str(other), synthetic=True, num_users=40, num_items=30, seed=9))
    result = CliRunner().invoke(
        main,
        [
            "student-train",
            "--data",
            str(other),
            "--output",
            str(tmp_path / "s"),
            "--teacher-scores",
            str(tmp_path / "scores"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code != 0
    assert "scores another dataset" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s").exists()


def test_a_run_of_unknown_kind_is_refused(setup, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": "oracle"}))
    result = export(setup, run, tmp_path / "scores")
    assert result.exit_code != 0 and "unknown run kind 'oracle'" in result.output
    assert not (tmp_path / "scores").exists()
