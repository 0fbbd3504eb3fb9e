"""Distillation losses: each registered soft target against its formula written out here, and invariants."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from distill.losses import KD, kd_loss

N = 12  # catalogue size; logits have N + 1 columns, column 0 is padding


def full_teacher(logits):
    """A teacher row holding every item, descending."""
    values, order = logits[:, 1:].sort(dim=-1, descending=True)
    return order + 1, values


def top_k_teacher(rows: int, k: int, seed: int = 0):
    """``rows`` rows of k distinct items with descending logits."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.stack([torch.randperm(N, generator=gen)[:k] + 1 for _ in range(rows)])  # (rows, k)
    values = (2 * torch.randn(rows, k, generator=gen)).sort(dim=-1, descending=True).values
    return items, values


def student_log_q(student, temperature):
    """The student's log-softmax over items 1..N at T, ``(M, N)``: column j is item j + 1."""
    return F.log_softmax(student[:, 1:] / temperature, dim=-1)


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_kl_matches_torch_kl_div_on_a_full_teacher(t):
    torch.manual_seed(0)
    student, teacher = torch.randn(5, N + 1), torch.randn(5, N + 1)
    items, values = full_teacher(teacher)
    p = F.softmax(teacher[:, 1:] / t, dim=-1)
    reference = t**2 * F.kl_div(student_log_q(student, t), p, reduction="batchmean")
    torch.testing.assert_close(kd_loss("kl", student, items, values, t), reference)


@pytest.mark.parametrize("t", [1.0, 0.5, 3.0])
def test_kl_matches_its_formula_on_a_top_k_teacher(t):
    torch.manual_seed(1)
    student = torch.randn(6, N + 1)
    items, values = top_k_teacher(6, 4)
    # T² · Σ_j p_j (log p_j - log q[item_j]), q the student's softmax over the whole catalogue.
    log_p = values / t - torch.logsumexp(values / t, dim=-1, keepdim=True)
    log_q = student_log_q(student, t).gather(1, items - 1)
    reference = (t**2 * (log_p.exp() * (log_p - log_q)).sum(-1)).mean()
    torch.testing.assert_close(kd_loss("kl", student, items, values, t), reference)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_rank_matches_its_formula(t):
    torch.manual_seed(2)
    student = torch.randn(6, N + 1)
    items, values = top_k_teacher(6, 5)
    w = torch.tensor([0.1 * r for r in range(5)]).neg().exp()  # exp(-r / 10)
    w = w / w.sum()
    reference = -(w * student_log_q(student, t).gather(1, items - 1)).sum(-1).mean()
    torch.testing.assert_close(kd_loss("rank", student, items, values, t), reference)


@pytest.mark.parametrize("name", sorted(KD))
def test_soft_targets_are_float32_distributions(name):
    _, values = top_k_teacher(4, 6)
    target = KD[name](values, 2.0)
    assert target.p.shape == values.shape and target.p.dtype == torch.float32
    assert (target.p >= 0).all()
    torch.testing.assert_close(target.p.sum(-1), torch.ones(4))
    assert target.offset.shape == (4,) and target.offset.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(KD))
@pytest.mark.parametrize("t", [1.0, 2.5])
def test_gradient_is_scaled_softmax_minus_soft_target(name, t):
    # What the fused pass uses: d KD / d s = (scale / T) · (softmax(s / T) - p on the teacher's items).
    torch.manual_seed(3)
    student = torch.randn(5, N + 1, requires_grad=True)
    items, values = top_k_teacher(5, 4)
    kd_loss(name, student, items, values, t).backward()
    target = KD[name](values, t)
    expected = torch.zeros(5, N + 1)
    expected[:, 1:] = student_log_q(student.detach(), t).exp()
    expected.scatter_add_(1, items, -target.p)
    torch.testing.assert_close(student.grad, expected * target.scale / t / 5)


def test_kl_is_zero_when_the_student_is_the_teacher():
    logits = torch.randn(4, N + 1)
    items, values = full_teacher(logits)
    assert kd_loss("kl", logits, items, values, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = logits.clone().requires_grad_()
    kd_loss("kl", student, items, values, temperature=2.0).backward()
    torch.testing.assert_close(student.grad, torch.zeros_like(student), atol=1e-6, rtol=0)


def test_top_k_teacher_penalises_student_mass_elsewhere():
    teacher_items = torch.tensor([[1, 2]])
    teacher_logits = torch.tensor([[2.0, 1.0]])
    focused = torch.full((1, N + 1), -5.0)
    focused[0, 1], focused[0, 2] = 2.0, 1.0
    spread = focused.clone()
    spread[0, 3:] = 1.5
    assert kd_loss("kl", focused, teacher_items, teacher_logits) < kd_loss(
        "kl", spread, teacher_items, teacher_logits
    )


def test_padding_column_never_takes_mass():
    items, values = torch.tensor([[1, 2]]), torch.tensor([[1.0, 0.0]])
    low = torch.zeros(1, N + 1)
    high = low.clone()
    high[0, 0] = 100.0  # a huge padding logit must not change anything
    for name in KD:
        torch.testing.assert_close(kd_loss(name, low, items, values), kd_loss(name, high, items, values))


def test_rank_prefers_the_teachers_order():
    items, values = torch.tensor([[3, 1, 2]]), torch.tensor([[3.0, 2.0, 1.0]])
    agree = torch.zeros(1, N + 1)
    agree[0, 3], agree[0, 1], agree[0, 2] = 3.0, 2.0, 1.0
    reverse = torch.zeros(1, N + 1)
    reverse[0, 3], reverse[0, 1], reverse[0, 2] = 1.0, 2.0, 3.0
    assert kd_loss("rank", agree, items, values) < kd_loss("rank", reverse, items, values)


@pytest.mark.parametrize("name", sorted(KD))
def test_float32_gradients_and_empty_batches(name):
    student = torch.randn(3, N + 1, dtype=torch.bfloat16, requires_grad=True)
    items, values = full_teacher(torch.randn(3, N + 1))
    loss = kd_loss(name, student, items[:, :4], values[:, :4].bfloat16(), 2.0)
    assert loss.dtype == torch.float32 and loss.item() > 0
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad.float()).all()
    empty = kd_loss(name, torch.zeros(0, N + 1), torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4))
    assert empty.item() == 0.0


def test_an_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match=re.escape(f"'nope'; expected one of {sorted(KD)}")):
        kd_loss("nope", torch.zeros(1, N + 1), torch.tensor([[1]]), torch.zeros(1, 1))


def test_every_registered_loss_is_a_choice_of_the_commands():
    """The commands' --kd choices are spelled for --help without torch; this keeps them the registry."""
    import typing

    from distill.losses import KD
    from pipeline.config import PipelineConfig
    from student.config import StudentTrainConfig

    student = typing.get_args(typing.get_type_hints(StudentTrainConfig)["kd"])
    (pipeline,) = typing.get_args(typing.get_type_hints(PipelineConfig)["kd"])[:1]
    assert set(student) == set(KD) == set(typing.get_args(pipeline))


# ------------------------------------------------------------------------------ kl with the teacher's tail
def tail_of_full(logits, items):
    """The log of the mass a full teacher row ``(M, N + 1)`` puts outside ``items`` ``(M, k)`` at T = 1."""
    log_p = F.log_softmax(logits[:, 1:], dim=-1)
    return log_p.scatter(1, items - 1, float("-inf")).logsumexp(-1)


def test_kl_with_a_tail_is_the_kl_of_the_coarsened_distributions_by_hand():
    # Four items; the teacher keeps items 1 and 2 and the tail holds items 3 and 4.
    t = [2.0, 1.0, 0.0, -1.0]
    s = [0.5, 0.0, 1.0, -0.5]
    p = [math.exp(x) / sum(map(math.exp, t)) for x in t]
    q = [math.exp(x) / sum(map(math.exp, s)) for x in s]
    coarse_p, coarse_q = [p[0], p[1], p[2] + p[3]], [q[0], q[1], q[2] + q[3]]
    by_hand = sum(a * math.log(a / b) for a, b in zip(coarse_p, coarse_q, strict=True))
    student = torch.tensor([[-100.0, *s]])  # column 0 is padding
    items = torch.tensor([[1, 2]])
    teacher = torch.tensor([[0.0, -1.0]])  # the stored form: relative to the row's largest
    tail = torch.tensor([math.log(p[2] + p[3])])
    assert kd_loss("kl", student, items, teacher, 1.0, tail).item() == pytest.approx(by_hand, rel=1e-5)
    # without the tail: the top 2 renormalised, another number
    assert kd_loss("kl", student, items, teacher, 1.0).item() != pytest.approx(by_hand, rel=1e-2)


def test_kl_with_a_zero_tail_over_the_whole_catalogue_is_the_full_kl():
    torch.manual_seed(4)
    student, teacher = torch.randn(5, N + 1), torch.randn(5, N + 1)
    items, values = full_teacher(teacher)
    none = torch.full((5,), float("-inf"))  # k = N: nothing outside
    reference = F.kl_div(student_log_q(student, 1.0), F.softmax(teacher[:, 1:], -1), reduction="batchmean")
    assert torch.equal(
        kd_loss("kl", student, items, values, 1.0, none), kd_loss("kl", student, items, values)
    )
    torch.testing.assert_close(kd_loss("kl", student, items, values, 1.0, none), reference)
    grad = torch.zeros(5, N + 1, requires_grad=True)
    kd_loss("kl", student + grad, items, values, 1.0, none).backward()
    assert torch.isfinite(grad.grad).all()  # the empty bucket's log is floored, not log(0)


@pytest.mark.parametrize("k", [1, 4, N - 1])
def test_kl_with_a_tail_lies_between_zero_and_the_full_kl(k):
    torch.manual_seed(5)
    student, teacher = torch.randn(50, N + 1), 2 * torch.randn(50, N + 1)
    items, values = full_teacher(teacher)
    items, values = items[:, :k], values[:, :k]
    tail = tail_of_full(teacher, items)
    full_kl = F.kl_div(student_log_q(student, 1.0), F.softmax(teacher[:, 1:], -1), reduction="none").sum(-1)
    for row in range(50):
        coarse = kd_loss(
            "kl",
            student[row : row + 1],
            items[row : row + 1],
            values[row : row + 1],
            1.0,
            tail[row : row + 1],
        )
        assert -1e-6 <= coarse.item() <= full_kl[row].item() + 1e-6
    # zero where the student is the teacher
    assert kd_loss("kl", teacher, items, values, 1.0, tail).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_ignores_the_tail_away_from_t_1():
    torch.manual_seed(6)
    student = torch.randn(6, N + 1)
    items, values = top_k_teacher(6, 4)
    tail = torch.log(torch.rand(6))
    for t in (0.5, 2.0):
        assert torch.equal(
            kd_loss("kl", student, items, values, t, tail), kd_loss("kl", student, items, values, t)
        )
    assert KD["kl"](values, 2.0, tail).rest is None and KD["kl"](values, 1.0, tail).rest is not None
    assert KD["rank"](values, 1.0, tail).rest is None  # an order of the top k has no bucket


def test_kl_with_a_tail_has_gradient_softmax_minus_the_completed_target():
    # d KD / d s = softmax(s) - p̃: p on the teacher's items, rest · q_i / q_rest elsewhere.
    torch.manual_seed(7)
    student = torch.randn(5, N + 1, requires_grad=True)
    items, values = top_k_teacher(5, 4)
    tail = torch.log(0.1 + 0.8 * torch.rand(5))
    kd_loss("kl", student, items, values, 1.0, tail).backward()
    target = KD["kl"](values, 1.0, tail)
    torch.testing.assert_close(target.p.sum(-1) + target.rest, torch.ones(5))
    q = student_log_q(student.detach(), 1.0).exp()  # (5, N)
    outside = torch.ones_like(q).scatter(1, items - 1, 0.0)
    completed = (q * outside) * (target.rest / (q * outside).sum(-1))[:, None]
    completed.scatter_(1, items - 1, target.p)
    expected = torch.zeros(5, N + 1)
    expected[:, 1:] = q - completed
    torch.testing.assert_close(student.grad, expected / 5)
