"""student-train as a two-process job: the same run as one process, up to float summation order."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.distributed import ROOT, assert_two_ranks_match_one_process


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


JOB = """
import os, sys
import torch, torch.distributed as dist
sys.path.insert(0, {root!r})
from distill.dist import setup_device, succeeded
setup_device("cpu")
if dist.get_rank() == int(os.environ["FAILING_RANK"]):
    raise SystemExit(3)  # this rank fails; the other waits for it in a collective
dist.all_reduce(torch.ones(1))
succeeded()
"""


def test_a_rank_that_fails_ends_the_job_instead_of_leaving_the_others_waiting(tmp_path):
    job = tmp_path / "job.py"
    job.write_text(JOB.format(root=str(ROOT)))
    for failing, expected in ((1, 1), (0, 1), (-1, 0)):  # rank 1 fails, rank 0 fails, none fails
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(job)],
            env={**os.environ, "OMP_NUM_THREADS": "1", "FAILING_RANK": str(failing)},
            capture_output=True,
            text=True,
            timeout=100,  # a rank left waiting in its collective or at the exit barrier would hang here
        )
        assert (result.returncode != 0) == bool(expected), (failing, result.stderr[-2000:])
