"""Teachers made of several runs: cross-fits (out-of-fold scores) and ensembles (mixed probabilities)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from distill.data import Dataset
from distill.errors import DistillError
from distill.scores import read_scores
from pipeline.runs import fit_weights, open_run, open_runs

TINY = ("--max-len", "10", "--hidden", "16", "--epochs", "2", "--device", "cpu", "--batch-size", "16")


def ok(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_dataset):
    """Two SASRec seeds and the three runs of a 3-fold cross-fit on the synthetic data."""
    root = tmp_path_factory.mktemp("ensembles")
    for seed in (0, 1):
        ok("student-train", "--data", synthetic_dataset, "-o", root / f"seed{seed}", "--seed", seed, *TINY)
    for fold in range(3):
        ok("student-train", "--data", synthetic_dataset, "-o", root / f"fold{fold}", "--folds", 3,
           "--fold", fold, *TINY)  # fmt: skip
    return root


def test_folds_are_a_stable_hash_of_the_raw_user_id(synthetic_dataset):
    data = Dataset(synthetic_dataset)
    folds = data.folds(3)
    assert folds.shape == (data.num_users,) and set(folds.tolist()) == {0, 1, 2}
    code = f"from distill.data import Dataset; print(Dataset({str(synthetic_dataset)!r}).folds(3).tolist())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == folds.tolist()  # another process, another hash seed: the same
    raw = data.raw_users[5]
    assert folds[5] == int.from_bytes(hashlib.sha256(raw.encode()).digest()[:8], "big") % 3


def test_a_fold_run_trains_and_selects_on_the_other_folds_only(runs, synthetic_dataset):
    data = Dataset(synthetic_dataset)
    config = json.loads((runs / "fold1" / "config.json").read_text())
    held = data.folds(3) == 1
    assert config["folds"]["k"] == 3 and config["folds"]["fold"] == 1
    assert config["folds"]["held_out_users"] == int(held.sum())
    train, held_out = data.cross_fit(3, 1)
    assert (train.train_lengths(10)[held] == 0).all() and (train.train_lengths(10)[~held] > 0).any()
    assert set(train.eval_users()) == set(np.flatnonzero(~held & (data.lengths >= 3)))
    assert not held[train.train_windows(5, 10).users].any()
    metrics = json.loads((runs / "fold1" / "metrics.json").read_text())
    assert metrics["test"] == open_run(runs / "fold1", train, "cpu").evaluate(train, "test", 64)
    assert metrics["held_out"]["test"] == open_run(runs / "fold1", data, "cpu").evaluate(held_out, "test", 64)


def test_a_cross_fit_scores_each_user_with_the_run_that_held_it_out(runs, synthetic_dataset):
    data = Dataset(synthetic_dataset)
    folds = data.folds(3)
    crossfit = open_runs([runs / f"fold{f}" for f in (2, 0, 1)], data, "cpu")
    assert crossfit.kind == "cross-fit"
    members = [open_run(runs / f"fold{f}", data, "cpu") for f in range(3)]
    batch = next(data.eval_batches("test", 64, crossfit.context))
    with torch.no_grad():
        got = crossfit.last(batch.inputs, batch.users)
        for row, user in enumerate(batch.users.tolist()):
            expected = members[folds[user]].last(batch.inputs[row : row + 1], batch.users[row : row + 1])
            torch.testing.assert_close(got[row], expected[0])
        with pytest.raises(DistillError, match="needs their folds"):
            crossfit.last(batch.inputs, None)


@pytest.mark.parametrize(
    "folds, message",
    [((0, 1), "fold\\(s\\) 2 missing"), ((0, 1, 1, 2), "fold 1 is given twice")],
)
def test_an_incomplete_cross_fit_is_a_one_line_error(runs, synthetic_dataset, tmp_path, folds, message):
    dirs = []
    for i, f in enumerate(folds):
        copy = tmp_path / f"f{i}"
        shutil.copytree(runs / f"fold{f}", copy)
        dirs += ["--run", copy]
    result = CliRunner().invoke(
        main, ["export-logits", *map(str, dirs), "--data", str(synthetic_dataset), "-o", str(tmp_path / "s")]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("spelling", ["./seed0", "seed0/", "link"])
def test_one_run_spelled_two_ways_is_refused(runs, synthetic_dataset, tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(runs)
    other = spelling
    if spelling == "link":
        other = str(tmp_path / "link")
        Path(other).symlink_to(runs / "seed0")
    args = ["evaluate", "--run", "seed0", "--run", other, "--run", "seed1", "--data", str(synthetic_dataset)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    also = f" and {other} are the same directory" if spelling == "link" else ""
    assert result.output.strip().endswith(f"a run is given twice: seed0{also}"), result.output


def test_fitted_weights_need_several_members(runs, synthetic_dataset):
    result = CliRunner().invoke(
        main, ["evaluate", "--run", str(runs / "seed0"), "--data", str(synthetic_dataset), "--weights", "fit"]
    )
    assert result.exit_code == 1 and "--weights fit weighs the members of an ensemble" in result.output


def test_ensemble_export_is_the_mixture_of_the_members_probabilities(runs, synthetic_dataset, tmp_path):
    members = [runs / "seed0", runs / "seed1", *(runs / f"fold{f}" for f in range(3))]
    ok("export-logits", *[a for m in members for a in ("--run", m)], "--data", synthetic_dataset,
       "-o", tmp_path / "mix", "--full", "--all-positions", "--device", "cpu")  # fmt: skip
    data = Dataset(synthetic_dataset)
    scores = read_scores(tmp_path / "mix", data)
    manifest = scores.manifest["teacher"]
    assert manifest["kind"] == "ensemble" and manifest["weights"] == "equal"
    assert [m["kind"] for m in manifest["members"]] == ["student", "student", "cross-fit"]
    assert manifest["members"][0]["run"] == "../../" + "/".join(members[0].parts[-2:])  # relative
    # by hand: the mean of the three members' softmaxes at one window's positions
    windows = data.train_windows(10, 10)
    history, users = torch.from_numpy(windows.histories[:4]), torch.from_numpy(windows.users[:4])
    singles = [open_run(runs / "seed0", data, "cpu"), open_run(runs / "seed1", data, "cpu")]
    crossfit = open_runs([runs / f"fold{f}" for f in range(3)], data, "cpu")
    with torch.no_grad():
        probs = sum(torch.softmax(m.dense(history, users)[..., 1:], -1) for m in [*singles, crossfit]) / 3
    scored = windows.position[:4] >= 0
    index = torch.from_numpy(data.offsets[windows.users[:4]][:, None] + windows.position[:4])[scored]
    rows = scores.lookup(index)
    items, logits = scores.fetch(rows)  # the full rows (no tail), log-probabilities up to a constant
    got = torch.zeros(len(rows), data.num_items)
    got.scatter_(1, items - 1, logits.softmax(-1))
    # float16 scores relative to the row's top: log p off by at most 2^-11 of its distance from the top
    torch.testing.assert_close(got, probs[torch.from_numpy(scored)], rtol=1e-2, atol=1e-6)


def test_fitted_weights_maximise_the_validation_likelihood(runs, synthetic_dataset):
    data = Dataset(synthetic_dataset)
    members = [open_run(runs / "seed0", data, "cpu"), open_run(runs / "seed1", data, "cpu")]
    w = fit_weights(members, data, 64)
    assert w.sum().item() == pytest.approx(1.0)

    def likelihood(a: float) -> float:
        total = 0.0
        for batch in data.eval_batches("valid", 64, 10):
            with torch.no_grad():
                p = [torch.softmax(m.last(batch.inputs, batch.users)[:, 1:], -1) for m in members]
            mix = a * p[0] + (1 - a) * p[1]
            total += mix.gather(1, batch.targets[:, None] - 1).log().sum().item()
        return total

    best = likelihood(w[0].item())
    for a in np.linspace(0.0, 1.0, 11):
        assert likelihood(float(a)) <= best + 1e-5 * abs(best)  # float32 sums


def test_evaluate_and_compare_take_an_ensemble(runs, synthetic_dataset):
    out = ok("evaluate", "--run", runs / "seed0", "--run", runs / "seed1", "--data", synthetic_dataset,
             "--weights", "fit", "--device", "cpu")  # fmt: skip
    assert "ndcg@10" in out and " + " in out
    out = ok("compare", runs / "seed0", f"{runs / 'seed0'},{runs / 'seed1'}", "--data", synthetic_dataset,
             "--device", "cpu")  # fmt: skip
    assert "paired per-user" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--folds", "3"], "takes both --folds K and --fold F"),
        (["--folds", "1", "--fold", "0"], "need --folds K >= 2"),
        (["--folds", "3", "--fold", "3"], "0 <= --fold F < K"),
    ],
)
@pytest.mark.parametrize("command", ["student-train", "teacher-train"])
def test_fold_options_are_checked_before_anything_is_written(tmp_path, command, args, message):
    extra = ["--sasrec", str(tmp_path / "s")] if command == "teacher-train" else []
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [command, "--data", str(tmp_path / "d"), *extra, "-o", str(out), *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_ensembles_and_cross_fits_score_a_block_of_items_as_the_whole_catalogue(runs, synthetic_dataset):
    """A cross-fit routes each user's rows to its member's block; an ensemble normalises each member
    over the whole catalogue first (logsumexp over blocks), then mixes a block: the same scores, ranks
    and top-k as the whole catalogue at once."""
    from distill.scoring import top_k_in_blocks

    data = Dataset(synthetic_dataset)
    crossfit = open_runs([runs / f"fold{f}" for f in range(3)], data, "cpu")
    mix = open_runs([runs / "seed0", runs / "seed1", *(runs / f"fold{f}" for f in range(3))], data, "cpu")
    windows = data.train_windows(10, 10, last=3)
    history, users = torch.from_numpy(windows.histories[:12]), torch.from_numpy(windows.users[:12])
    keep = torch.from_numpy(windows.position[:12] >= 0)  # (12, 10)
    n = data.num_items
    for scorer in (crossfit, mix):
        assert scorer.blocks is not None
        with torch.no_grad():
            last, dense = scorer.last(history, users), scorer.dense(history, users)[keep]
            opened_last = scorer.blocks.last(history, users, 7)
            opened_dense = scorer.blocks.dense(history, users, keep, 7)
            for start, stop in [(1, 8), (8, 15), (n - 3, n + 1), (1, n + 1)]:
                torch.testing.assert_close(opened_last(start, stop), last[:, start:stop])
                torch.testing.assert_close(opened_dense(start, stop), dense[:, start:stop])
            values, items, _ = top_k_in_blocks(opened_dense, n, 5, 7)
        top = dense[:, 1:].topk(5)
        assert torch.equal(items, top.indices + 1)
        torch.testing.assert_close(values, top.values)
        for split in ("valid", "test"):
            assert scorer.evaluate(data, split, 16, block=6) == scorer.evaluate(data, split, 16, block=0)


def test_fitted_weights_are_the_same_in_blocks(runs, synthetic_dataset, monkeypatch):
    import distill.scoring

    data = Dataset(synthetic_dataset)
    members = [open_run(runs / "seed0", data, "cpu"), open_run(runs / "seed1", data, "cpu")]
    full = fit_weights(members, data, 64)
    monkeypatch.setattr(distill.scoring, "SCORE_BUDGET", 64 * 6)  # past the budget: blocks
    monkeypatch.setattr(distill.scoring, "BLOCK_VALUES", 64 * 6)  # of 6 items
    torch.testing.assert_close(fit_weights(members, data, 64), full)


def test_a_fold_with_no_users_or_every_user_is_refused_before_anything_is_written(
    synthetic_dataset, tmp_path
):
    data = Dataset(synthetic_dataset)
    k = 4 * data.num_users
    empty = int(np.setdiff1d(np.arange(k), data.folds(k))[0])  # most of k folds hold nobody
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "student-train",
            "--data",
            str(synthetic_dataset),
            "-o",
            str(out),
            *TINY,
            "--folds",
            str(k),
            "--fold",
            str(empty),
        ],  # fmt: skip
    )
    assert result.exit_code == 1 and "Traceback" not in result.output and not out.exists()
    assert f"fold {empty} of {k} holds none of the {data.num_users:,} users" in result.output
    one = data.only(np.arange(data.num_users) == 0)  # a single user is in one fold of any K
    with pytest.raises(DistillError, match="holds every one of the 1 users"):
        one.cross_fit(2, int(one.folds(2)[0]))
