"""The sampled softmax (``--loss sampled``) and its KD estimator against the full-catalogue losses.

Exact where the sample is the whole catalogue; in expectation over many draws where it is not, with
tolerances that the uncorrected estimator (no logQ correction) fails.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import student.losses
from distill.losses import KD, kd_loss
from student.config import SASRecConfig
from student.losses import BatchScores, NegativeSampler, ce_loss, sampled_loss
from student.sasrec import SASRec
from tests.student.test_losses import (
    NUM_ITEMS,
    batch_scores,
    grads,
    make_batch,
    make_model,
    naive_ce,
    unfused,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny losses: a thread pool only adds wake-ups to each (and stalls on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A catalogue large enough that a few draws leave most of it unseen, with spread-out scores.
V = 30
# Skewed training counts (item i seen 100 / i times): the popularity sampler's Q.
COUNTS = torch.cat([torch.zeros(1), 100.0 / torch.arange(1, V + 1)])


def whole_catalogue(num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item drawn once under uniform Q: ``n·Q = 1``, so the logQ correction is 0."""
    sampler = NegativeSampler.uniform(num_items, num_items)
    items = torch.randperm(num_items, generator=torch.Generator().manual_seed(0)) + 1
    return items, sampler.log_q[items] + math.log(sampler.n)


def samplers(n: int) -> dict[str, NegativeSampler]:
    return {"uniform": NegativeSampler.uniform(V, n), "popularity": NegativeSampler.popularity(COUNTS, n)}


def spread_model() -> SASRec:
    """A student over ``V`` items whose item scores spread over a few units (a fresh one scores ~0)."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=V, max_len=6, hidden=8, blocks=1, heads=1, dropout=0.0))
    with torch.no_grad():
        model.item_emb.weight.normal_(0, 0.5)
    return model.eval()


# Two users whose targets cover 7 of the 30 items; the rest of the catalogue is left to the draws.
SEQ = torch.tensor([[0, 3, 5, 7, 2, 4], [1, 2, 3, 1, 2, 3]])
TARGETS = torch.tensor([[0, 5, 7, 2, 4, 6], [2, 3, 1, 2, 3, 4]])


@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
def test_every_item_drawn_once_is_the_full_ce_in_value_and_gradient(chunk_size: int) -> None:
    model = make_model()
    seq, targets = make_batch()
    expected = naive_ce(model, seq, targets)
    expected_grads = grads(expected, model)
    loss, kd = sampled_loss(model, model(seq), targets, *whole_catalogue(NUM_ITEMS), chunk_size=chunk_size)
    torch.testing.assert_close(loss, expected)
    assert kd.item() == 0.0
    actual_grads = grads(loss, model)
    assert actual_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(actual_grads[name], grad, msg=name)


def test_draws_that_hit_the_batch_are_masked() -> None:
    # Drawing only items the batch already holds adds nothing, whatever their correction: the loss is
    # the softmax over the batch's distinct targets.
    model = spread_model()
    h = model(SEQ)
    in_batch = TARGETS[TARGETS != 0].unique()
    drawn = torch.cat([in_batch, in_batch[:3]])
    loss, _ = sampled_loss(model, h, TARGETS, drawn, torch.randn(len(drawn)))
    logits = model.score(h)[TARGETS != 0][:, in_batch]  # (N, |U|)
    labels = torch.searchsorted(in_batch, TARGETS[TARGETS != 0])
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_the_normaliser_estimate_is_unbiased_only_with_the_logq_correction(kind: str) -> None:
    # One position, so the batch holds one item and the draws estimate the rest: exp(loss + s_t) = Ẑ.
    model = spread_model()
    seq, targets = SEQ[1:], torch.tensor([[0, 0, 0, 0, 0, 4]])
    h = model(seq).detach()
    scores = model.score(h)[0, -1, 1:]  # (V,)
    exact = scores.exp().sum()
    sampler, generator = samplers(4)[kind], torch.Generator().manual_seed(0)
    corrected, uncorrected = [], []
    for _ in range(2000):
        items, log_counts = sampler.draw(generator)
        corrected.append(sampled_loss(model, h, targets, items, log_counts)[0])
        uncorrected.append(sampled_loss(model, h, targets, items, torch.zeros_like(log_counts))[0])
    z = (torch.stack(corrected) + scores[3]).exp()
    assert abs(z.mean() - exact) < 4 * z.std() / math.sqrt(len(z))  # about 80.99 against 80.3 ± 1.2
    assert (torch.stack(uncorrected) + scores[3]).exp().mean() < 0.5 * exact  # about 26 or 30


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_the_loss_and_its_gradient_approach_the_full_ce_in_expectation(kind: str) -> None:
    model = spread_model()
    h = model(SEQ).detach().requires_grad_()
    exact = ce_loss(model, h, TARGETS)
    exact_grad = torch.autograd.grad(exact, h)[0]

    def errors(n: int, corrected: bool, draws: int = 300) -> tuple[float, float]:
        """Mean loss minus the full CE, and the mean gradient's relative error, over ``draws`` draws."""
        sampler, generator = samplers(n)[kind], torch.Generator().manual_seed(0)
        values, gradients = [], []
        for _ in range(draws):
            items, log_counts = sampler.draw(generator)
            loss, _ = sampled_loss(model, h, TARGETS, items, log_counts if corrected else 0 * log_counts)
            values.append(loss.detach())
            gradients.append(torch.autograd.grad(loss, h)[0])
        gradient = torch.stack(gradients).mean(0)
        return (torch.stack(values).mean() - exact).item(), (
            (gradient - exact_grad).norm() / exact_grad.norm()
        ).item()

    few, many, uncorrected = errors(4, True), errors(16, True), errors(16, False)
    # Measured: uniform -0.09 / -0.03 / -0.27, popularity -0.17 / -0.07 / -0.47 (loss), and gradient
    # errors 0.09 / 0.04 / 0.09, 0.12 / 0.07 / 0.17.
    assert abs(many[0]) < 0.1 < 0.25 < abs(uncorrected[0])
    assert abs(many[0]) < abs(few[0]) and many[1] < few[1]
    assert many[1] < 0.6 * uncorrected[1]


# ---------------------------------------------------------------------------------------------- KD at scale
@pytest.mark.parametrize("kd", sorted(KD))
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("k,every", [(4, True), (4, False), (NUM_ITEMS, True)])
@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
@pytest.mark.parametrize("tail", [False, True])
def test_every_item_drawn_once_is_the_full_kd(kd, temperature, k, every, chunk_size, tail) -> None:
    model = make_model()
    seq, targets = make_batch()
    soft = batch_scores(targets, k, kd, 0.7, temperature, every, tail)
    h = model(seq).detach().requires_grad_()
    expected = unfused(model, h, targets, soft)
    expected_h, expected_E = torch.autograd.grad(expected, (h, model.item_emb.weight))
    loss, kd_mean = sampled_loss(model, h, targets, *whole_catalogue(NUM_ITEMS), soft, chunk_size=chunk_size)
    torch.testing.assert_close(loss, expected)
    scored = soft.rows >= 0
    items, t_logits = soft.fetch(soft.rows[scored])
    tails = None if soft.tail is None else soft.tail(soft.rows[scored])
    with torch.no_grad():
        logits = model.score(h)[targets != 0][scored]
        torch.testing.assert_close(kd_mean, kd_loss(kd, logits, items, t_logits, temperature, tails))
    assert kd_mean > 0 and not kd_mean.requires_grad
    actual_h, actual_E = torch.autograd.grad(loss, (h, model.item_emb.weight))
    torch.testing.assert_close(actual_h, expected_h)
    torch.testing.assert_close(actual_E, expected_E)


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_kd_estimators_bias_is_the_jensen_gap_and_shrinks_with_the_sample(kind, temperature) -> None:
    """One position, so the draws estimate all the catalogue but the target and the teacher's five items.

    ``Ẑ_T`` is read back from the estimated KD (``p`` sums to one): unbiased for ``Z_T``. The KD's bias
    is ``scale·(E log Ẑ_T - log Z_T)``: negative, near the delta method's ``-scale·Var(Ẑ_T)/(2 Z_T²)``,
    and smaller with more draws. Measured at n = 4 and 16 (kl): T = 1 about -0.17 and -0.05, T = 2
    about -0.30 and -0.07 (uniform), -0.54 and -0.13 (popularity); at n = 4 the uncorrected estimator
    is off by about -1 (T = 1) and -5 (T = 2).
    """
    model = spread_model()
    seq, targets = SEQ[1:], torch.tensor([[0, 0, 0, 0, 0, 4]])
    h = model(seq).detach()
    t_items, t_logits = torch.tensor([[9, 4, 17, 25, 2]]), torch.tensor([[3.0, 2.0, 1.5, 0.0, -1.0]])
    soft = BatchScores(
        torch.zeros(1, dtype=torch.long), lambda r: (t_items[r], t_logits[r]), "kl", 1.0, temperature
    )
    scores = model.score(h)[0, -1:]  # (1, V + 1)
    exact = kd_loss("kl", scores, t_items, t_logits, temperature)
    target = KD["kl"](t_logits, temperature)
    known = (target.p * scores.gather(1, t_items) / temperature).sum()  # Σ p s / T
    z_exact = (scores[0, 1:] / temperature).exp().sum()

    biases = []
    for n in (4, 16):
        sampler, generator = samplers(n)[kind], torch.Generator().manual_seed(0)
        estimates = torch.stack(
            [sampled_loss(model, h, targets, *sampler.draw(generator), soft)[1] for _ in range(1000)]
        )
        se = estimates.std().item() / math.sqrt(len(estimates))
        z = ((estimates - target.offset) / target.scale + known).exp()
        assert abs(z.mean() - z_exact) < 4 * z.std() / math.sqrt(len(z))
        bias = (estimates.mean() - exact).item()
        predicted = -target.scale * z.var().item() / (2 * z_exact.item() ** 2)
        assert bias < 3 * se
        assert abs(bias - predicted) < 0.5 * abs(predicted) + 3 * se
        biases.append(bias)
        if n == 4:  # without the correction: off by far more than the Jensen gap
            generator = torch.Generator().manual_seed(0)
            uncorrected = []
            for _ in range(200):
                items, log_counts = sampler.draw(generator)
                uncorrected.append(sampled_loss(model, h, targets, items, 0 * log_counts, soft)[1])
            assert torch.stack(uncorrected).mean() - exact < min(-0.5, 1.5 * bias)
    assert abs(biases[1]) < abs(biases[0]) and abs(biases[1]) < 0.2


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_with_a_tail_the_bias_is_both_jensen_gaps_and_shrinks_with_the_sample(kind) -> None:
    """The KD with a tail (kl, T = 1) takes ``log Ẑ`` and the bucket's ``log R̂`` from the same draws:
    its bias is ``E[log Ẑ - log Z] - rest·E[log R̂ - log R]``, about
    ``Var(Ẑ)·(rest / R² - 1 / Z²) / 2`` by the delta method, ``Ẑ`` recomputed here by hand from each
    draw (``R̂ = Ẑ - Σ_K exp(s_j)`` has its variance). The two gaps pull apart, so the bias is smaller
    than without a tail. Measured (rest 0.3, R/Z 0.74) at n = 16 and 64: -0.033 and -0.004 (uniform;
    predicted -0.024 and -0.007), -0.014 and -0.010 (popularity; -0.022 and -0.006), standard errors
    0.003 to 0.006. At n = 4 the second-order prediction is no longer close (popularity: +0.065 measured,
    -0.094 predicted, se 0.05).
    """
    model = spread_model()
    seq, targets = SEQ[1:], torch.tensor([[0, 0, 0, 0, 0, 4]])
    h = model(seq).detach()
    t_items, t_logits = torch.tensor([[9, 4, 17, 25, 2]]), torch.tensor([[3.0, 2.0, 1.5, 0.0, -1.0]])
    tail = torch.tensor([math.log(0.3)])
    soft = BatchScores(
        torch.zeros(1, dtype=torch.long),
        lambda r: (t_items[r], t_logits[r]),
        "kl",
        1.0,
        1.0,
        lambda r: tail[r],
    )
    scores = model.score(h)[0, -1:]  # (1, V + 1)
    exact = kd_loss("kl", scores, t_items, t_logits, 1.0, tail)
    e = scores[0].exp()  # (V + 1,)
    counted = torch.zeros(V + 1, dtype=torch.bool)
    counted[t_items[0]] = True
    counted[4] = True  # U, the batch's one target (also a teacher item here)
    z_exact = e[1:].sum()
    r_exact = z_exact - e[t_items[0]].sum()

    biases = []
    for n in (16, 64):
        sampler, generator = samplers(n)[kind], torch.Generator().manual_seed(0)
        estimates, z = [], []
        for _ in range(1000):
            items, log_counts = sampler.draw(generator)
            estimates.append(sampled_loss(model, h, targets, items, log_counts, soft)[1])
            drawn = ~counted[items]  # draws outside U ∪ K count, with their weights
            z.append(e[counted].sum() + (e[items] / log_counts.exp())[drawn].sum())
        estimates, z = torch.stack(estimates), torch.stack(z)
        se = estimates.std().item() / math.sqrt(len(estimates))
        bias = (estimates.mean() - exact).item()
        predicted = z.var().item() * (0.3 / r_exact.item() ** 2 - 1 / z_exact.item() ** 2) / 2
        assert abs(bias - predicted) < 0.5 * abs(predicted) + 3 * se
        biases.append(bias)
    assert abs(biases[1]) < abs(biases[0]) and abs(biases[1]) < 0.02


def test_alpha_zero_is_exactly_the_plain_sampled_loss() -> None:
    model = make_model()
    seq, targets = make_batch()
    draws = NegativeSampler.uniform(NUM_ITEMS, 3).draw(torch.Generator().manual_seed(0))
    expected, _ = sampled_loss(model, model(seq), targets, *draws, chunk_size=5)
    expected_grads = grads(expected, model)
    loss, _ = sampled_loss(
        model, model(seq), targets, *draws, batch_scores(targets, 4, "kl", 0.0, 2.0), chunk_size=5
    )
    assert torch.equal(loss, expected)
    for name, grad in grads(loss, model).items():
        assert torch.equal(grad, expected_grads[name]), name


@pytest.mark.parametrize("soft", [False, True])
def test_recomputing_chunks_in_backward_changes_nothing(soft, monkeypatch) -> None:
    """Large batches recompute each chunk in backward (activation checkpointing) instead of keeping it."""
    model = make_model()
    seq, targets = make_batch()
    draws = NegativeSampler.uniform(NUM_ITEMS, 3).draw(torch.Generator().manual_seed(0))
    scores = batch_scores(targets, 4, "kl", 0.5, 2.0) if soft else None
    kept, _ = sampled_loss(model, model(seq), targets, *draws, scores, chunk_size=5)
    kept_grads = grads(kept, model)
    monkeypatch.setattr(student.losses, "KEEP_ELEMENTS", 0)  # every batch now counts as large
    recomputed, _ = sampled_loss(model, model(seq), targets, *draws, scores, chunk_size=5)
    torch.testing.assert_close(recomputed, kept)
    for name, grad in grads(recomputed, model).items():
        torch.testing.assert_close(grad, kept_grads[name], msg=name)


def test_sampled_loss_stays_float32_and_handles_an_all_padding_batch() -> None:
    model = make_model()
    seq, targets = make_batch()
    draws = NegativeSampler.uniform(NUM_ITEMS, 3).draw(torch.Generator().manual_seed(0))
    soft = batch_scores(targets, 4, "kl", 0.5, 1.0)
    h = model(seq)
    expected = sampled_loss(model, h, targets, *draws, soft)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = sampled_loss(model, h, targets, *draws, soft)
    assert actual[0].dtype == torch.float32
    torch.testing.assert_close(actual, expected)
    loss, _ = sampled_loss(model, h, torch.zeros_like(targets), *draws)
    loss.backward()
    assert loss.item() == 0.0


def test_negative_sampler_draws_by_q_and_reports_log_n_q() -> None:
    generator = torch.Generator().manual_seed(0)
    uniform, popular = NegativeSampler.uniform(V, 50), NegativeSampler.popularity(COUNTS, 50)
    q = (COUNTS[1:] + 1) / (COUNTS[1:] + 1).sum()  # (V,)
    for sampler, expected in ((uniform, torch.full((V,), 1 / V)), (popular, q)):
        draws = torch.cat([sampler.draw(generator)[0] for _ in range(400)])  # 20,000 draws
        assert draws.min() >= 1 and draws.max() <= V
        frequency = torch.bincount(draws, minlength=V + 1)[1:] / len(draws)
        torch.testing.assert_close(frequency, expected.float(), atol=0.01, rtol=0.1)
        items, log_counts = sampler.draw(generator)
        torch.testing.assert_close(log_counts, (50 * expected[items - 1]).log().float())
    # Items never seen in training can still be drawn (counts plus one).
    never = NegativeSampler.popularity(torch.tensor([0.0, 1000.0, 0.0]), 1)
    assert set(torch.cat([never.draw(generator)[0] for _ in range(3000)]).tolist()) == {1, 2}
    with pytest.raises(ValueError, match="negatives must be >= 1"):
        NegativeSampler.uniform(V, 0)


def test_training_with_the_sampled_loss_lowers_the_full_ce() -> None:
    # Deterministic cycles (the next item after i is i % n + 1), two users a step: each batch holds 12
    # of the 20 items and draws 2 of the others.
    n = 20
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=n, max_len=6, hidden=16, blocks=1, heads=1, dropout=0.0))
    items = (torch.arange(n)[:, None] + torch.arange(7)) % n + 1  # (20, 7)
    seq, targets = items[:, :-1].clone(), items[:, 1:].clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sampler, generator = NegativeSampler.uniform(n, 2), torch.Generator().manual_seed(0)
    with torch.no_grad():
        first = ce_loss(model, model(seq), targets).item()
    for step in range(100):
        user = torch.tensor([step, step + 10]) % n
        loss, _ = sampled_loss(model, model(seq[user]), targets[user], *sampler.draw(generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert ce_loss(model, model(seq), targets).item() < 0.5 * first
