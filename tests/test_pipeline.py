"""``distill pipeline``, the README's main job, end to end (shrunk to test size)."""

import json

from click.testing import CliRunner

from cli import main

SMALL = ["--num-users", "60", "--num-items", "40", "--student-epochs", "2", "--device", "cpu"]


def test_pipeline_runs_every_stage_and_summarises(tmp_path):
    out = tmp_path / "qs"
    result = CliRunner().invoke(main, ["pipeline", "--output", str(out), *SMALL, "--kd", "rank"])
    assert result.exit_code == 0, result.output
    for line in ("SASRec", "teacher (moe-lora)", "distilled SASRec"):
        assert line in result.output and line in (out / "summary.md").read_text()
    for run in ("sasrec", "teacher", "distilled"):
        metrics = json.loads((out / run / "metrics.json").read_text())
        assert 0 <= metrics["test"]["ndcg@10"] <= 1
    distilled = json.loads((out / "distilled" / "config.json").read_text())
    assert distilled["teacher_scores"]["teacher"]["kind"] == "teacher-moe-lora"
    assert distilled["train"]["kd"] == "rank"
    assert (out / "scores" / "manifest.json").is_file()


def test_pipeline_refuses_to_clobber_unless_told(tmp_path):
    out = tmp_path / "qs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["pipeline", "--output", str(out), *SMALL])
    assert result.exit_code != 0 and "already exists" in result.output
    result = CliRunner().invoke(
        main, ["pipeline", "--output", str(out), *SMALL, "--overwrite", "--teacher", "e4srec"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine"  # only the pipeline's own runs are replaced
    assert "teacher (e4srec)" in result.output
