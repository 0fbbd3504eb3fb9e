"""Distillation losses: invariants and references."""

import pytest
import torch
import torch.nn.functional as F

from distill.losses import KD, kl, rank

N = 12  # catalogue size; logits have N + 1 columns, column 0 is padding


def full_teacher(logits):
    """A teacher row holding every item, descending."""
    values, order = logits[:, 1:].sort(dim=-1, descending=True)
    return order + 1, values


def test_kl_is_zero_when_the_student_is_the_teacher():
    logits = torch.randn(4, N + 1)
    items, values = full_teacher(logits)
    assert kl(logits, items, values, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_matches_a_reference_and_scales_with_t_squared():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, N + 1), torch.randn(5, N + 1)
    items, values = full_teacher(teacher)
    for t in (1.0, 3.0):
        p = F.softmax(teacher[:, 1:] / t, dim=-1)
        log_q = F.log_softmax(student[:, 1:] / t, dim=-1)
        reference = t**2 * F.kl_div(log_q, p, reduction="batchmean")
        torch.testing.assert_close(kl(student, items, values, t), reference)


def test_top_k_teacher_penalises_student_mass_elsewhere():
    teacher_items = torch.tensor([[1, 2]])
    teacher_logits = torch.tensor([[2.0, 1.0]])
    focused = torch.full((1, N + 1), -5.0)
    focused[0, 1], focused[0, 2] = 2.0, 1.0
    spread = focused.clone()
    spread[0, 3:] = 1.5
    assert kl(focused, teacher_items, teacher_logits) < kl(spread, teacher_items, teacher_logits)


def test_padding_column_never_takes_mass():
    items, values = torch.tensor([[1, 2]]), torch.tensor([[1.0, 0.0]])
    low = torch.zeros(1, N + 1)
    high = low.clone()
    high[0, 0] = 100.0  # a huge padding logit must not change anything
    for loss in KD.values():
        torch.testing.assert_close(loss(low, items, values), loss(high, items, values))


def test_rank_prefers_the_teachers_order():
    items, values = torch.tensor([[3, 1, 2]]), torch.tensor([[3.0, 2.0, 1.0]])
    agree = torch.zeros(1, N + 1)
    agree[0, 3], agree[0, 1], agree[0, 2] = 3.0, 2.0, 1.0
    reverse = torch.zeros(1, N + 1)
    reverse[0, 3], reverse[0, 1], reverse[0, 2] = 1.0, 2.0, 3.0
    assert rank(agree, items, values) < rank(reverse, items, values)


@pytest.mark.parametrize("name", ["kl", "rank"])
def test_float32_gradients_and_empty_batches(name):
    loss_fn = KD[name]
    student = torch.randn(3, N + 1, dtype=torch.bfloat16, requires_grad=True)
    items, values = full_teacher(torch.randn(3, N + 1))
    loss = loss_fn(student, items[:, :4], values[:, :4].bfloat16(), 2.0)
    assert loss.dtype == torch.float32 and loss.item() > 0
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad.float()).all()
    empty = loss_fn(torch.zeros(0, N + 1), torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4))
    assert empty.item() == 0.0
