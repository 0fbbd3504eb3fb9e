"""A real ``distill student-train`` process killed (SIGKILL) at a random moment, then started again
(``--resume`` when it left a checkpoint, a plain rerun when it did not) ends with exactly the metrics
of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--max-len", "20", "--hidden", "16", "--batch-size", "32", "--epochs", "4", "--device", "cpu"]


def command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cli", "student-train", "--data", str(data), "-o", str(out), *ARGS, *extra]


@pytest.mark.slow
def test_killed_at_a_random_moment_then_resumed_equals_uninterrupted(synthetic_dataset, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The uninterrupted run is a process like the others: in this one (pytest's), another thread count
    # can round a batch's summed loss differently in its last bit (the gradients agree).
    result = subprocess.run(
        command(synthetic_dataset, tmp_path / "full"), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())

    run = tmp_path / "cut"
    # A moment within the training (epochs and validations, after the imports); drawn again, sooner, if
    # the run was already done by then (a loaded machine makes the two processes' speeds differ).
    span = 1.5 * sum(h["seconds"] for h in full["history"])
    for _ in range(4):
        proc = subprocess.Popen(
            command(synthetic_dataset, run),
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        while not (run / "config.json").exists() and proc.poll() is None:  # past the imports: training
            time.sleep(0.01)
        delay = random.uniform(0, span)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (run / "metrics.json").exists():
            break
        shutil.rmtree(run)
        span /= 4
    assert not (run / "metrics.json").exists(), "every run ended before its kill"

    # A kill between the two renames of a checkpoint leaves it as .last.old-PID, which the rerun puts back.
    saved = (run / "last" / "state.pt").exists() or any(
        p.name.startswith(".last.old-") for p in run.iterdir()
    )
    resume = ["--resume"] if saved else []
    again = subprocess.run(
        command(synthetic_dataset, run, *resume),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, f"killed after {delay:.2f}s; rerun {resume}: {again.stderr[-2000:]}"
    resumed = json.loads((run / "metrics.json").read_text())
    for key in ("best_epoch", "valid", "test"):
        assert resumed[key] == full[key], f"killed {delay:.2f}s into training ({key})"
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
