"""``distill pipeline``, the README's main job, end to end (shrunk to test size)."""

import json

import numpy as np
from click.testing import CliRunner

from cli import main
from distill.data import Dataset
from distill.scores import ScoreWriter
from pipeline.chain import SKIPPED, pick, student_config
from pipeline.config import PipelineConfig
from student.config import StudentTrainConfig
from student.train import run as train_student

SMALL = ["--num-users", "60", "--num-items", "40", "--student-epochs", "2", "--device", "cpu"]


def test_pipeline_runs_every_stage_and_summarises(tmp_path):
    out = tmp_path / "qs"
    result = CliRunner().invoke(
        main,
        ["pipeline", "--output", str(out), *SMALL, "--kd", "rank", "--alphas", "0.5", "--temperatures", "1"],
    )
    assert result.exit_code == 0, result.output
    for line in ("SASRec", "teacher (moe-lora)", "distilled SASRec", "ms per user"):
        assert line in result.output and line in (out / "summary.md").read_text()
    for run in ("sasrec", "teacher", "distilled"):
        metrics = json.loads((out / run / "metrics.json").read_text())
        assert 0 <= metrics["test"]["ndcg@10"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"student", "teacher", "distilled"}
    for model in summary["models"].values():
        assert {"test", "valid", "parameters", "ms_per_user"} <= set(model) and model["parameters"] > 0
    student, distilled = summary["models"]["student"], summary["models"]["distilled"]
    assert distilled["valid"]["ndcg@10"] >= student["valid"]["ndcg@10"]  # alpha 0 is a candidate
    assert summary["picked"]["reason"] in result.output
    if SKIPPED in result.output:
        assert summary["picked"]["alpha"] == 0 and not (out / "grid").exists()
    else:
        assert len(summary["picked"]["grid"]) == 2 and (out / "grid" / "a0.5-t1" / "metrics.json").is_file()
        grid = json.loads((out / "grid" / "a0.5-t1" / "config.json").read_text())
        assert (
            grid["teacher_scores"]["teacher"]["kind"] == "teacher-moe-lora" and grid["train"]["kd"] == "rank"
        )
    if summary["picked"]["alpha"] == 0:
        assert distilled["test"] == student["test"]


def test_pipeline_refuses_to_clobber_unless_told(tmp_path):
    out = tmp_path / "qs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["pipeline", "--output", str(out), *SMALL])
    assert result.exit_code != 0 and "already exists" in result.output
    result = CliRunner().invoke(
        main, ["pipeline", "--output", str(out), *SMALL, "--overwrite", "--teacher", "e4srec", "--alphas", ""]
    )
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine"  # only the pipeline's own runs are replaced
    assert "teacher (e4srec)" in result.output


def test_the_grid_picks_alpha_zero_when_the_teacher_is_random(tmp_path):
    cfg = PipelineConfig(output=str(tmp_path), num_users=80, num_items=30, alphas=(0.9,), temperatures=(1.0,))
    from distill.config import PrepareConfig
    from distill.prepare import run as prepare

    prepare(PrepareConfig(output=str(tmp_path / "data"), synthetic=True, num_users=150, num_items=40, seed=1))
    data = Dataset(tmp_path / "data")
    student = {**student_config(cfg, str(tmp_path / "data")), "epochs": 8, "device": "cpu"}
    plain = train_student(StudentTrainConfig(output=str(tmp_path / "plain"), **student))
    samples = data.prefix_samples(None, 1)
    rng = np.random.default_rng(0)
    items = np.stack([rng.permutation(data.num_items)[:10] + 1 for _ in samples.targets])
    logits = np.sort(rng.normal(0, 5, items.shape), axis=1)[:, ::-1].astype(np.float32)
    manifest = {
        "teacher": {"kind": "random"},
        "dataset": data.identity(tmp_path / "scores"),
        "k": 10,
        "positions": "all",
    }
    with ScoreWriter(tmp_path / "scores", manifest) as writer:
        writer.write(samples.users, samples.position, items, logits)
    picked = pick(cfg, student, plain, str(tmp_path / "scores"), tmp_path / "grid")
    assert picked["alpha"] == 0 and "picked alpha 0" in picked["reason"]
    assert picked["grid"][1]["valid"] < plain["valid"]["ndcg@10"]
