"""``distill compare``: runs side by side with paired per-user differences and a bootstrap interval."""

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from distill.config import PrepareConfig
from distill.prepare import run as prepare
from pipeline.compare import paired_difference, run
from pipeline.config import CompareConfig

TINY = ["--max-len", "20", "--hidden", "16", "--batch-size", "64", "--device", "cpu", "--epochs", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    prepare(PrepareConfig(output=str(root / "data"), synthetic=True, num_users=120, num_items=50, seed=3))
    for name, seed in (("a", "0"), ("b", "1")):
        args = ["student-train", "--data", str(root / "data"), "--output", str(root / name), "--seed", seed]
        result = CliRunner().invoke(main, [*args, *TINY])
        assert result.exit_code == 0, result.output
    shutil.copytree(root / "a", root / "a-copy")
    return root


def test_identical_runs_differ_by_zero_and_the_interval_contains_it(runs):
    cfg = CompareConfig(runs=(str(runs / "a"), str(runs / "a-copy")), data=str(runs / "data"), device="cpu")
    results = run(cfg)
    paired = results["paired"][str(runs / "a-copy")]
    assert paired["mean"] == 0 and paired["low"] <= 0 <= paired["high"]
    assert paired["wins"] == paired["losses"] == 0 and paired["users"] == 120
    assert results["metrics"][str(runs / "a")] == results["metrics"][str(runs / "a-copy")]


def test_compare_prints_the_table_and_the_paired_line(runs):
    args = ["compare", str(runs / "a"), str(runs / "b"), "--data", str(runs / "data"), "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--samples", "200"])
    assert result.exit_code == 0, result.output
    assert "[0]" in result.output and "[1]" in result.output and "bootstrap 95% interval" in result.output
    once = run(CompareConfig(runs=(str(runs / "a"), str(runs / "b")), data=str(runs / "data"), device="cpu"))
    again = run(CompareConfig(runs=(str(runs / "a"), str(runs / "b")), data=str(runs / "data"), device="cpu"))
    assert once["paired"] == again["paired"]  # seeded
    b = once["paired"][str(runs / "b")]
    metrics = once["metrics"]
    assert b["mean"] == pytest.approx(
        metrics[str(runs / "b")]["ndcg@10"] - metrics[str(runs / "a")]["ndcg@10"]
    )


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_users():
    rng = np.random.default_rng(0)
    small = paired_difference(rng.normal(0.1, 1, 100), 2000, 0)
    large = paired_difference(rng.normal(0.1, 1, 10000), 2000, 0)
    assert small["low"] < small["mean"] < small["high"] and large["low"] < large["mean"] < large["high"]
    assert large["high"] - large["low"] < (small["high"] - small["low"]) / 5
    assert large["low"] > 0  # 0.1 with 10k users is told apart from 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["only-one"], "at least two runs"),
        (["a", "b", "--metric", "auc"], "metric must be"),
        (["a", "b", "a"], "a is given twice: compare each set once"),
        (["a", "./a/"], "./a/ and a are the same runs: compare each set once"),
        (["a,b", "b,a"], "b,a and a,b are the same runs"),
        (["a", "b", "--weights", "fit"], "--weights fit weighs the members of an ensemble; no compared set"),
    ],
)
def test_bad_compare_input_is_a_one_line_error(runs, args, message, monkeypatch):
    monkeypatch.chdir(runs)
    result = CliRunner().invoke(main, ["compare", *args, "--data", str(runs / "data"), "--device", "cpu"])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_fitted_weights_weigh_the_ensembles_and_leave_single_runs_as_they_are(runs, monkeypatch):
    monkeypatch.chdir(runs)
    fitted = run(CompareConfig(runs=("a", "a,b"), data="data", device="cpu", weights="fit", samples=200))
    plain = run(CompareConfig(runs=("a", "b"), data="data", device="cpu", samples=200))
    assert fitted["metrics"]["a"] == plain["metrics"]["a"]  # one run: no weights to fit
    result = CliRunner().invoke(
        main, ["compare", "a,b", "b", "--data", "data", "--weights", "fit", "--device", "cpu"]
    )
    assert result.exit_code == 0 and "ensemble weights fitted on validation" in result.output, result.output
