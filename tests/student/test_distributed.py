"""student-train as a two-process job: the same run as one process, up to float summation order."""

from __future__ import annotations

from tests.distributed import assert_two_ranks_match_one_process


def test_two_ranks_train_the_same_model_as_one_process(synthetic_dataset, tmp_path):
    # No dropout: every rank's rows then give exactly the gradients one process would, averaged by DDP.
    args = ["student-train", "--data", synthetic_dataset, "--epochs", 3, "--max-len", 20, "--hidden", 16]
    args += ["--batch-size", 16, "--dropout", 0, "--device", "cpu"]
    assert_two_ranks_match_one_process(args, tmp_path)


def test_two_ranks_with_a_hint_run_train_the_same_model_as_one_process(synthetic_dataset, tmp_path):
    # The distillation experts live outside the DDP model: their gradients are averaged by hand.
    from click.testing import CliRunner

    from cli import main

    wide = tmp_path / "wide"
    base = ["student-train", "--data", synthetic_dataset, "--max-len", 20, "--device", "cpu"]
    teacher = [*map(str, base), "--epochs", "1", "--hidden", "32", "--output", str(wide)]
    result = CliRunner().invoke(main, teacher)
    assert result.exit_code == 0, result.output
    args = [*base, "--epochs", 2, "--hidden", 16, "--batch-size", 16, "--dropout", 0]
    assert_two_ranks_match_one_process([*args, "--hint-run", wide, "--hint-experts", 2], tmp_path)
