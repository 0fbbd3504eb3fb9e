"""Representation distillation (``--hint-run``): the distillation experts and the training loop."""

import json

import torch
from click.testing import CliRunner

from cli import main
from student.hint import DistillationExperts

from .test_train import TINY, dataset, train  # noqa: F401  (the module-scoped synthetic dataset)


def test_the_loss_is_the_squared_distance_of_the_selected_mix_per_teacher_dimension():
    torch.manual_seed(0)
    experts = DistillationExperts(student_dim=8, teacher_dim=12, experts=3)
    student, teacher = torch.randn(5, 8, requires_grad=True), torch.randn(5, 12, requires_grad=True)
    loss = experts(student, teacher)
    weights = torch.softmax(experts.select(teacher), -1)  # (5, 3)
    mix = sum(weights[:, e, None] * expert(student) for e, expert in enumerate(experts.experts))
    torch.testing.assert_close(loss, ((mix - teacher) ** 2).sum(-1).mean() / 12)
    experts(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None  # the teacher is a fixed target


def test_a_single_expert_that_reproduces_the_teacher_has_zero_loss():
    one = DistillationExperts(8, 12, experts=1)
    student = torch.randn(5, 8)
    with torch.no_grad():
        teacher = one.experts[0](student)
    assert one(student, teacher).item() == 0.0


def test_no_positions_give_zero_loss_with_a_gradient():
    experts = DistillationExperts(4, 6, experts=2)
    student = torch.zeros(0, 4, requires_grad=True)
    loss = experts(student, torch.zeros(0, 6))
    loss.backward()
    assert loss.item() == 0.0 and student.grad.shape == (0, 4)
    assert all(p.grad is not None and not p.grad.any() for p in experts.parameters())


def test_a_hint_run_trains_resumes_exactly_and_is_recorded(dataset, tmp_path):  # noqa: F811
    runner = CliRunner()
    train(runner, dataset, tmp_path / "wide", "--epochs", "2", "--hidden", "32")
    hint = ["--hint-run", str(tmp_path / "wide"), "--hint-experts", "2"]
    full = train(runner, dataset, tmp_path / "full", "--epochs", "4", *hint)
    losses = [h["hint_loss"] for h in full["history"]]
    assert losses[-1] < losses[0]  # the student's states move towards the teacher's
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert config["hint_run"]["hidden"] == 32 and config["hint_run"]["experts"] == 2
    train(runner, dataset, tmp_path / "cut", "--epochs", "2", *hint)
    resumed = train(runner, dataset, tmp_path / "cut", "--epochs", "4", "--resume", *hint)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    assert resumed["test"] == full["test"]
    cut = ["student-train", "--data", str(dataset), "--output", str(tmp_path / "cut"), *TINY]
    result = runner.invoke(main, [*cut, "--epochs", "5", "--resume"])  # without its hint run
    assert result.exit_code != 0 and "the hint_run in" in result.output
    plain = train(runner, dataset, tmp_path / "plain", "--epochs", "1")
    assert "hint_loss" not in plain["history"][0]


def test_a_hint_run_shorter_than_the_student_is_a_one_line_error(dataset, tmp_path):  # noqa: F811
    runner = CliRunner()
    train(runner, dataset, tmp_path / "short", "--epochs", "1", "--max-len", "10")
    args = ["student-train", "--data", str(dataset), "--output", str(tmp_path / "s"), "--device", "cpu"]
    result = runner.invoke(main, [*args, "--max-len", "20", "--hint-run", str(tmp_path / "short")])
    assert result.exit_code != 0
    assert "reads 10 items, fewer than the student's --max-len 20" in result.output
    assert not (tmp_path / "s").exists()
    result = runner.invoke(main, [*args, "--hint-run", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "missing" in result.output and not (tmp_path / "s").exists()
