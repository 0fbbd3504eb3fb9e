"""The student's label losses against naive references, and a tiny end-to-end training check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import KD, SoftTarget, kd_loss
from student.config import SASRecConfig
from student.losses import BatchScores, bce_loss, ce_kd_loss, ce_loss, sample_negatives
from student.sasrec import SASRec

NUM_ITEMS = 11
HIDDEN = 8


def make_model() -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(num_items=NUM_ITEMS, max_len=8, hidden=HIDDEN, blocks=1, heads=2, dropout=0.0))


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded inputs and next-item targets with padding at different depths."""
    seq = torch.tensor([[0, 0, 0, 3, 5, 7, 2, 4], [0, 0, 0, 0, 0, 0, 9, 1], [1, 2, 3, 4, 5, 6, 7, 8]])
    targets = torch.tensor([[0, 0, 0, 5, 7, 2, 4, 6], [0, 0, 0, 0, 0, 0, 1, 11], [2, 3, 4, 5, 6, 7, 8, 9]])
    return seq, targets


def grads(loss: torch.Tensor, model: SASRec) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def naive_ce_of_states(model: SASRec, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reference: the whole (B, L, V + 1) logit tensor, padding item excluded, padding rows ignored."""
    logits = model.score(h)  # (B, L, V + 1)
    logits[..., 0] = float("-inf")
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)


def naive_ce(model: SASRec, seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return naive_ce_of_states(model, model(seq), targets)


@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
def test_ce_matches_naive_full_softmax_in_value_and_gradient(chunk_size: int) -> None:
    model = make_model()
    seq, targets = make_batch()
    expected = naive_ce(model, seq, targets)
    expected_grads = grads(expected, model)
    loss = ce_loss(model, model(seq), targets, chunk_size=chunk_size)
    torch.testing.assert_close(loss, expected)
    actual_grads = grads(loss, model)
    assert actual_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(actual_grads[name], grad, msg=name)


def test_ce_with_a_frozen_item_table_still_gives_state_gradients() -> None:
    model = make_model()
    model.item_emb.weight.requires_grad_(False)
    seq, targets = make_batch()
    h = model(seq).detach().requires_grad_()
    expected = torch.autograd.grad(naive_ce_of_states(model, h, targets), h)[0]
    actual = torch.autograd.grad(ce_loss(model, h, targets, chunk_size=3), h)[0]
    torch.testing.assert_close(actual, expected)


def test_ce_without_grad_gives_the_same_value() -> None:
    model = make_model()
    seq, targets = make_batch()
    with torch.no_grad():
        expected = naive_ce(model, seq, targets)
        torch.testing.assert_close(ce_loss(model, model(seq), targets, chunk_size=4), expected)


def test_losses_stay_float32_under_autocast() -> None:
    model = make_model()
    seq, targets = make_batch()
    h = model(seq)
    negatives = sample_negatives(targets, NUM_ITEMS, 2, torch.Generator().manual_seed(0))
    expected_ce, expected_bce = ce_loss(model, h, targets), bce_loss(model, h, targets, negatives)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce, bce = ce_loss(model, h, targets), bce_loss(model, h, targets, negatives)
    assert ce.dtype == bce.dtype == torch.float32
    torch.testing.assert_close(ce, expected_ce)
    torch.testing.assert_close(bce, expected_bce)


def test_ce_of_a_vanishing_target_is_floored_and_its_gradient_exact() -> None:
    """A target far below the rest (its softmax underflows float32) reports the floored loss, -log of
    float32's smallest normal, while the gradient is still softmax minus the one-hot."""
    model = make_model()
    seq, targets = make_batch()
    h = (model(seq) * 1e4).detach().requires_grad_()  # logits of order 1e2-1e3 apart
    loss = ce_loss(model, h, targets, chunk_size=4)
    expected = naive_ce_of_states(model, h, targets)
    assert torch.isfinite(loss) and expected > loss  # some target's exact loss is above the floor
    assert loss <= -math.log(torch.finfo(torch.float32).tiny) + 1e-4
    torch.testing.assert_close(
        torch.autograd.grad(loss, h)[0], torch.autograd.grad(expected, h)[0], atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize("teacher", [None, "top-k", "top-k with a tail", "some rows"])
def test_bfloat16_products_stay_close_to_float32(teacher: str | None) -> None:
    """--precision bfloat16: the catalogue products in bfloat16 move the loss and every gradient by
    about bfloat16's rounding (2^-8), not more; the loss is float32."""
    torch.manual_seed(1)
    model = SASRec(SASRecConfig(num_items=300, max_len=8, hidden=32, blocks=1, heads=1, dropout=0.0))
    with torch.no_grad():
        model.item_emb.weight.normal_(0, 0.5)
    seq = torch.randint(1, 301, (6, 8))
    targets = torch.randint(1, 301, (6, 8))
    soft = (
        None
        if teacher is None
        else batch_scores(targets, 4, "kl", 0.5, 1.0, every=teacher != "some rows", tail="tail" in teacher)
    )

    def loss_and_grads(dtype):
        h = model(seq)
        if soft is None:
            loss = ce_loss(model, h, targets, chunk_size=16, matmul_dtype=dtype)
        else:
            loss = ce_kd_loss(model, h, targets, soft, chunk_size=16, matmul_dtype=dtype)[0]
        return loss, grads(loss, model)

    expected, expected_grads = loss_and_grads(torch.float32)
    loss, actual = loss_and_grads(torch.bfloat16)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-3, atol=0)
    assert loss != expected  # the products did run in bfloat16
    for name, grad in expected_grads.items():
        error = (actual[name] - grad).norm() / grad.norm()
        assert error < 2e-2, (name, error.item())


def test_ce_ignores_padding_and_never_rewards_item_zero() -> None:
    model = make_model()
    seq, targets = make_batch()
    h = model(seq).detach().requires_grad_()
    loss = ce_loss(model, h, targets)
    loss.backward()
    # Padding positions contribute nothing, and the padding row gets no gradient.
    assert (h.grad[targets == 0] == 0).all()
    assert (model.item_emb.weight.grad[0] == 0).all()
    # Making item 0 score hugely higher everywhere changes nothing: it is not in the softmax.
    with torch.no_grad():
        model.item_emb.weight[0] = h.detach().reshape(-1, HIDDEN).sum(0) * 100.0
        torch.testing.assert_close(ce_loss(model, h, targets), loss.detach())


def test_ce_on_an_all_padding_batch_is_zero_and_differentiable() -> None:
    model = make_model()
    seq, _ = make_batch()
    loss = ce_loss(model, model(seq), torch.zeros_like(seq))
    loss.backward()
    assert loss.item() == 0.0


def test_sample_negatives_is_uniform_over_non_targets() -> None:
    targets = torch.tensor([[0, 3, 11, 1]]).expand(500, 4)  # (500, 4)
    negatives = sample_negatives(targets, NUM_ITEMS, 3, torch.Generator().manual_seed(0))
    assert negatives.shape == (500, 4, 3)
    assert (negatives[:, 0] == 0).all()
    real = negatives[:, 1:]
    assert (real != targets[:, 1:, None]).all()
    assert real.min() >= 1 and real.max() <= NUM_ITEMS
    # Every non-target item shows up for each target, so nothing is systematically skipped.
    for column, target in enumerate([3, 11, 1]):
        seen = set(real[:, column].unique().tolist())
        assert seen == set(range(1, NUM_ITEMS + 1)) - {target}


def test_bce_matches_naive_reference() -> None:
    model = make_model()
    seq, targets = make_batch()
    negatives = sample_negatives(targets, NUM_ITEMS, 2, torch.Generator().manual_seed(0))  # (B, L, 2)
    h = model(seq)
    logits = model.score(h)  # (B, L, V + 1)
    mask = targets != 0
    pos = logits.gather(-1, targets.unsqueeze(-1))[mask]  # (N, 1)
    neg = logits.gather(-1, negatives)[mask]  # (N, 2)
    both = torch.cat([pos, neg], dim=-1)
    labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)], dim=-1)
    expected = F.binary_cross_entropy_with_logits(both, labels, reduction="sum") / mask.sum()
    torch.testing.assert_close(bce_loss(model, h, targets, negatives), expected)


@pytest.mark.parametrize("loss_name", ["ce", "bce"])
def test_training_a_few_steps_lowers_the_loss(loss_name: str) -> None:
    # Deterministic cycles: the next item after i is (i % n) + 1, learnable from the last item alone.
    n = 6
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=n, max_len=6, hidden=16, blocks=1, heads=1, dropout=0.0))
    starts = torch.arange(12) % n  # (12,)
    items = (starts[:, None] + torch.arange(7)) % n + 1  # (12, 7)
    seq, targets = items[:, :-1].clone(), items[:, 1:].clone()
    seq[::2, :2] = 0  # half the rows are shorter, left-padded
    targets[::2, :2] = 0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)

    def step() -> float:
        h = model(seq)
        if loss_name == "ce":
            loss = ce_loss(model, h, targets)
        else:
            loss = bce_loss(model, h, targets, sample_negatives(targets, n, 1, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    first = step()
    for _ in range(60):
        last = step()
    assert last < 0.5 * first


# -------------------------------------------------------------------------------- fused distillation
def teacher_table(k: int, rows: int = 30, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A teacher's table: ``rows`` rows of its ``k`` best items, descending logits."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.stack([torch.randperm(NUM_ITEMS, generator=gen)[:k] + 1 for _ in range(rows)])
    logits = (3 * torch.randn(rows, k, generator=gen)).sort(dim=1, descending=True).values
    return items, logits


def batch_scores(targets, k, kd, alpha, temperature, every=True, tail=False):
    """A batch's teacher rows; with ``tail``, each row's mass outside its k items (0 where k = N)."""
    items, logits = teacher_table(k)
    count = int((targets != 0).sum())
    rows = torch.arange(count) % len(items)
    if not every:
        rows[::3] = -1  # the teacher did not score every third position
    tails = None
    if tail:
        gen = torch.Generator().manual_seed(2)
        tails = torch.log(0.05 + 0.9 * torch.rand(len(items), generator=gen))  # (rows,) 5% to 95% outside
        if k == NUM_ITEMS:
            tails = torch.full((len(items),), float("-inf"))
    fetch_tail = None if tails is None else (lambda r: tails[r])
    return BatchScores(rows, lambda r: (items[r], logits[r]), kd, alpha, temperature, fetch_tail)


def unfused(model, h, targets, soft):
    """Reference: (1 - α)·CE + α·KD where scored, CE elsewhere, by autograd on the whole logit matrix."""
    mask = targets != 0
    logits = model.score(h)[mask]  # (N, V + 1)
    labels = targets[mask]
    masked = logits.clone()
    masked[:, 0] = float("-inf")
    ce = F.cross_entropy(masked, labels, reduction="none")  # (N,)
    scored = soft.rows >= 0
    items, t_logits = soft.fetch(soft.rows[scored])
    tail = None if soft.tail is None else soft.tail(soft.rows[scored])
    kd = kd_loss(soft.kd, logits[scored], items, t_logits, soft.temperature, tail) * int(scored.sum())
    weights = torch.where(scored, 1 - soft.alpha, 1.0)
    return ((weights * ce).sum() + soft.alpha * kd) / len(labels)


def assert_fused_matches_unfused(soft: BatchScores, chunk_size: int) -> torch.Tensor:
    """Checks ce_kd_loss against :func:`unfused` and returns the fused pass's mean KD.

    Compared: the loss, the mean KD over scored positions, and the gradients w.r.t. ``h``, the item
    table and every parameter.
    """
    model = make_model()
    seq, targets = make_batch()
    h = model(seq).detach().requires_grad_()
    expected = unfused(model, h, targets, soft)
    expected_h, expected_E = torch.autograd.grad(expected, (h, model.item_emb.weight))
    loss, kd_mean = ce_kd_loss(model, h, targets, soft, chunk_size=chunk_size)
    torch.testing.assert_close(loss, expected)
    scored = soft.rows >= 0
    items, t_logits = soft.fetch(soft.rows[scored])
    tail = None if soft.tail is None else soft.tail(soft.rows[scored])
    with torch.no_grad():
        logits = model.score(h)[targets != 0][scored]  # (m, V + 1)
        torch.testing.assert_close(kd_mean, kd_loss(soft.kd, logits, items, t_logits, soft.temperature, tail))
    assert not kd_mean.requires_grad
    actual_h, actual_E = torch.autograd.grad(loss, (h, model.item_emb.weight))
    torch.testing.assert_close(actual_h, expected_h)
    torch.testing.assert_close(actual_E, expected_E)
    expected_grads = grads(unfused(model, model(seq), targets, soft), model)
    actual_grads = grads(ce_kd_loss(model, model(seq), targets, soft, chunk_size=chunk_size)[0], model)
    assert actual_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(actual_grads[name], grad, msg=name)
    return kd_mean


@pytest.mark.parametrize("kd", sorted(KD))
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("k,every", [(4, True), (4, False), (NUM_ITEMS, True)])
@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
@pytest.mark.parametrize("tail", [False, True])
def test_fused_ce_kd_matches_the_unfused_reference(kd, temperature, k, every, chunk_size, tail) -> None:
    _, targets = make_batch()
    soft = batch_scores(targets, k, kd, 0.7, temperature, every, tail)
    assert assert_fused_matches_unfused(soft, chunk_size) > 0


def test_fused_kl_with_a_zero_tail_is_exactly_the_full_kl() -> None:
    """k = N with every tail -inf (nothing outside): the bucket's path gives the no-tail pass's numbers."""
    model = make_model()
    seq, targets = make_batch()
    plain = batch_scores(targets, NUM_ITEMS, "kl", 0.7, 1.0)
    zero = batch_scores(targets, NUM_ITEMS, "kl", 0.7, 1.0, tail=True)
    expected, expected_kd = ce_kd_loss(model, model(seq), targets, plain, chunk_size=5)
    expected_grads = grads(expected, model)
    loss, kd_mean = ce_kd_loss(model, model(seq), targets, zero, chunk_size=5)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(kd_mean, expected_kd, rtol=1e-6, atol=1e-7)
    for name, grad in grads(loss, model).items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("scale", [1.0, 0.5])  # 1: at T = 1 the pass shares the CE's softmax
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("every", [True, False])
def test_a_newly_registered_loss_is_fused_with_no_other_change(
    monkeypatch, scale, temperature, every
) -> None:
    def toy(teacher_logits: torch.Tensor, temperature: float, tail: torch.Tensor | None) -> SoftTarget:
        """Cross-entropy against the teacher's reversed preferences, plus its mean logit."""
        return SoftTarget(torch.softmax(-teacher_logits, dim=-1), scale, teacher_logits.mean(-1))

    monkeypatch.setitem(KD, "toy", toy)
    _, targets = make_batch()
    soft = batch_scores(targets, 4, "toy", 0.7, temperature, every)
    kd_mean = assert_fused_matches_unfused(soft, chunk_size=5)
    # The fused mean KD against the toy's formula written out: scale · (-Σ p log q) + mean logit.
    model = make_model()
    seq, _ = make_batch()
    with torch.no_grad():
        logits = model.score(model(seq))[targets != 0][:, 1:]  # (N, V)
    scored = soft.rows >= 0
    items, t_logits = soft.fetch(soft.rows[scored])
    log_q = torch.log_softmax(logits[scored] / temperature, dim=-1).gather(1, items - 1)
    p = torch.softmax(-t_logits, dim=-1)
    expected = (scale * -(p * log_q).sum(-1) + t_logits.mean(-1)).mean()
    torch.testing.assert_close(kd_mean, expected)


def test_an_unknown_loss_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*expected one of"):
        BatchScores(torch.zeros(1, dtype=torch.long), lambda r: (r, r), "nope", 0.5, 1.0)


def test_fused_kd_at_alpha_zero_is_exactly_ce() -> None:
    model = make_model()
    seq, targets = make_batch()
    expected = ce_loss(model, model(seq), targets, chunk_size=5)
    expected_grads = grads(expected, model)
    loss, _ = ce_kd_loss(model, model(seq), targets, batch_scores(targets, 4, "kl", 0.0, 2.0), chunk_size=5)
    assert torch.equal(loss, expected)
    for name, grad in grads(loss, model).items():
        assert torch.equal(grad, expected_grads[name]), name


def test_fused_kd_is_zero_when_the_teacher_is_the_student_at_t_1() -> None:
    model = make_model()
    seq, targets = make_batch()
    with torch.no_grad():
        own = model.score(model(seq))[targets != 0][:, 1:]  # (N, V): the student's own scores
    t_logits, order = own.sort(dim=1, descending=True)
    soft = BatchScores(torch.arange(len(own)), lambda r: (order[r] + 1, t_logits[r]), "kl", 1.0, 1.0)
    loss, kd_mean = ce_kd_loss(model, model(seq), targets, soft, chunk_size=5)
    assert abs(kd_mean.item()) < 1e-5 and abs(loss.item()) < 1e-5
    for name, grad in grads(loss, model).items():
        torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("every", [True, False])
def test_a_registered_loss_with_a_bucket_is_fused_at_any_temperature(monkeypatch, temperature, every) -> None:
    """kl puts mass on the bucket at T = 1 only; a loss may at any T, with any scale: the fused pass's
    general path (its own softmax at T) against the reference."""

    def halves(teacher_logits: torch.Tensor, temperature: float, tail: torch.Tensor | None) -> SoftTarget:
        """Half the mass on the teacher's softmax, half on every other item."""
        p = 0.5 * torch.softmax(teacher_logits, dim=-1)
        rest = torch.full_like(teacher_logits[:, 0], 0.5)
        return SoftTarget(p, 0.5, teacher_logits.new_zeros(len(p)), rest)

    monkeypatch.setitem(KD, "halves", halves)
    _, targets = make_batch()
    assert assert_fused_matches_unfused(batch_scores(targets, 4, "halves", 0.7, temperature, every), 5) > 0
