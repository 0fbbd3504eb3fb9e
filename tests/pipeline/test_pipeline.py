"""``distill pipeline``, the README's main job: end to end (shrunk, and once at its real size)."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from distill.data import Dataset
from distill.errors import DistillError
from distill.scores import ScoreWriter
from pipeline.chain import SKIPPED, grid_points, pick, student_config, train_point
from pipeline.config import PipelineConfig

SMALL = ["--num-users", "60", "--num-items", "40", "--student-epochs", "2", "--device", "cpu"]


def test_pipeline_runs_every_stage_and_summarises(tmp_path):
    out = tmp_path / "qs"
    args = ["pipeline", "--output", str(out), *SMALL, "--kd", "rank", "--alphas", "0.5", "--seeds", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for line in ("plain SASRec", "teacher (moe-lora)", "distilled SASRec", "ms per user", "bootstrap 95%"):
        assert line in result.output and line in (out / "summary.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"student", "teacher", "distilled"}
    for model in summary["models"].values():
        assert {"test", "valid", "parameters", "ms_per_user"} <= set(model) and model["parameters"] > 0
    student, distilled = summary["models"]["student"], summary["models"]["distilled"]
    assert student["parameters"] < summary["models"]["teacher"]["parameters"]
    assert summary["picked"]["reason"] in result.output
    assert {"mean", "low", "high"} <= set(summary["paired_test"])
    for seed in (0, 1):  # the plain student at every paired seed
        assert (out / "grid" / f"plain-s{seed}" / "metrics.json").is_file()
    for run in ("sasrec", "grid/plain-s0"):  # every SASRec trains in length groups (the job's default)
        assert json.loads((out / run / "config.json").read_text())["train"]["length_group"] == 8
    if SKIPPED in result.output:
        assert summary["picked"]["alpha"] == 0 and not (out / "scores").exists()
    else:
        assert [p["kd"] for p in summary["picked"]["grid"]] == [None, "rank"]
        config = json.loads((out / "grid" / "rank-a0.5-s1" / "config.json").read_text())
        assert (
            config["teacher_scores"]["teacher"]["kind"] == "teacher-moe-lora" and config["train"]["seed"] == 1
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
        main, ["pipeline", "--output", str(out), *SMALL, "--overwrite", "--teacher", "sasrec", "--kd", "rank"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine"  # only the pipeline's own runs are replaced
    assert "teacher (sasrec)" in result.output and not (out / "teacher").exists()


def test_the_grid_spans_losses_alphas_and_temperatures():
    cfg = PipelineConfig(output="o", kd=("kl", "rank"), alphas=(0.0, 0.5, 0.8), temperatures=(0.5, 2.0))
    points = [(p["kd"], p["alpha"], p["temperature"]) for p in grid_points(cfg)]
    kl = [("kl", a, t) for a in (0.5, 0.8) for t in (0.5, 2.0)]
    assert points == [*kl, ("rank", 0.5, 1.0), ("rank", 0.8, 1.0)]
    repeated = PipelineConfig(output="o", kd=("kl", "kl"), alphas=(0.5, 0.5), temperatures=(1.0, 1.0, 2.0))
    assert [(p["alpha"], p["temperature"]) for p in grid_points(repeated)] == [(0.5, 1.0), (0.5, 2.0)]


def test_the_grid_picks_alpha_zero_when_the_teacher_is_random(tmp_path):
    cfg = PipelineConfig(
        output=str(tmp_path), kd=("kl",), alphas=(0.9,), temperatures=(1.0,), seeds=2, student_hidden=16
    )
    from distill.config import PrepareConfig
    from distill.prepare import run as prepare

    prepare(PrepareConfig(output=str(tmp_path / "data"), synthetic=True, num_users=150, num_items=40, seed=1))
    data = Dataset(tmp_path / "data")
    student = {**student_config(cfg, str(tmp_path / "data")), "epochs": 8, "device": "cpu"}
    plain = train_point(
        cfg, student, {"kd": None, "alpha": 0.0, "temperature": None}, None, tmp_path / "grid"
    )
    assert len(plain["valid_by_seed"]) == 2 and plain["valid"] == np.mean(plain["valid_by_seed"])
    samples = data.prefix_samples(None, 1)
    rng = np.random.default_rng(0)
    items = np.stack([rng.permutation(data.num_items)[:10] + 1 for _ in samples.targets])
    logits = np.sort(rng.normal(0, 5, items.shape), axis=1)[:, ::-1].astype(np.float32)
    manifest = {"teacher": {"kind": "random"}, "dataset": data.identity(tmp_path / "scores"), "k": 10}
    with ScoreWriter(tmp_path / "scores", {**manifest, "positions": "all"}) as writer:
        writer.write(samples.users, samples.position, items, logits)
    picked = pick(cfg, student, plain, str(tmp_path / "scores"), tmp_path / "grid")
    assert (
        picked["alpha"] == 0
        and "picked alpha 0" in picked["reason"]
        and "mean of 2 seeds" in picked["reason"]
    )
    assert picked["grid"][1]["valid"] < plain["valid"]  # the mean of the two seeds decided


@pytest.mark.slow
def test_the_main_job_shows_distillation_paying(tmp_path):
    """The README's main job as a user runs it (the defaults): the teacher ranks above the plain student
    on validation and test, validation picks a distilled student, and it beats the plain one on test
    with a paired interval above 0. Fails if distillation is skipped."""
    out = tmp_path / "quickstart"
    result = CliRunner().invoke(main, ["pipeline", "--output", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert SKIPPED not in result.output
    summary = json.loads((out / "summary.json").read_text())
    teacher, plain, distilled = (summary["models"][n] for n in ("teacher", "student", "distilled"))
    for split in ("valid", "test"):
        assert teacher[split]["ndcg@10"] > plain[split]["ndcg@10"]
    assert summary["picked"]["alpha"] > 0 and (out / "scores" / "manifest.json").is_file()
    assert distilled["test"]["ndcg@10"] > plain["test"]["ndcg@10"] and summary["paired_test"]["low"] > 0


@pytest.mark.parametrize("teacher", ["ensemble", "cross-fit"])
def test_the_teacher_can_be_several_sasrecs(tmp_path, teacher):
    out = tmp_path / "qs"
    args = ["pipeline", "-o", str(out), *SMALL, "--teacher", teacher, "--members", "2", "--kd", "kl"]
    result = CliRunner().invoke(main, [*args, "--temperatures", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    members = ["sasrec", "members/seed1"] if teacher == "ensemble" else ["members/fold0", "members/fold1"]
    assert summary["models"]["teacher"]["run"] == ",".join(members)
    if SKIPPED not in result.output:
        manifest = json.loads((out / "scores" / "manifest.json").read_text())
        assert manifest["teacher"]["kind"] == teacher


def test_a_cross_fit_teacher_needs_two_folds(tmp_path):
    result = CliRunner().invoke(
        main, ["pipeline", "-o", str(tmp_path / "o"), "--teacher", "cross-fit", "--members", "1"]
    )
    assert result.exit_code != 0 and "needs --members (folds) >= 2" in result.output


def _files(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stage", ["run_metrics", "summarise"])  # before the export, after the grid
def test_a_failed_overwrite_puts_the_old_outputs_back(tmp_path, monkeypatch, stage):
    from pipeline import chain

    measured = chain.run_metrics

    def strong(*args, **kwargs):  # a teacher never weaker than the student: the export always runs
        metrics = measured(*args, **kwargs)
        metrics["valid"][chain.SELECT_ON] = 1.0
        return metrics

    monkeypatch.setattr("pipeline.chain.run_metrics", strong)
    out = tmp_path / "qs"
    args = ["pipeline", "--output", str(out), *SMALL, "--teacher", "sasrec", "--alphas", "0.5"]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = _files(out)
    assert "scores/manifest.json" in before

    def fail(*args, **kwargs):
        raise DistillError("the disk went away")

    monkeypatch.setattr(f"pipeline.chain.{stage}", fail)
    result = CliRunner().invoke(main, [*args, "--overwrite", "--seed", "1", "--teacher", "ensemble"])
    assert result.exit_code == 1 and "the disk went away" in result.output
    assert _files(out) == before and not (out / "members").exists()  # a stage the old job had not: gone
    assert sorted(p.name for p in out.iterdir()) == sorted({name.split("/")[0] for name in before})


def test_a_killed_overwrite_is_put_back_whole_by_the_next_job(tmp_path):
    out = tmp_path / "qs"
    args = ["pipeline", "--output", str(out), *SMALL, "--teacher", "sasrec", "--alphas", "0.5"]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = _files(out)
    dead = 999_999_999
    for part in ("data", "sasrec", "grid", "summary.md"):  # a job killed after its new sasrec trained
        (out / part).rename(out / f".{part}.aside-{dead}")
    shutil.copytree(out / f".sasrec.aside-{dead}", out / "sasrec")  # a run with a checkpoint
    (out / "data").mkdir()
    result = CliRunner().invoke(main, args)  # without --overwrite: refused, and the old job is back
    assert result.exit_code == 1 and "already exists" in result.output
    assert _files(out) == before and not [p for p in out.iterdir() if p.name.startswith(".")]
