"""student-train as a two-process job: the same run as one process, up to float summation order."""

from __future__ import annotations

from tests.distributed import assert_two_ranks_match_one_process


def test_two_ranks_train_the_same_model_as_one_process(synthetic_dataset, tmp_path):
    # No dropout: every rank's rows then give exactly the gradients one process would, averaged by DDP.
    args = ["student-train", "--data", synthetic_dataset, "--epochs", 3, "--max-len", 20, "--hidden", 16]
    args += ["--batch-size", 16, "--dropout", 0, "--device", "cpu"]
    assert_two_ranks_match_one_process(args, tmp_path)
