"""``distill student-train`` and ``distill evaluate`` end to end on tiny synthetic data."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli import main
from distill.config import PrepareConfig
from distill.data import Dataset
from distill.prepare import run as prepare
from distill.scores import ScoreWriter
from student.config import StudentTrainConfig

TINY = ["--max-len", "20", "--hidden", "16", "--batch-size", "64", "--device", "cpu", "--eval-every", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "syn"
    prepare(PrepareConfig(output=str(path), synthetic=True, num_users=150, num_items=60, seed=3))
    return path


def train(runner, dataset, out, *extra):
    result = runner.invoke(
        main, ["student-train", "--data", str(dataset), "--output", str(out), *TINY, *extra]
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def test_train_writes_metrics_checkpoints_and_tensorboard(dataset, tmp_path):
    metrics = train(CliRunner(), dataset, tmp_path / "run", "--epochs", "3")
    assert set(metrics) >= {"best_epoch", "valid", "test"}
    for split in ("valid", "test"):
        assert set(metrics[split]) == {f"{m}@{k}" for m in ("hr", "ndcg") for k in (5, 10, 20)} | {"mrr"}
    assert 1 <= metrics["best_epoch"] <= 3
    run = tmp_path / "run"
    assert (run / "best" / "model.safetensors").is_file() and (run / "last" / "state.pt").is_file()
    assert any((run / "tb").iterdir())
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "student" and config["dataset"]["fingerprint"]


def test_training_beats_popularity_free_chance(dataset, tmp_path):
    metrics = train(CliRunner(), dataset, tmp_path / "run", "--epochs", "15", "--lr", "0.005")
    # 60 items with ~10 masked: a random ranker has HR@10 ~ 0.2; planted structure is learnable.
    assert metrics["valid"]["hr@10"] > 0.3


def test_resume_matches_an_uninterrupted_run(dataset, tmp_path):
    runner = CliRunner()
    full = train(runner, dataset, tmp_path / "full", "--epochs", "4")
    train(runner, dataset, tmp_path / "cut", "--epochs", "2")
    resumed = train(runner, dataset, tmp_path / "cut", "--epochs", "4", "--resume")
    for key in ("best_epoch", "valid", "test"):
        assert resumed[key] == full[key]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]


def test_bfloat16_training_learns_as_float32_does_and_resumes_exactly(dataset, tmp_path):
    """--precision bfloat16 (autocast + bfloat16 catalogue products): another trajectory than float32,
    about as good, and as exactly resumable."""
    runner = CliRunner()
    bf16 = ("--lr", "0.005", "--precision", "bfloat16")
    plain = train(runner, dataset, tmp_path / "f32", "--epochs", "15", "--lr", "0.005")
    mixed = train(runner, dataset, tmp_path / "bf16", "--epochs", "15", *bf16)
    assert [h["loss"] for h in mixed["history"]] != [h["loss"] for h in plain["history"]]
    assert mixed["valid"]["hr@10"] > 0.3
    assert abs(mixed["valid"]["ndcg@10"] - plain["valid"]["ndcg@10"]) < 0.05
    train(runner, dataset, tmp_path / "cut", "--epochs", "8", *bf16)
    resumed = train(runner, dataset, tmp_path / "cut", "--epochs", "15", *bf16, "--resume")
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in mixed["history"]]
    assert resumed["test"] == mixed["test"]


def test_bce_loss_trains(dataset, tmp_path):
    metrics = train(
        CliRunner(), dataset, tmp_path / "run", "--epochs", "2", "--loss", "bce", "--negatives", "3"
    )
    assert metrics["test"]["ndcg@10"] >= 0


SAMPLED = ["--loss", "sampled", "--negatives", "8"]


@pytest.mark.parametrize(
    ("sampler", "updates"), [("uniform", None), ("popularity", "rows"), ("uniform", "rows")]
)
def test_sampled_loss_trains_and_resumes_like_an_uninterrupted_run(dataset, tmp_path, sampler, updates):
    runner = CliRunner()
    args = [*SAMPLED, "--sampler", sampler, *(["--item-updates", updates] if updates else [])]
    full = train(runner, dataset, tmp_path / "full", "--epochs", "4", *args)
    train(runner, dataset, tmp_path / "cut", "--epochs", "2", *args)
    resumed = train(runner, dataset, tmp_path / "cut", "--epochs", "4", "--resume", *args)
    for key in ("best_epoch", "valid", "test"):
        assert resumed[key] == full[key]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    assert full["valid"]["hr@10"] > 0.3  # 60 items, ~10 masked: chance is about 0.2
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert (saved["train"]["loss"], saved["train"]["negatives"], saved["train"]["sampler"]) == (
        "sampled",
        8,
        sampler,
    )
    assert saved["item_updates"] == (updates or "dense")  # dense: the default


def test_training_by_rows_is_training_by_dense_adam(tmp_path):
    """Row updates replay the steps a row missed before it is read and at the epoch's end, so a run by
    rows trains the model dense Adam trains (up to rounding), with its losses and metrics. 1,000 items
    and batches of 8: most rows go unread for many steps."""
    data = tmp_path / "data"
    prepare(PrepareConfig(output=str(data), synthetic=True, num_users=80, num_items=1000, seed=3))
    runner, small = CliRunner(), ["--epochs", "2", *SAMPLED, "--batch-size", "8"]
    dense = train(runner, data, tmp_path / "dense", *small)
    rows = train(runner, data, tmp_path / "rows", *small, "--item-updates", "rows")
    np.testing.assert_allclose(
        [h["loss"] for h in rows["history"]], [h["loss"] for h in dense["history"]], rtol=1e-5
    )
    a, b = (load_file(tmp_path / run / "last" / "model.safetensors") for run in ("dense", "rows"))
    torch.testing.assert_close(a["item_emb.weight"], b["item_emb.weight"], rtol=1e-4, atol=1e-5)
    assert rows["valid"]["ndcg@10"] == pytest.approx(dense["valid"]["ndcg@10"], abs=1e-3)


def test_a_resume_with_other_item_updates_is_refused(dataset, tmp_path):
    runner = CliRunner()
    train(runner, dataset, tmp_path / "run", "--epochs", "1", *SAMPLED, "--item-updates", "rows")
    result = runner.invoke(
        main,
        ["student-train", "--data", str(dataset), "-o", str(tmp_path / "run"), *TINY, "--epochs", "2",
         *SAMPLED, "--resume"],  # the default, dense
    )  # fmt: skip
    assert result.exit_code == 1
    assert "cannot resume" in result.output and "item_updates" in result.output


def test_evaluate_prints_the_saved_metrics(dataset, tmp_path):
    runner = CliRunner()
    metrics = train(runner, dataset, tmp_path / "run", "--epochs", "2")
    result = runner.invoke(
        main, ["evaluate", "--run", str(tmp_path / "run"), "--data", str(dataset), "--split", "test"]
    )
    assert result.exit_code == 0, result.output
    assert f"{metrics['test']['ndcg@10']:.4f}" in result.output
    assert "masked" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hidden", "0"], "hidden must be"),
        (["--hidden", "30", "--heads", "4"], "heads (4) must divide hidden (30)"),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--loss", "mse"], "Invalid value for '--loss'"),
        (["--lr", "nan"], "config key 'lr' (from option): expected a finite number"),
        (["--lr", "inf"], "config key 'lr' (from option): expected a finite number"),
        (["--weight-decay", "nan"], "config key 'weight_decay' (from option): expected a finite number"),
        (["--set", "dropout=nan"], "config key 'dropout' (from --set): expected a finite number"),
        (["--loss", "sampled", "--negatives", "0"], "negatives must be at least 1, got 0"),
        (["--loss", "sampled", "--negatives", "60"], "--negatives 60 must be below the number of items (60)"),
        (["--loss", "bce", "--negatives", "100"], "--negatives 100 must be below the number of items (60)"),
        (["--sampler", "popularity"], "--sampler draws the negatives of --loss sampled; --loss ce has none"),
        (["--item-updates", "rows"], "--item-updates rows is for --loss sampled; --loss ce reaches every"),
        (["--item-updates", "sparse"], "Invalid value for '--item-updates'"),
        (["--loss", "bce", "--teacher-scores", "s"], "needs --loss ce or sampled (a softmax); --loss bce"),
    ],
)
def test_impossible_options_are_one_line_errors(dataset, tmp_path, args, message):
    result = CliRunner().invoke(
        main, ["student-train", "--data", str(dataset), "--output", str(tmp_path / "r"), *args]
    )
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exit_code == 2 or len(result.output.strip().splitlines()) == 1  # 2: click's usage error
    assert not (tmp_path / "r").exists()


def test_run_from_another_dataset_is_refused(dataset, tmp_path):
    runner = CliRunner()
    train(runner, dataset, tmp_path / "run", "--epochs", "1")
    other = tmp_path / "other"
    prepare(PrepareConfig(output=str(other), synthetic=True, num_users=150, num_items=60, seed=4))
    result = runner.invoke(main, ["evaluate", "--run", str(tmp_path / "run"), "--data", str(other)])
    assert result.exit_code != 0
    assert "another dataset" in result.output and "Traceback" not in result.output


def test_corrupt_checkpoint_is_a_one_line_error(dataset, tmp_path):
    runner = CliRunner()
    train(runner, dataset, tmp_path / "run", "--epochs", "1")
    (tmp_path / "run" / "best" / "model.safetensors").write_bytes(b"not a safetensors file")
    result = runner.invoke(main, ["evaluate", "--run", str(tmp_path / "run"), "--data", str(dataset)])
    assert result.exit_code != 0
    assert "corrupt" in result.output and "Traceback" not in result.output


def test_existing_run_is_not_clobbered(dataset, tmp_path):
    runner = CliRunner()
    train(runner, dataset, tmp_path / "run", "--epochs", "1")
    result = runner.invoke(
        main,
        ["student-train", "--data", str(dataset), "--output", str(tmp_path / "run"), *TINY, "--epochs", "1"],
    )
    assert result.exit_code != 0 and "already exists" in result.output


def test_config_file_and_set(dataset, tmp_path):
    config = tmp_path / "student.toml"
    config.write_text('epochs = 1\nhidden = 8\nmax_len = 10\ndevice = "cpu"\n')
    result = CliRunner().invoke(
        main,
        [
            "student-train",
            "--data",
            str(dataset),
            "--output",
            str(tmp_path / "run"),
            "--config",
            str(config),
            "--set",
            "heads=2",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["hidden"] == 8 and saved["model"]["heads"] == 2 and saved["train"]["epochs"] == 1


def test_student_config_validates():
    with pytest.raises(ValueError, match="dropout"):
        StudentTrainConfig(data="d", output="o", dropout=1.5)


def test_student_options_reach_the_run(dataset, tmp_path):
    args = [
        "--epochs",
        "1",
        "--blocks",
        "1",
        "--heads",
        "2",
        "--dropout",
        "0.1",
        "--lr",
        "0.003",
        "--weight-decay",
        "0.01",
        "--seed",
        "7",
        "--eval-every",
        "1",
        "--patience",
        "0",
    ]
    train(CliRunner(), dataset, tmp_path / "run", *args)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"] == {
        "num_items": 60,
        "max_len": 20,
        "hidden": 16,
        "blocks": 1,
        "heads": 2,
        "dropout": 0.1,
    }
    assert (
        saved["train"]["lr"] == 0.003
        and saved["train"]["weight_decay"] == 0.01
        and saved["train"]["seed"] == 7
    )


def test_different_seeds_give_different_runs(dataset, tmp_path):
    a = train(CliRunner(), dataset, tmp_path / "a", "--epochs", "1", "--seed", "1")
    b = train(CliRunner(), dataset, tmp_path / "b", "--epochs", "1", "--seed", "2")
    assert a["history"][0]["loss"] != b["history"][0]["loss"]


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    import student.train

    calls = []

    def ce_that_breaks(*args, **kwargs):
        calls.append(1)
        loss = student.train.ce_loss.__wrapped_real__(*args, **kwargs)
        return loss * float("nan") if len(calls) == steps_per_epoch + 2 else loss  # epoch 2, step 2

    steps_per_epoch = -(-150 // 64)
    ce_that_breaks.__wrapped_real__ = student.train.ce_loss
    monkeypatch.setattr(student.train, "ce_loss", ce_that_breaks)
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["student-train", "--data", str(dataset), "--output", str(run), *TINY, "--epochs", "3"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith(
            f"Error: training loss is nan at epoch 2, step 2: stopped {run}; {run / 'last'} keeps epoch 1"
        )
    )
    assert not (run / "metrics.json").exists()
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(w).all() for w in load_file(run / "last" / "model.safetensors").values())


def test_overwrite_and_restart_rules(dataset, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["student-train", "--data", str(dataset), "--output", str(run), *TINY, "--epochs", "1"]
    train(runner, dataset, run, "--epochs", "1")
    (run / "notes.txt").write_text("mine")  # --overwrite replaces what distill wrote, never a user's note
    result = runner.invoke(main, [*args, "--overwrite"])
    assert result.exit_code == 1 and "1 file(s) distill did not write (notes.txt)" in result.output
    assert (run / "notes.txt").read_text() == "mine"
    (run / "notes.txt").unlink()
    assert runner.invoke(main, [*args, "--overwrite"]).exit_code == 0
    assert (run / "metrics.json").is_file()

    # A run killed before its first checkpoint: config.json and tb/ only. A rerun starts afresh.
    for name in ("best", "last", "metrics.json"):
        (shutil.rmtree if (run / name).is_dir() else Path.unlink)(run / name)
    result = runner.invoke(main, [*args, "--resume"])
    assert result.exit_code == 1 and "no checkpoint" in result.output and "without --resume" in result.output
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (run / "metrics.json").is_file()

    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("chapter 1")
    (tmp_path / "file.txt").write_text("keep")
    for out in (foreign, tmp_path / "file.txt"):
        result = runner.invoke(main, [*args[:3], "--output", str(out), *TINY, "--overwrite"])
        assert result.exit_code == 1 and "refusing to replace" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert (foreign / "thesis.tex").read_text() == "chapter 1" and (
        tmp_path / "file.txt"
    ).read_text() == "keep"


@pytest.mark.parametrize(
    "changed, message",
    [
        (["--lr", "0.01"], "trained with --lr 0.001, not 0.01"),
        (["--alpha", "0.9"], "trained with --alpha 0.5, not 0.9"),
        (["--batch-size", "8"], "trained with --batch-size"),
        (["--teacher-scores", None], "(--teacher-scores and its KD options) (it records "),  # dropped
        (["--teacher-scores", "other"], "the teacher_scores in"),  # another teacher's scores
    ],
)
def test_a_resume_keeps_the_recipe_its_epochs_were_trained_with(dataset, tmp_path, changed, message):
    runner = CliRunner()
    scores = random_scores(dataset, tmp_path / "scores")
    teacher = ["--teacher-scores", str(scores), "--alpha", "0.5"]
    train(runner, dataset, tmp_path / "run", "--epochs", "1", *teacher)
    if changed[0] == "--teacher-scores":
        teacher = (
            [] if changed[1] is None else ["--teacher-scores", str(random_scores(dataset, tmp_path / "o", 5))]
        )
        changed = []
    args = ["student-train", "--data", str(dataset), "-o", str(tmp_path / "run"), *TINY, *teacher, *changed]
    result = runner.invoke(main, [*args, "--epochs", "2", "--resume"])
    assert result.exit_code == 1 and "cannot resume" in result.output and message in result.output, (
        result.output
    )
    assert json.loads((tmp_path / "run" / "last" / "config.json").read_text())["epoch"] == 1  # untouched
    moved = tmp_path / "moved"  # the same scores elsewhere: a run and its scores may move
    (tmp_path / "scores").rename(moved)
    same = ["--teacher-scores", str(moved), "--alpha", "0.5"]
    train(runner, dataset, tmp_path / "run", *same, "--epochs", "2", "--patience", "3", "--resume")


def random_scores(dataset, out, k=10, seed=0):
    """A score directory with random top-k rows at every training position (ScoreWriter, no teacher)."""
    data = Dataset(dataset)
    samples = data.prefix_samples(None, 20)
    rng = np.random.default_rng(seed)
    items = np.stack([rng.choice(data.num_items, k, replace=False) + 1 for _ in samples.targets])
    logits = -np.sort(rng.random((len(items), k)), axis=1).astype(np.float32)  # descending
    manifest = {"teacher": {"kind": "random"}, "dataset": data.identity(out), "k": k, "positions": "all"}
    with ScoreWriter(out, manifest) as writer:
        writer.write(samples.users, samples.position, items, -logits)
    return out


def test_alpha_zero_reproduces_plain_training_bit_for_bit(dataset, tmp_path):
    runner = CliRunner()
    scores = random_scores(dataset, tmp_path / "scores")
    plain = train(runner, dataset, tmp_path / "plain", "--epochs", "2")
    teacher = ["--teacher-scores", str(scores)]
    zero = train(runner, dataset, tmp_path / "zero", "--epochs", "2", *teacher, "--alpha", "0")
    assert [h["loss"] for h in zero["history"]] == [h["loss"] for h in plain["history"]]
    assert zero["test"] == plain["test"]
    weights = [(tmp_path / run / "best" / "model.safetensors").read_bytes() for run in ("plain", "zero")]
    assert weights[0] == weights[1]
    mixed = train(runner, dataset, tmp_path / "kd", "--epochs", "2", *teacher, "--alpha", "0.5")
    assert mixed["history"][0]["kd_loss"] > 0 and mixed["history"][0]["loss"] != plain["history"][0]["loss"]


def test_sampled_loss_distils_and_alpha_zero_is_the_plain_sampled_run(dataset, tmp_path):
    runner = CliRunner()
    scores = random_scores(dataset, tmp_path / "scores")
    plain = train(runner, dataset, tmp_path / "plain", "--epochs", "2", *SAMPLED)
    teacher = [*SAMPLED, "--teacher-scores", str(scores)]
    zero = train(runner, dataset, tmp_path / "zero", "--epochs", "2", *teacher, "--alpha", "0")
    assert [h["loss"] for h in zero["history"]] == [h["loss"] for h in plain["history"]]
    assert zero["test"] == plain["test"]
    mixed = train(runner, dataset, tmp_path / "kd", "--epochs", "2", *teacher, "--alpha", "0.5")
    assert mixed["history"][0]["kd_loss"] > 0 and mixed["history"][0]["loss"] != plain["history"][0]["loss"]


def test_a_resume_from_weights_of_another_shape_is_a_one_line_error(dataset, tmp_path):
    runner = CliRunner()
    train(runner, dataset, tmp_path / "wide", "--epochs", "1", "--hidden", "32")
    train(runner, dataset, tmp_path / "run", "--epochs", "1")
    shutil.copy(
        tmp_path / "wide" / "last" / "model.safetensors", tmp_path / "run" / "last" / "model.safetensors"
    )
    args = ["student-train", "--data", str(dataset), "-o", str(tmp_path / "run"), *TINY, "--epochs", "2"]
    result = runner.invoke(main, [*args, "--resume"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "holds weights that do not fit its model (size mismatch for item_emb.weight" in result.output


@pytest.mark.parametrize(
    "other, why",
    [
        (["--hidden", "8"], "exp_avg of shape (61, 8) does not fit a parameter of shape (61, 16)"),
        (["--loss", "sampled", "--negatives", "8", "--item-updates", "rows"], "it has no 'param_groups'"),
    ],
)
def test_a_resume_refuses_another_runs_trainer_state(dataset, tmp_path, other, why):
    runner = CliRunner()
    train(runner, dataset, tmp_path / "run", "--epochs", "1")
    train(runner, dataset, tmp_path / "other", "--epochs", "1", *other)
    shutil.copy(tmp_path / "other" / "last" / "state.pt", tmp_path / "run" / "last" / "state.pt")
    result = runner.invoke(
        main,
        [
            "student-train",
            "--data",
            str(dataset),
            "-o",
            str(tmp_path / "run"),
            *TINY,
            "--epochs",
            "2",
            "--resume",
        ],
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert (
        line.startswith(f"Error: cannot resume {tmp_path / 'run'}: ")
        and "not this run's trainer state" in line
    )
    assert why in line, line


def test_scores_that_teach_no_position_read_are_refused(dataset, tmp_path):
    data = Dataset(dataset)
    samples = data.prefix_samples(None, 20)
    first = samples.position == 1  # each user's first training target only
    out = tmp_path / "first"
    with ScoreWriter(out, {"teacher": {"kind": "random"}, "dataset": data.identity(out), "k": 1}) as writer:
        writer.write(
            samples.users[first],
            samples.position[first],
            samples.targets[first, None],
            np.zeros((first.sum(), 1)),
        )
    args = ["student-train", "--data", str(dataset), *TINY, "--epochs", "1", "--teacher-scores", str(out)]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "run"), "--max-len", "1"])
    assert result.exit_code == 1 and not (tmp_path / "run").exists()
    assert result.output.strip() == (
        f"Error: {out} scores none of the training positions this student reads (each user's last 1 "
        "training targets): it teaches nothing"
    )
    assert (
        CliRunner().invoke(main, [*args, "-o", str(tmp_path / "run")]).exit_code == 0
    )  # max_len 20 reads them


def test_a_resume_refuses_a_state_file_that_is_not_a_trainer_state(dataset, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    train(runner, dataset, run, "--epochs", "1")
    torch.save(torch.zeros(3), run / "last" / "state.pt")
    result = runner.invoke(
        main, ["student-train", "--data", str(dataset), "-o", str(run), *TINY, "--epochs", "2", "--resume"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "not this run's trainer state" in result.output.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda o: o["param_groups"][0].update(lr="0.001"), "the optimizer's lr is '0.001', not a number"),
        (lambda o: o["param_groups"][0].update(betas=(0.9, None)), "the optimizer's betas is (0.9, None)"),
        (lambda o: next(iter(o["state"].values())).update(step=torch.zeros(2)), "step is tensor([0., 0.])"),
        (lambda o: next(iter(o["state"].values())).update(step="3"), "the optimizer's step is '3', not one"),
        (lambda o: o["param_groups"][0].update(betas=0.9), "betas is 0.9, not a pair of numbers"),
        (lambda o: o["param_groups"][0].update(betas=(0.9,)), "betas is (0.9,), not a pair of numbers"),
        (lambda o: o["param_groups"][0].update(lr=torch.tensor([1e-3, 1e-3])), "lr is tensor([0.0010"),
        (lambda o: o["param_groups"][0].update(eps=[1e-8]), "eps is [1e-08], not a number"),
        (lambda o: o["param_groups"][0].update(amsgrad="yes"), "amsgrad is 'yes', not true or false"),
    ],
)
def test_a_resume_refuses_a_hand_edited_optimizer_state(dataset, tmp_path, edit, why):
    runner = CliRunner()
    run = tmp_path / "run"
    train(runner, dataset, run, "--epochs", "1")
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    edit(state["optimizer"])
    torch.save(state, run / "last" / "state.pt")
    result = runner.invoke(
        main, ["student-train", "--data", str(dataset), "-o", str(run), *TINY, "--epochs", "2", "--resume"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert "not this run's trainer state" in line and why in line, line
