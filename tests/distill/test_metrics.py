"""Full-ranking metrics: hand-computed cases, pessimistic ties, masking, and a brute-force reference."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from distill.metrics import (
    RankingMetrics,
    block_ranks,
    evaluate,
    evaluate_ranks,
    full_ranks,
    per_user,
    ranks_of,
    scores_at,
    user_ranks,
)


def metrics_of(ranks: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    m = RankingMetrics(ks)
    m.update(torch.tensor(ranks))
    return m.compute()


def test_rank_zero_is_a_perfect_hit():
    scores = torch.tensor([[0.0, 9.0, 1.0, 2.0, 3.0]])
    ranks = full_ranks(scores, torch.tensor([1]))
    assert ranks.tolist() == [0] and ranks.dtype == torch.int64
    m = metrics_of([0])
    assert m["hr@1"] == m["hr@5"] == m["ndcg@1"] == m["ndcg@5"] == m["mrr"] == 1.0


def test_rank_three():
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    assert full_ranks(scores, torch.tensor([4])).tolist() == [3]
    m = metrics_of([3])
    assert m["hr@1"] == 0.0 and m["ndcg@1"] == 0.0
    assert m["hr@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(5))
    assert m["mrr"] == pytest.approx(1 / 4)


def test_rank_at_cutoff_is_a_miss():
    m = metrics_of([5, 9])
    assert m["hr@5"] == 0.0 and m["ndcg@5"] == 0.0
    assert m["hr@10"] == 1.0 and m["ndcg@10"] == pytest.approx((1 / math.log2(7) + 1 / math.log2(11)) / 2)


def test_ties_count_against_the_target():
    scores = torch.tensor([[0.0, 1.0, 1.0, 0.5, 2.0]])
    # item 1 ties with item 2 (counted against it) and is beaten by item 4
    assert full_ranks(scores, torch.tensor([1])).tolist() == [2]
    assert full_ranks(scores, torch.tensor([2])).tolist() == [2]


def test_constant_scorer_scores_zero():
    num_items = 30
    scores = torch.zeros(4, num_items + 1)
    ranks = full_ranks(scores, torch.tensor([1, 7, 15, 30]))
    assert ranks.tolist() == [num_items - 1] * 4
    m = metrics_of(ranks.tolist(), ks=(5, 10, 20))
    assert all(m[f"{name}@{k}"] == 0.0 for name in ("hr", "ndcg") for k in (5, 10, 20))


def test_nan_scores_never_help():
    scores = torch.tensor([[0.0, float("nan"), 1.0, 2.0], [0.0, 3.0, float("nan"), 1.0]])
    # A NaN target ranks last; a NaN competitor counts against the target.
    assert full_ranks(scores, torch.tensor([1, 1])).tolist() == [2, 1]
    all_nan = torch.full((2, 6), float("nan"))
    assert full_ranks(all_nan, torch.tensor([1, 5])).tolist() == [4, 4]


def test_seen_items_are_masked():
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0]])
    target = torch.tensor([3])
    assert full_ranks(scores, target).tolist() == [2]
    assert full_ranks(scores, target, torch.tensor([[1, 0, 0]])).tolist() == [1]
    assert full_ranks(scores, target, torch.tensor([[2, 1]])).tolist() == [0]


def test_target_never_masked_even_if_seen():
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0]])
    assert full_ranks(scores, torch.tensor([2]), torch.tensor([[2, 1]])).tolist() == [0]
    assert full_ranks(scores, torch.tensor([3]), torch.tensor([[3, 0]])).tolist() == [2]


def test_padding_column_is_ignored():
    scores = torch.tensor([[100.0, 1.0, 2.0], [1.0, 1.0, 0.0]])
    assert full_ranks(scores, torch.tensor([2, 1])).tolist() == [0, 0]


def brute_force_rank(scores: list[float], target: int, seen: set[int]) -> int:
    t = scores[target]
    return sum(1 for i in range(1, len(scores)) if i != target and i not in seen and scores[i] >= t)


def test_matches_brute_force_on_random_scores():
    gen = torch.Generator().manual_seed(0)
    batch, num_items = 40, 25
    # Rounded scores so that ties happen often.
    scores = torch.randint(0, 6, (batch, num_items + 1), generator=gen).float()
    targets = torch.randint(1, num_items + 1, (batch,), generator=gen)
    seen = torch.randint(0, num_items + 1, (batch, 7), generator=gen)
    ranks = full_ranks(scores, targets, seen)
    for b in range(batch):
        mask = set(seen[b].tolist()) - {0}
        assert ranks[b].item() == brute_force_rank(scores[b].tolist(), targets[b].item(), mask)

    m = RankingMetrics((5, 10))
    m.update(ranks)
    got = m.compute()
    plain = [
        brute_force_rank(scores[b].tolist(), targets[b].item(), set(seen[b].tolist()) - {0})
        for b in range(batch)
    ]
    for k in (5, 10):
        assert got[f"hr@{k}"] == pytest.approx(sum(r < k for r in plain) / batch)
        assert got[f"ndcg@{k}"] == pytest.approx(sum(1 / math.log2(r + 2) for r in plain if r < k) / batch)
    assert got["mrr"] == pytest.approx(sum(1 / (r + 1) for r in plain) / batch)


def test_accumulation_over_batches_equals_one_batch():
    gen = torch.Generator().manual_seed(1)
    ranks = torch.randint(0, 30, (50,), generator=gen)
    whole = RankingMetrics()
    whole.update(ranks)
    parts = RankingMetrics()
    for chunk in ranks.split([7, 20, 1, 22]):
        parts.update(chunk)
    assert parts.count == whole.count == 50
    assert parts.compute() == pytest.approx(whole.compute())
    assert list(whole.compute()) == ["hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr"]


def test_empty_metrics_are_nan():
    assert all(math.isnan(v) for v in RankingMetrics().compute().values())


def test_evaluate_over_batches():
    class Batch:
        def __init__(self, scores, targets, seen):
            self.scores, self.targets, self.seen = scores, targets, seen

    batches = [
        Batch(torch.tensor([[0.0, 3.0, 2.0, 1.0]]), torch.tensor([1]), torch.tensor([[0]])),  # rank 0
        Batch(torch.tensor([[0.0, 3.0, 2.0, 1.0]]), torch.tensor([3]), torch.tensor([[1]])),  # rank 1
    ]
    result = evaluate(lambda b: b.scores, batches, ks=(1,))
    assert result["hr@1"] == 0.5
    assert result["mrr"] == pytest.approx(0.75)


def test_per_user_metrics_average_to_the_reported_ones():
    torch.manual_seed(0)
    scores = torch.randn(30, 21)
    targets = torch.randint(1, 21, (30,))
    batches = [
        SimpleNamespace(
            users=torch.arange(i, i + 10), targets=targets[i : i + 10], seen=None, scores=scores[i : i + 10]
        )
        for i in range(0, 30, 10)
    ]
    expected = evaluate(lambda b: b.scores, batches)
    users, ranks = user_ranks(lambda b: b.scores, batches)
    assert users.tolist() == list(range(30))
    for metric in ("hr@5", "ndcg@10", "mrr"):
        assert per_user(ranks, metric).mean().item() == pytest.approx(expected[metric])
    with pytest.raises(ValueError, match="unknown metric"):
        per_user(ranks, "auc")


# ------------------------------------------------------------------------ the catalogue in blocks of items


def blocks_of(scores: torch.Tensor, calls: list | None = None):
    """An opened batch over a score matrix: item ids start..stop-1 are its columns."""

    def score(start: int, stop: int) -> torch.Tensor:
        assert 1 <= start < stop <= scores.shape[1]  # padding is never asked for
        if calls is not None:
            calls.append((start, stop))
        return scores[:, start:stop].clone()

    return score


@pytest.mark.parametrize("size", [1, 2, 3, 7, 25, 26, 1000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_ranks_equal_full_ranks_with_ties_nans_and_seen_items(size, seed):
    gen = torch.Generator().manual_seed(seed)
    batch, num_items = 40, 25
    scores = torch.randint(0, 6, (batch, num_items + 1), generator=gen).float()  # ties everywhere
    scores[torch.rand(scores.shape, generator=gen) < 0.05] = float("nan")
    targets = torch.randint(1, num_items + 1, (batch,), generator=gen)
    seen = torch.randint(0, num_items + 1, (batch, 9), generator=gen)  # 0 is padding; repeats happen
    seen[:5, 0] = targets[:5]  # a seen target is never masked
    got = block_ranks(blocks_of(scores), num_items, targets, seen, size=size)
    assert got.dtype == torch.int64
    assert torch.equal(got, full_ranks(scores, targets, seen))
    assert torch.equal(
        block_ranks(blocks_of(scores), num_items, targets, size=size), full_ranks(scores, targets)
    )


def test_block_ranks_keep_the_pessimistic_rule_for_a_constant_scorer():
    num_items = 30
    scores = torch.zeros(4, num_items + 1)
    ranks = block_ranks(blocks_of(scores), num_items, torch.tensor([1, 7, 15, 30]), size=4)
    assert ranks.tolist() == [num_items - 1] * 4


def test_block_ranks_read_targets_only_from_blocks_that_hold_one():
    scores = torch.randn(3, 21)
    calls = []
    block_ranks(blocks_of(scores, calls), 20, torch.tensor([2, 3, 19]), size=5)
    first_pass = calls[: len(calls) - 4]  # the counting pass scores all 4 blocks
    assert first_pass == [(1, 6), (16, 21)] and calls[-4:] == [(1, 6), (6, 11), (11, 16), (16, 21)]
    assert scores_at(blocks_of(scores), 20, torch.tensor([2, 3, 19]), 5).tolist() == [
        scores[0, 2].item(),
        scores[1, 3].item(),
        scores[2, 19].item(),
    ]
    with pytest.raises(ValueError, match=r"1\.\.20"):
        scores_at(blocks_of(scores), 20, torch.tensor([0, 3, 19]), 5)


def test_evaluate_ranks_equals_evaluate_in_blocks():
    torch.manual_seed(3)
    scores = torch.randint(0, 4, (30, 21)).float()
    targets = torch.randint(1, 21, (30,))
    seen = torch.randint(0, 21, (30, 4))
    batches = [
        SimpleNamespace(users=torch.arange(i, i + 10), targets=targets[i : i + 10], seen=seen[i : i + 10])
        for i in range(0, 30, 10)
    ]
    matrix = {id(b): scores[i * 10 : i * 10 + 10] for i, b in enumerate(batches)}
    full = evaluate(lambda b: matrix[id(b)], batches)
    blocked = evaluate_ranks(
        lambda b: block_ranks(blocks_of(matrix[id(b)]), 20, b.targets, b.seen, size=3), batches
    )
    assert blocked == full
    users, ranks = ranks_of(
        lambda b: block_ranks(blocks_of(matrix[id(b)]), 20, b.targets, b.seen, size=6), batches
    )
    assert torch.equal(ranks, user_ranks(lambda b: matrix[id(b)], batches)[1])
    assert users.tolist() == list(range(30))
