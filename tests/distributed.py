"""Running a ``distill`` command as a two-process ``torchrun`` job (gloo on CPU), for the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args: object, ranks: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node RANKS -m cli -- ARGS``; fails the test on a non-zero exit.

    The ``--`` keeps torchrun from reading the command's options as its own (``--run`` would be ambiguous).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*cmd, "-m", "cli", "--", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def assert_two_ranks_match_one_process(args: list, tmp_path: Path) -> tuple[Path, Path]:
    """Run a training command once in this process and once as a two-rank job; the losses of every
    epoch and the final metrics must agree (up to float summation order). Returns both run dirs."""
    one, two = tmp_path / "one", tmp_path / "two"
    single = CliRunner().invoke(main, [*map(str, args), "--output", str(one)])
    assert single.exit_code == 0, single.output
    torchrun(*args, "--output", two)
    first, second = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    for a, b in zip(first["history"], second["history"], strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * a["loss"], (a, b)
        assert abs(a["valid_ndcg@10"] - b["valid_ndcg@10"]) < 1e-3, (a, b)
    assert first["best_epoch"] == second["best_epoch"]
    for split in ("valid", "test"):
        for metric, value in first[split].items():
            assert abs(value - second[split][metric]) < 1e-3, (split, metric)
    return one, two
