"""The ``distill`` command line through CliRunner: prepare end to end, one-line errors, torch-free --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str, exit_code: int = 1) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_prepare_synthetic_end_to_end(tmp_path):
    out = tmp_path / "data"
    result = invoke("prepare", "--synthetic", "--num-users", 30, "--num-items", 20, "--seed", 3, "-o", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert result.output.splitlines()[0] == f"wrote {out}"
    assert f"users {meta['num_users']}  items {meta['num_items']}" in result.output
    assert f"fingerprint {meta['fingerprint']}" in result.output
    assert meta["config"]["seed"] == 3 and meta["num_users"] == 30


def test_prepare_input_file(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("1 1\n1 2\n1 3\n2 3\n2 2\n2 1\n")
    result = invoke("prepare", data, "-o", tmp_path / "out", "--format", "sasrec")
    assert result.exit_code == 0, result.output
    assert "users 2  items 3  interactions 6" in result.output


def test_prepare_layers_config_set_and_options(tmp_path):
    config = tmp_path / "prepare.toml"
    out = tmp_path / "data"
    config.write_text(
        f'synthetic = true\noutput = "{out}"\nnum_users = 25\nnum_items = 15\nseed = 1\noverwrite = true\n'
    )
    out.mkdir()
    result = invoke("prepare", "--config", config, "--set", "seed=2", "--set", "num_items=12", "--seed", 4)
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "meta.json").read_text())["config"]
    # options beat --set beats the file; a flag not given (--overwrite) leaves the file's value alone
    assert (cfg["num_users"], cfg["num_items"], cfg["seed"], cfg["overwrite"]) == (25, 12, 4, True)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["{tmp}/missing.txt"], ["input file", "missing.txt", "does not exist"]),
        (["{tmp}/bad.txt", "--format", "sasrec"], ["bad.txt, line 3", "expected 'user item'"]),
        (["{tmp}/bad.txt", "--set", "min_usr=3"], ["unknown config key 'min_usr'"]),
        (["{tmp}/bad.txt", "--min-user-interactions", "2"], ["min_user_interactions must be at least 3"]),
        ([], ["no input"]),
        (["--synthetic", "--set", "seed=abc"], ["config key 'seed'", "expected an integer"]),
        (["--synthetic", "--config", "{tmp}/none.toml"], ["none.toml does not exist"]),
    ],
)
def test_prepare_errors_are_one_line(tmp_path, args, fragments):
    (tmp_path / "bad.txt").write_text("1 1\n1 2\n1 2 3\n")
    args = [a.format(tmp=tmp_path) for a in args]
    result = invoke("prepare", *args, "-o", tmp_path / "out")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_existing_output(tmp_path):
    out = tmp_path / "out"
    assert invoke("prepare", "--synthetic", "--num-users", 10, "-o", out).exit_code == 0
    assert_one_line_error(
        invoke("prepare", "--synthetic", "--num-users", 10, "-o", out), "already exists", "--overwrite"
    )
    assert invoke("prepare", "--synthetic", "--num-users", 12, "-o", out, "--overwrite").exit_code == 0
    assert json.loads((out / "meta.json").read_text())["num_users"] == 12


def test_prepare_unknown_format_is_a_usage_error(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("1 1\n")
    result = invoke("prepare", data, "-o", tmp_path / "out", "--format", "xlsx")
    assert result.exit_code == 2
    assert "Invalid value for '--format'" in result.output and "Traceback" not in result.output


def test_evaluate_errors_are_one_line(tmp_path, synthetic_dataset):
    assert_one_line_error(
        invoke("evaluate", "--run", tmp_path / "nope", "--data", synthetic_dataset), "nope does not exist"
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": "oracle"}))
    assert_one_line_error(
        invoke("evaluate", "--run", run, "--data", tmp_path / "nodata"), "nodata", "does not exist"
    )
    assert_one_line_error(
        invoke("evaluate", "--run", run, "--data", synthetic_dataset), "unknown run kind 'oracle'"
    )


def test_help_does_not_import_torch():
    code = (
        "import sys, cli\n"
        "from click.testing import CliRunner\n"
        "for args in (['--help'], ['prepare', '--help'], ['evaluate', '--help']):\n"
        "    result = CliRunner().invoke(cli.main, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "assert 'torch' not in sys.modules, 'distill --help imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("command", ["prepare", "pipeline", "evaluate"])
def test_single_process_commands_refuse_to_run_under_torchrun(command, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = {
        "prepare": ["prepare", "--synthetic", "-o", tmp_path / "data"],
        "pipeline": ["pipeline", "-o", tmp_path / "out"],
        "evaluate": ["evaluate", "--run", tmp_path / "run", "--data", tmp_path / "data"],
    }[command]
    assert_one_line_error(invoke(*args), f"`distill {command}` runs in one process")
    assert not list(tmp_path.iterdir())


def test_preparing_data_does_not_import_torch(tmp_path):
    code = (
        "import sys, cli\n"
        "from click.testing import CliRunner\n"
        f"result = CliRunner().invoke(cli.main, ['prepare', '--synthetic', '--num-users', '50', "
        f"'--num-items', '30', '-o', {str(tmp_path / 'data')!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'torch' not in sys.modules, 'distill prepare imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "args",
    [["recommend", "--run", "a", "--run", "b", "--history", "1"], ["serve", "--run=a", "--run", "b"]],
)
def test_a_single_run_given_twice_is_refused(args):
    """click keeps the last of repeated values: ``recommend --run A --run B`` silently dropped A."""
    result = invoke(*args)
    assert result.exit_code == 2 and f"Error: --run given 2 times: {args[0]} takes one run" in result.output
    assert "Traceback" not in result.output


def test_a_repeated_option_of_one_value_still_overrides(tmp_path):
    """``$COMMON --seed 5``: the last value wins, as click has it (the override idiom)."""
    out = tmp_path / "data"
    result = invoke(
        "prepare", "--synthetic", "--num-users", "5", "--num-users", "30", "--num-items", "20", "-o", out
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "meta.json").read_text())["num_users"] == 30


def test_export_refuses_nonsense_counts_that_a_flag_overrides(tmp_path, synthetic_dataset):
    for args, message in (
        (["--full", "--top-k", "-5"], "top_k must be at least 1, got -5"),
        (["--all-positions", "--positions", "-3"], "positions must be at least 1, got -3"),
    ):
        out = tmp_path / "scores"
        result = invoke("export-logits", "--run", tmp_path, "--data", synthetic_dataset, "-o", out, *args)
        assert_one_line_error(result, message)
        assert not out.exists()
