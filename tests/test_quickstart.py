"""The README's main job, examples/quickstart.sh, runs end to end (shrunk to test size)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_quickstart_runs_the_pipeline(tmp_path):
    env = {**os.environ, "QUICKSTART_USERS": "60", "QUICKSTART_EPOCHS": "2"}
    # the console script of this interpreter's environment
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "quickstart.sh"), str(tmp_path / "qs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ndcg@10" in result.stdout
    for run in ("sasrec", "teacher"):
        metrics = json.loads((tmp_path / "qs" / run / "metrics.json").read_text())
        assert 0 <= metrics["test"]["ndcg@10"] <= 1
