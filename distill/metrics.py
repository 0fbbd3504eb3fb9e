"""Full-ranking metrics over the whole catalogue.

The rank of the target counts every item scoring strictly higher plus every item tied with it
(pessimistic ties, so a constant scorer ranks last and scores zero; NaN scores count against the
target too). Items already in the user's history are masked out (the target itself is never
masked, even when it was seen before), as is the padding id 0. With a 0-based rank r:
HR@K = [r < K], NDCG@K = [r < K] / log2(r + 2), MRR = 1 / (r + 1) (untruncated).

Two ways to the same ranks: :func:`full_ranks` reads a ``(B, N + 1)`` score matrix; :func:`block_ranks`
walks the catalogue a block of items at a time (memory ``B x block``: large catalogues) and counts the
same items by the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from distill.config import parse_metric
from distill.dist import all_sum

DEFAULT_KS = (5, 10, 20)
MASKING_NOTE = (
    "full ranking over all items; items in the user's history masked; ties count against the target"
)


def full_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    """0-based pessimistic rank of each target among all items.

    Args:
        scores: ``(B, num_items + 1)``; column 0 is padding and never counts.
        targets: ``(B,)`` item ids.
        seen: ``(B, H)`` item ids to mask (0 entries are padding), or None.

    Returns:
        ``(B,)`` int64 ranks.
    """
    scores = scores.detach()
    rows = torch.arange(scores.shape[0], device=scores.device)
    targets = targets.to(scores.device)
    competes = torch.ones_like(scores, dtype=torch.bool)  # (B, N + 1)
    if seen is not None:
        competes.scatter_(1, seen.to(scores.device), False)
    competes[:, 0] = False
    competes[rows, targets] = False  # the target does not compete with itself, even when seen
    t = scores[rows, targets][:, None]  # (B, 1)
    # NaN compares false: without the isnan terms a diverged model (NaN scores) would rank first.
    ahead = (scores >= t) | scores.isnan() | t.isnan()
    return (ahead & competes).sum(1)


def block_ranks(
    score: Callable[[int, int], torch.Tensor],
    num_items: int,
    targets: torch.Tensor,
    seen: torch.Tensor | None = None,
    *,
    size: int,
) -> torch.Tensor:
    """:func:`full_ranks` without the ``(B, N + 1)`` matrix: items ``1..num_items`` in blocks of ``size``.

    Two passes over the blocks: the first reads each target's score out of the block that holds it (only
    blocks holding a target are scored), the second counts, block by block, the competing items that
    score at least as high (or NaN), by exactly :func:`full_ranks`' rule and masks. The target's score
    comes out of the same block product as its competitors', so a tie is a tie whatever kernel a block's
    shape selects (reading it from a separate product could break the ties of a constant scorer).

    Args:
        score: ``(start, stop) -> (B, stop - start)``: the scores of item ids ``start..stop-1``.
        num_items: the catalogue, N.
        targets: ``(B,)`` item ids in ``1..num_items``.
        seen: ``(B, H)`` item ids to mask (0 entries are padding), or None.
        size: items per block.

    Returns:
        ``(B,)`` int64 ranks, equal to ``full_ranks`` of the concatenated blocks.
    """
    t = scores_at(score, num_items, targets, size)[:, None]  # (B, 1)
    targets, rows = targets.to(t.device), torch.arange(len(targets), device=t.device)
    seen = None if seen is None else seen.to(t.device)
    ranks = torch.zeros(len(targets), dtype=torch.int64, device=t.device)
    for start in range(1, num_items + 1, size):
        stop = min(start + size, num_items + 1)
        scores = score(start, stop).detach()  # (B, n)
        n = stop - start
        competes = torch.ones((len(targets), n + 1), dtype=torch.bool, device=t.device)  # column n: a sink
        if seen is not None:
            local = seen - start
            competes.scatter_(1, local.masked_fill((local < 0) | (local >= n), n), False)
        inside = (targets >= start) & (targets < stop)
        competes[rows[inside], targets[inside] - start] = False  # the target does not compete with itself
        ahead = (scores >= t) | scores.isnan() | t.isnan()
        ranks += (ahead & competes[:, :n]).sum(1)
    return ranks


def scores_at(
    score: Callable[[int, int], torch.Tensor], num_items: int, items: torch.Tensor, size: int
) -> torch.Tensor:
    """Each row's score of one item, read out of the block that holds it: ``(B,)``.

    Args:
        score: ``(start, stop) -> (B, stop - start)``, as for :func:`block_ranks`.
        num_items: the catalogue, N.
        items: ``(B,)`` item ids in ``1..num_items``, one per row.
        size: items per block; only blocks that hold one of ``items`` are scored.
    """
    if len(items) and not bool(((items >= 1) & (items <= num_items)).all()):
        raise ValueError(f"item ids must be in 1..{num_items}")
    out = None
    for start in range(1, num_items + 1, size):
        stop = min(start + size, num_items + 1)
        inside = ((items >= start) & (items < stop)).nonzero().squeeze(1)
        if inside.numel() == 0:
            continue
        scores = score(start, stop).detach()  # (B, n)
        if out is None:
            out = scores.new_empty(len(items))
        inside = inside.to(scores.device)
        out[inside] = scores[inside, items.to(scores.device)[inside] - start]
    return torch.empty(0) if out is None else out


class RankingMetrics:
    """Accumulates HR@K, NDCG@K and MRR over batches of ranks."""

    def __init__(self, ks: Sequence[int] = DEFAULT_KS):
        self.ks = tuple(ks)
        self._sums = {name: 0.0 for name in self._names()}
        self.count = 0

    def _names(self) -> list[str]:
        return [f"{m}@{k}" for k in self.ks for m in ("hr", "ndcg")] + ["mrr"]

    def update(self, ranks: torch.Tensor) -> None:
        """Add a batch of 0-based ranks, ``(B,)``."""
        r = ranks.double().cpu()
        for k in self.ks:
            hit = (r < k).double()
            self._sums[f"hr@{k}"] += hit.sum().item()
            self._sums[f"ndcg@{k}"] += (hit / torch.log2(r + 2)).sum().item()
        self._sums["mrr"] += (1.0 / (r + 1)).sum().item()
        self.count += len(r)

    def compute(self) -> dict[str, float]:
        """Means over everything seen so far (by every rank of a multi-process job), in the order
        hr@5, ndcg@5, …, mrr."""
        totals = all_sum(torch.tensor([*self._sums.values(), self.count], dtype=torch.float64)).tolist()
        count = totals.pop()
        if count == 0:
            return {name: math.nan for name in self._sums}
        return {name: total / count for name, total in zip(self._sums, totals, strict=True)}


@torch.no_grad()
def evaluate(
    score: Callable[[object], torch.Tensor], batches: Iterable, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Rank every batch's targets with ``score(batch) -> (B, num_items + 1)`` and average the metrics.

    ``batches`` yield :class:`distill.data.EvalBatch`-like objects with ``targets`` and ``seen``. In a
    multi-process job each rank passes its own users' batches and every rank gets the metrics of all.
    """
    return evaluate_ranks(lambda batch: full_ranks(score(batch), batch.targets, batch.seen), batches, ks)


@torch.no_grad()
def evaluate_ranks(
    rank: Callable[[object], torch.Tensor], batches: Iterable, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """:func:`evaluate` with the ranks given: ``rank(batch) -> (B,)`` (:func:`full_ranks` of a score
    matrix, or :func:`block_ranks`)."""
    metrics = RankingMetrics(ks)
    for batch in batches:
        metrics.update(rank(batch))
    return metrics.compute()


@torch.no_grad()
def user_ranks(
    score: Callable[[object], torch.Tensor], batches: Iterable
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank of every user's target, for per-user comparisons of two models.

    Args:
        score: ``score(batch) -> (B, num_items + 1)``, as for :func:`evaluate`.
        batches: :class:`distill.data.EvalBatch`-like objects with ``users``, ``targets`` and ``seen``.

    Returns:
        ``users`` ``(U,)`` int64 and their 0-based pessimistic ``ranks`` ``(U,)`` int64, in batch order.
    """
    return ranks_of(lambda batch: full_ranks(score(batch), batch.targets, batch.seen), batches)


@torch.no_grad()
def ranks_of(rank: Callable[[object], torch.Tensor], batches: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`user_ranks` with the ranks given: ``rank(batch) -> (B,)``, as for :func:`evaluate_ranks`."""
    users, ranks = [], []
    for batch in batches:
        users.append(batch.users.cpu())
        ranks.append(rank(batch).cpu())
    if not users:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(users), torch.cat(ranks)


def per_user(ranks: torch.Tensor, metric: str = "ndcg@10") -> torch.Tensor:
    """One metric (``hr@K``, ``ndcg@K`` or ``mrr``) per user from 0-based ranks ``(U,)``: ``(U,)`` float64.

    Its mean is what :func:`evaluate` reports for that metric.
    """
    r = ranks.double()
    name, k = parse_metric(metric)
    if name == "mrr":
        return 1.0 / (r + 1)
    hit = (r < k).double()
    return hit if name == "hr" else hit / torch.log2(r + 2)


def format_table(
    results: dict[str, dict[str, float]], ks: Sequence[int] = DEFAULT_KS, label: str = "split"
) -> str:
    """A small text table: one row per entry of ``results`` (splits, or models), one column per metric."""
    names = [f"{m}@{k}" for m in ("hr", "ndcg") for k in ks] + ["mrr"]
    width = max(len(label), *(len(row) for row in results))
    lines = [f"{label:<{width}} " + "  ".join(f"{n:>8}" for n in names)]
    for row, values in results.items():
        lines.append(f"{row:<{width}} " + "  ".join(f"{values.get(n, math.nan):8.4f}" for n in names))
    return "\n".join(lines)
