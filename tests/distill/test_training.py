"""Training plumbing: checkpoints, early stopping, run directories."""

from __future__ import annotations

import math

import pytest
import torch

from distill.errors import DistillError
from distill.io import read_json, write_json
from distill.runs import CONFIG, STATE, WEIGHTS, load_checkpoint, prepare_run_dir, save_checkpoint
from distill.training import EarlyStopping, rng_state, set_rng_state


def trained_linear() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_round_trip(tmp_path):
    model, opt = trained_linear()
    stopper = EarlyStopping(patience=3)
    stopper.step(0.25, epoch=2)
    config = {"kind": "student", "fingerprint": "abc", "config": {"hidden": 8, "ks": [5, 10]}}
    state = {
        "epoch": 4,
        "optimizer": opt.state_dict(),
        "early_stopping": stopper.state_dict(),
        "rng": rng_state(),
    }
    path = tmp_path / "run" / "best"
    path.parent.mkdir()
    save_checkpoint(path, model.state_dict(), config, state)
    assert sorted(p.name for p in path.iterdir()) == sorted([WEIGHTS, CONFIG, STATE])

    weights, loaded_config, loaded_state = load_checkpoint(path, with_state=True)
    assert weights.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(weights[name], tensor)
    assert loaded_config == config
    assert loaded_state["epoch"] == 4
    assert loaded_state["early_stopping"] == stopper.state_dict()

    fresh, fresh_opt = trained_linear()
    fresh.load_state_dict(weights)
    fresh_opt.load_state_dict(loaded_state["optimizer"])
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], exp_avg)

    set_rng_state(loaded_state["rng"])
    a = torch.rand(3)
    set_rng_state(state["rng"])
    assert torch.equal(a, torch.rand(3))

    _, _, no_state = load_checkpoint(path)
    assert no_state is None


def test_checkpoint_overwrite_is_whole(tmp_path):
    path = tmp_path / "last"
    save_checkpoint(path, {"w": torch.zeros(2)}, {"step": 1}, {"epoch": 1})
    save_checkpoint(path, {"w": torch.ones(2)}, {"step": 2})
    weights, config, _ = load_checkpoint(path)
    assert torch.equal(weights["w"], torch.ones(2)) and config == {"step": 2}
    assert not (path / STATE).exists()  # the old directory was replaced, not merged into
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(DistillError, match=f"no checkpoint at {tmp_path / 'nope'}"):
        load_checkpoint(tmp_path / "nope")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_safetensors(tmp_path, damage):
    path = tmp_path / "ckpt"
    save_checkpoint(path, {"w": torch.arange(100, dtype=torch.float32)}, {"kind": "student"})
    data = (path / WEIGHTS).read_bytes()
    broken = {
        "garbage": b"\x00\x01not a safetensors file" * 10,
        "truncated": data[: len(data) - 50],
        "empty": b"",
    }
    (path / WEIGHTS).write_bytes(broken[damage])
    with pytest.raises(DistillError, match="corrupt"):
        load_checkpoint(path)


def test_missing_or_corrupt_state_and_config(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, {"w": torch.zeros(1)}, {"kind": "student"})
    with pytest.raises(DistillError, match="no trainer state"):
        load_checkpoint(path, with_state=True)
    (path / STATE).write_bytes(b"garbage")
    with pytest.raises(DistillError, match="trainer state .* is corrupt"):
        load_checkpoint(path, with_state=True)
    (path / CONFIG).write_text("{not json")
    with pytest.raises(DistillError, match="not valid JSON"):
        load_checkpoint(path)


def test_json_helpers(tmp_path):
    write_json(tmp_path / "m.json", {"a": [1, 2]})
    assert read_json(tmp_path / "m.json", "metrics") == {"a": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    with pytest.raises(DistillError, match="metrics: .* does not exist"):
        read_json(tmp_path / "x.json", "metrics")


def test_early_stopping():
    stopper = EarlyStopping(patience=2)
    assert stopper.step(0.1, epoch=0) is True
    assert stopper.step(0.2, epoch=1) is True
    assert stopper.step(0.2, epoch=2) is False  # equal is not better
    assert not stopper.should_stop
    assert stopper.step(0.15, epoch=3) is False
    assert stopper.should_stop
    assert (stopper.best, stopper.best_epoch) == (0.2, 1)
    assert stopper.step(0.3, epoch=4) is True and not stopper.should_stop

    restored = EarlyStopping(patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert restored.state_dict() == stopper.state_dict() == {"best": 0.3, "best_epoch": 4, "bad_evals": 0}


def test_early_stopping_patience_zero_never_stops():
    stopper = EarlyStopping(patience=0)
    stopper.step(1.0, 0)
    for epoch in range(1, 20):
        stopper.step(0.0, epoch)
    assert not stopper.should_stop and stopper.best_epoch == 0


def test_early_stopping_nan_is_not_an_improvement():
    stopper = EarlyStopping(patience=1)
    assert stopper.step(math.nan, 0) is False
    assert stopper.should_stop and stopper.best_epoch == -1


def test_prepare_run_dir_new_and_empty(tmp_path):
    run = prepare_run_dir(tmp_path / "a" / "b", resume=False)
    assert run.is_dir()
    assert prepare_run_dir(run, resume=False) == run  # an empty directory is free to use


def test_prepare_run_dir_refuses_existing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"kind": "student"}')
    save_checkpoint(run / "last", {"w": torch.zeros(1)}, {}, {"epoch": 1})
    with pytest.raises(DistillError, match="already exists.*--resume.*--overwrite"):
        prepare_run_dir(run, resume=False)
    assert (run / "last" / STATE).exists()
    prepare_run_dir(run, resume=False, overwrite=True)
    assert list(run.iterdir()) == []


def test_prepare_run_dir_overwrite_never_deletes_foreign_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "thesis.tex").write_text("chapter 1")
    with pytest.raises(DistillError, match="not a run written by distill.*refusing"):
        prepare_run_dir(run, resume=False, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DistillError, match="exists and is not a directory"):
        prepare_run_dir(tmp_path / "file", resume=False, overwrite=True)
    assert (run / "thesis.tex").read_text() == "chapter 1" and (tmp_path / "file").read_text() == "x"


def test_a_run_without_checkpoint_starts_afresh(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"kind": "teacher-e4srec"}')  # killed before its first epoch ended
    (run / "tb").mkdir()
    (run / ".last.tmp-999999999").mkdir()  # a half-written checkpoint of a dead process
    assert prepare_run_dir(run, resume=False) == run
    assert list(run.iterdir()) == []
    assert "holds no checkpoint" in capsys.readouterr().err


def test_a_run_killed_between_its_first_best_and_last_checkpoints_starts_afresh(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run / "best", {"w": torch.zeros(1)}, {"kind": "student"})
    (run / "config.json").write_text('{"kind": "student"}')
    assert prepare_run_dir(run, resume=False) == run and list(run.iterdir()) == []


def test_a_finished_run_is_never_started_afresh_without_overwrite(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run / "best", {"w": torch.zeros(1)}, {"kind": "student"})
    (run / "config.json").write_text('{"kind": "student"}')
    (run / "metrics.json").write_text("{}")
    with pytest.raises(DistillError, match="already exists"):
        prepare_run_dir(run, resume=False)
    assert (run / "best").is_dir()


def test_prepare_run_dir_cleans_what_a_killed_run_left(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run / "last", {"w": torch.zeros(1)}, {}, {"epoch": 1})
    (run / ".last.tmp-999999999").mkdir()
    (run / ".config.json.tmp-999999999").write_text("{")
    assert prepare_run_dir(run, resume=True) == run
    assert sorted(p.name for p in run.iterdir()) == ["last"]


def test_prepare_run_dir_resume_rules(tmp_path):
    with pytest.raises(DistillError, match="cannot resume: run directory .* does not exist"):
        prepare_run_dir(tmp_path / "missing", resume=True)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(DistillError, match="cannot resume: run directory .* is empty"):
        prepare_run_dir(run, resume=True)
    (run / "config.json").write_text("{}")
    with pytest.raises(DistillError, match="cannot resume: .* no checkpoint"):
        prepare_run_dir(run, resume=True)
    save_checkpoint(run / "last", {"w": torch.zeros(1)}, {}, {"epoch": 0})
    assert prepare_run_dir(run, resume=True) == run
    assert (run / "config.json").exists() and (run / "last" / STATE).exists()


def test_progress_without_a_terminal_logs_heartbeat_lines(monkeypatch, capsys):
    from distill import io

    monkeypatch.setattr(io, "HEARTBEAT_SECONDS", 0.0)
    with io.progress(total=4, desc="export") as bar:  # pytest's stderr is not a terminal
        bar.set_postfix(loss="1.5")
        bar.update(1)
        bar.update(2)
        bar.update(1)  # the last update says nothing: the loop's own summary line follows
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and bar.n == 4
    assert lines[0].startswith("export: 1/4 (25%), ") and lines[0].endswith("min left; loss 1.5")
    assert lines[1].startswith("export: 3/4 (75%), ")


def test_a_stray_rank_variable_outside_a_job_still_writes(tmp_path, monkeypatch):
    from distill import io

    monkeypatch.setenv("RANK", "3")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    io.write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").is_file()
    monkeypatch.setenv("WORLD_SIZE", "4")  # rank 3 of a 4-process job: not the writer
    io.write_json(tmp_path / "b.json", {"x": 1})
    assert not (tmp_path / "b.json").exists()


def test_weights_are_written_with_the_permissions_of_every_other_file(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(1)}, {"kind": "student"})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "ckpt").iterdir()}
    assert modes == {"model.safetensors": 0o640, "config.json": 0o640}


def test_a_checkpoint_a_kill_left_renamed_aside_is_put_back(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run / "last", {"w": torch.zeros(1)}, {"kind": "student"}, {"epoch": 2})
    (run / "config.json").write_text('{"kind": "student"}')
    (run / "last").rename(run / ".last.old-999999999")  # killed between the two renames
    with pytest.raises(DistillError, match="already exists.*--resume"):
        prepare_run_dir(run, resume=False)  # not taken for a run without a checkpoint
    assert prepare_run_dir(run, resume=True) == run and (run / "last" / STATE).is_file()


def test_a_bad_loss_on_another_rank_stops_this_one_too(tmp_path, monkeypatch):
    from distill import training

    training.check_loss(torch.tensor(1.5), 1, 1, tmp_path)  # finite everywhere: nothing happens
    monkeypatch.setattr(training, "all_sum", lambda t: t + 1)  # as if one other rank had a NaN
    with pytest.raises(DistillError, match="training loss is not finite on another rank at epoch 2, step 7"):
        training.check_loss(torch.tensor(1.5), 2, 7, tmp_path)


def _finished_run(run):
    save_checkpoint(run / "last", {"w": torch.zeros(1)}, {}, {"epoch": 3})
    (run / "config.json").write_text('{"kind": "student"}')
    (run / "metrics.json").write_text('{"best_epoch": 3}')


@pytest.mark.parametrize("left", ["nothing", "empty", "config only"])
def test_a_run_a_killed_overwrite_set_aside_comes_back(tmp_path, left):
    """Killed after --overwrite set the old run aside and before the new one's first checkpoint: the
    next command on the run (here a refused --resume, or a plain rerun) finds the old run whole."""
    run, aside = tmp_path / "run", tmp_path / ".run.aside-999999999"
    _finished_run(aside)
    if left != "nothing":
        run.mkdir()
    if left == "config only":
        (run / "config.json").write_text('{"kind": "student"}')
    with pytest.raises(DistillError, match="already exists"):
        prepare_run_dir(run, resume=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (run / "metrics.json").read_text() == '{"best_epoch": 3}'


def test_a_killed_overwrite_that_reached_a_checkpoint_resumes(tmp_path):
    run, aside = tmp_path / "run", tmp_path / ".run.aside-999999999"
    _finished_run(aside)
    save_checkpoint(run / "last", {"w": torch.ones(1)}, {}, {"epoch": 1})  # the new run's first epoch
    assert prepare_run_dir(run, resume=True) == run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and not (run / "metrics.json").exists()


def test_a_reader_names_a_run_set_aside_and_leaves_it(tmp_path):
    from distill.runs import read_run_config

    run, aside = tmp_path / "run", tmp_path / ".run.aside-999999999"
    _finished_run(aside)
    run.mkdir()  # empty: the new run had not begun
    with pytest.raises(
        DistillError, match=f"holds no run: an --overwrite of it set the old one aside as {aside}"
    ):
        read_run_config(run)  # a reader says where the old run is, and leaves it for a writer
    assert aside.is_dir() and not any(run.iterdir())
