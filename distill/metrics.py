"""Full-ranking metrics over the whole catalogue.

The rank of the target counts every item scoring strictly higher plus every item tied with it
(pessimistic ties, so a constant scorer ranks last and scores zero; NaN scores count against the
target too). Items already in the user's history are masked out (the target itself is never
masked, even when it was seen before), as is the padding id 0. With a 0-based rank r:
HR@K = [r < K], NDCG@K = [r < K] / log2(r + 2), MRR = 1 / (r + 1) (untruncated).
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
    metrics = RankingMetrics(ks)
    for batch in batches:
        metrics.update(full_ranks(score(batch), batch.targets, batch.seen))
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
    users, ranks = [], []
    for batch in batches:
        users.append(batch.users.cpu())
        ranks.append(full_ranks(score(batch), batch.targets, batch.seen).cpu())
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
