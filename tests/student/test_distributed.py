"""student-train as a two-process job: the same run as one process, up to float summation order."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli import main
from tests.distributed import torchrun


def test_two_ranks_train_the_same_model_as_one_process(synthetic_dataset, tmp_path):
    # No dropout: every rank's rows then give exactly the gradients one process would, averaged by DDP.
    args = ["student-train", "--data", synthetic_dataset, "--epochs", 3, "--max-len", 20, "--hidden", 16]
    args += ["--batch-size", 16, "--dropout", 0, "--device", "cpu"]
    single = CliRunner().invoke(main, [*map(str, args), "--output", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    torchrun(*args, "--output", tmp_path / "two")

    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for a, b in zip(one["history"], two["history"], strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * a["loss"]
        assert abs(a["valid_ndcg@10"] - b["valid_ndcg@10"]) < 1e-3
    assert one["best_epoch"] == two["best_epoch"]
    for split in ("valid", "test"):
        for metric, value in one[split].items():
            assert abs(value - two[split][metric]) < 1e-3, (split, metric)
