"""Row updates of the item table (``--item-updates rows``): Adam's arithmetic on the rows a batch reads,
with the steps a row missed replayed when it is next read or caught up."""

from __future__ import annotations

import copy

import pytest
import torch

from student.config import SASRecConfig
from student.losses import NegativeSampler, sampled_loss
from student.optim import Optimizers, RowAdam, student_optimizer
from student.sasrec import SASRec


def sparse_grad(rows: list[int], width: int, generator: torch.Generator, size: int) -> torch.Tensor:
    """A sparse ``(size, width)`` gradient at ``rows``, uncoalesced (a row may come twice)."""
    values = torch.randn(len(rows), width, generator=generator)
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, (size, width))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_on_gradients_of_every_row_it_is_adam(weight_decay):
    g = torch.Generator().manual_seed(0)
    start = torch.randn(6, 3, generator=g)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    row_adam = RowAdam([ours], lr=0.01, betas=(0.9, 0.98), weight_decay=weight_decay)
    adam = torch.optim.Adam([theirs], lr=0.01, betas=(0.9, 0.98), weight_decay=weight_decay)
    for _ in range(5):
        grad = sparse_grad([5, 0, 1, 2, 3, 4, 2, 0], 3, g, 6)  # every row, two of them twice
        ours.grad, theirs.grad = grad, grad.to_dense()
        row_adam.step()
        adam.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(row_adam.state[ours]["exp_avg_sq"], adam.state[theirs]["exp_avg_sq"])


def test_rows_outside_the_gradient_wait_until_read_or_caught_up():
    """A step touches only the rows of its gradient; the others move when read or caught up."""
    g = torch.Generator().manual_seed(1)
    p = torch.randn(5, 2, generator=g).requires_grad_()
    optimizer = RowAdam([p], lr=0.1)
    p.grad = sparse_grad([0, 1, 2, 3, 4], 2, g, 5)
    optimizer.step()
    before = p.detach().clone(), optimizer.state[p]["exp_avg"].clone()
    p.grad = sparse_grad([1, 3], 2, g, 5)
    optimizer.step()
    for untouched in (0, 2, 4):
        assert torch.equal(p[untouched], before[0][untouched])
        assert torch.equal(optimizer.state[p]["exp_avg"][untouched], before[1][untouched])
    assert not torch.equal(p[1], before[0][1])
    optimizer.catch_up()
    assert not torch.equal(p[0], before[0][0])
    assert optimizer.state[p]["last"].tolist() == [2] * 5


@pytest.mark.parametrize("betas", [(0.9, 0.98), (0.9, 0.999), (0.95, 0.9)])  # the last: β1/√β2 > 1
def test_replayed_steps_equal_dense_adam(betas):
    """Rows read at random, most skipping many steps: each row read equals dense Adam's row at every
    step, and after catch_up the whole table and both moments do (rows with zero gradient in Adam)."""
    g = torch.Generator().manual_seed(3)
    start = torch.randn(40, 3, generator=g)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    row_adam = RowAdam([ours], lr=0.01, betas=betas)
    adam = torch.optim.Adam([theirs], lr=0.01, betas=betas)
    for step in range(200):
        rows = torch.randint(0, 40, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)
        if step == 0:
            rows = torch.arange(40)  # every row gets moments, then most go unread for a while
        grad = torch.sparse_coo_tensor(rows[None], torch.randn(len(rows), 3, generator=g), (40, 3))
        ours.grad, theirs.grad = grad, grad.to_dense()
        row_adam.step()
        adam.step()
        read = rows.unique()
        torch.testing.assert_close(ours[read], theirs[read], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, theirs, atol=1e-3)  # unread rows lag before the catch-up
    row_adam.catch_up()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for name in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(row_adam.state[ours][name], adam.state[theirs][name], msg=name)


def test_a_dense_gradient_is_refused():
    p = torch.zeros(3, 2, requires_grad=True)
    p.grad = torch.ones(3, 2)
    with pytest.raises(ValueError, match="sparse"):
        RowAdam([p], lr=0.1).step()


def student(num_items: int = 40) -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(num_items=num_items, max_len=8, hidden=16, blocks=1, dropout=0.0))


def sampled_step(model: SASRec, optimizer, steps: int = 1) -> None:
    g = torch.Generator().manual_seed(2)
    sampler = NegativeSampler.uniform(model.config.num_items, 5)
    for _ in range(steps):
        seq = torch.randint(1, 11, (4, 8), generator=g)  # items 1..10 only: most rows go unread
        targets = torch.randint(1, 11, (4, 8), generator=g)
        loss, _ = sampled_loss(model, model(seq), targets, *sampler.draw(g))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def test_a_first_sampled_step_by_rows_equals_dense_adam():
    """At the first step Adam leaves a row without gradient where it is (zero moments), so the two
    agree; the table's gradient is sparse and only the rows the batch read move."""
    dense, rows = student(), student()
    sampled_step(dense, student_optimizer(list(dense.parameters()), dense.item_emb, False, 0.01, 0.0))
    by_rows = student_optimizer(list(rows.parameters()), rows.item_emb, True, 0.01, 0.0)
    assert isinstance(by_rows, Optimizers) and rows.item_emb.sparse
    sampled_step(rows, by_rows)
    for (name, a), b in zip(dense.named_parameters(), rows.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    moved = (rows.item_emb.weight != student().item_emb.weight).any(dim=1)
    assert moved[1:11].any() and moved.sum() < rows.config.num_items


def test_sampled_training_by_rows_equals_dense_adam():
    """Several sampled steps that leave most rows unread, then the epoch's catch-up: the model by rows
    is the model dense Adam trained (no weight decay)."""
    dense, rows = student(), student()
    sampled_step(dense, student_optimizer(list(dense.parameters()), dense.item_emb, False, 0.01, 0.0), 6)
    by_rows = student_optimizer(list(rows.parameters()), rows.item_emb, True, 0.01, 0.0)
    sampled_step(rows, by_rows, 6)
    by_rows.catch_up()
    torch.testing.assert_close(dense.item_emb.weight, rows.item_emb.weight, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(dense.named_parameters(), rows.parameters(), strict=True):
        # the key bias has no true gradient (softmax ignores it): Adam scales its rounding noise to
        # steps of up to lr, so the two drift there by ~1e-5; every other weight agrees to ~1e-7
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


def test_optimizers_state_round_trips():
    """A checkpointed pair of optimizers, loaded into fresh ones, takes the same next steps."""
    a, b = student(), student()
    first = student_optimizer(list(a.parameters()), a.item_emb, True, 0.01, 0.0)
    sampled_step(a, first, steps=2)
    b.load_state_dict(a.state_dict())
    second = student_optimizer(list(b.parameters()), b.item_emb, True, 0.01, 0.0)
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # as a checkpoint holds it: not shared
    sampled_step(a, first)
    sampled_step(b, second)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="expected"):
        second.load_state_dict({"dense": first.state_dict()["dense"]})
