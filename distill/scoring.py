"""A model as every command that reads runs uses it: what it reads, what it scores, how to rank with it.

Each run kind opens into a :class:`Scorer` (a student in :mod:`student.run`, either teacher in
:mod:`teacher.model`, ensembles and cross-fits of them in :mod:`pipeline.runs`, which is the one
loader). Export, evaluate, compare, recommend, serve, the pipeline's summary and both training loops'
validation all score through it, so "score a user's history" is written once per model kind.

Histories are ``(B, L)`` item ids, left-padded with 0, ``L <= context``. ``users`` are the dataset's
user ids of those rows, or None for histories of no known user (a cross-fit needs them: each user is
scored by the run that did not train on them).

**Blocks of items.** A score matrix over the whole catalogue is ``rows x (N + 1)`` floats: 1 GB for 256
users at N = 10^6, far more for a dense teacher pass. Every scorer here can also score the catalogue one
block of items at a time (:class:`Blocks`): a batch is *opened* once (the expensive pass: SASRec, the
backbone) and any range of item ids is then scored against it, so evaluation
(:func:`distill.metrics.block_ranks`) and top-k export (:func:`top_k_in_blocks`) hold ``rows x block``
scores. :func:`item_block` decides when: the whole catalogue at once while a batch's scores stay within
:data:`SCORE_BUDGET` values (every catalogue this project has met so far, where it is the exact path
it always was), blocks beyond; an option forces either way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.data import Dataset
from distill.dist import shard
from distill.errors import DistillError
from distill.metrics import block_ranks, evaluate_ranks, full_ranks, ranks_of

ScoreFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
# An opened batch: (start, stop) -> the scores of item ids start..stop-1, (rows, stop - start).
BlockFn = Callable[[int, int], torch.Tensor]

# Score values one batch may hold at once before the catalogue is walked in blocks: 2**26 float32 is
# 256 MiB (a batch of 256 users up to 262,143 items; the full path holds a few bytes more per value for
# its masks). Below it the full-matrix path is kept, as it always was: blocks are chosen for memory.
SCORE_BUDGET = 2**26
# Score values of one block, once in blocks: 2**21 float32 is 8 MiB, a block that stays in cache while
# it is compared, masked and summed. Ranking 2,000 users at 10^6 items (2 CPU cores,
# bench/results/catalogue_scale.md) took 10-11 s in blocks of 2**19-2**21 values and 21-22 s in blocks
# of 2**25-2**26.
BLOCK_VALUES = 2**21


def item_block(rows: int, num_items: int, option: int | None = None) -> int | None:
    """How many items to score at a time for batches of ``rows`` score rows, or None: all at once.

    Args:
        rows: score rows one batch holds (users for evaluation, scored positions for export).
        num_items: the catalogue, N.
        option: the user's ``--item-block``: 0 forces the whole catalogue, a positive count that block
            size; None chooses: the whole catalogue while ``rows x (N + 1)`` is within
            :data:`SCORE_BUDGET`, else blocks of ``BLOCK_VALUES // rows`` items.
    """
    if option == 0:
        return None
    if option is not None:
        return option
    if rows * (num_items + 1) <= SCORE_BUDGET:
        return None
    return max(1, BLOCK_VALUES // max(rows, 1))


@dataclass(frozen=True)
class Blocks:
    """A scorer's scores one block of items at a time: the same values as :attr:`Scorer.last` and
    :attr:`Scorer.dense`, never the whole ``(rows, N + 1)`` matrix.

    Each function opens a batch (runs the model's history side once) and returns a :data:`BlockFn` that
    scores item ids ``start..stop-1`` (``1 <= start < stop <= N + 1``; padding, id 0, is never asked for)
    against it. ``size`` is the largest block the caller will ask for: a scorer that walks the catalogue
    itself when opened (an ensemble computing its members' normalisers) walks it in blocks of that size.

    Attributes:
        last: ``(history (B, L), users, size) -> BlockFn`` of ``(B, stop - start)`` scores after the last
            column.
        dense: ``(history (B, L), users, keep (B, width) bool, size) -> BlockFn`` of ``(M, stop - start)``
            scores at the kept positions of the last ``width`` columns, row-major (``M = keep.sum()``):
            only the positions that are used are scored.
    """

    last: Callable[[torch.Tensor, torch.Tensor | None, int], BlockFn]
    dense: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, int], BlockFn]


def dot_blocks(
    last_query: ScoreFn, dense_query: ScoreFn, items: Callable[[int, int], torch.Tensor]
) -> Blocks:
    """:class:`Blocks` of a scorer whose scores are dot products of a query and an item vector.

    Args:
        last_query: ``(history, users) -> (B, D)``, the query after the last column.
        dense_query: ``(history, users) -> (B, width, D)``, the queries of the last ``width`` columns.
        items: ``(start, stop) -> (stop - start, D)``, the vectors of item ids ``start..stop-1``.
    """

    def last(history: torch.Tensor, users: torch.Tensor | None, size: int) -> BlockFn:
        q = last_query(history, users)  # (B, D)
        return lambda start, stop: q @ items(start, stop).T

    def dense(history: torch.Tensor, users: torch.Tensor | None, keep: torch.Tensor, size: int) -> BlockFn:
        q = dense_query(history, users)  # (B, width, D)
        q = q[keep.to(q.device)]  # (M, D)
        return lambda start, stop: q @ items(start, stop).T

    return Blocks(last=last, dense=dense)


def top_k_in_blocks(
    score: BlockFn, num_items: int, k: int, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` highest scores over items ``1..num_items``, their ids and the scores' ``logsumexp``, in
    one walk over the catalogue holding ``rows x (k + size)`` scores.

    Each block's own top ``k`` is merged with the running one (``topk`` of their concatenation): every
    item of the overall top ``k`` is in its block's top ``k``, so nothing is lost. The ``logsumexp`` is
    folded in as :func:`logsumexp_in_blocks` folds it (the score directory's tail needs it).

    Args:
        score: an opened batch (:class:`Blocks`), ``(start, stop) -> (rows, stop - start)``.
        num_items: the catalogue, N.
        k: items kept per row, ``1 <= k <= num_items``.
        size: items per block.

    Returns:
        ``values`` ``(rows, k)``, descending, their item ``ids`` ``(rows, k)`` int64, and the float32
        ``logsumexp`` ``(rows,)`` of every item's score.
    """
    values = ids = total = None
    for start in range(1, num_items + 1, size):
        stop = min(start + size, num_items + 1)
        block = score(start, stop)  # (rows, n)
        v, i = block.topk(min(k, stop - start), dim=-1)  # (rows, <= k)
        i = i + start
        normaliser = block.float().logsumexp(dim=-1)
        if values is not None:
            v, j = torch.cat([values, v], dim=1).topk(min(k, values.shape[1] + v.shape[1]), dim=-1)
            i = torch.cat([ids, i], dim=1).gather(1, j)
            normaliser = torch.logaddexp(total, normaliser)
        values, ids, total = v, i, normaliser
    return values, ids, total


def logsumexp_in_blocks(score: BlockFn, num_items: int, size: int) -> torch.Tensor:
    """``logsumexp`` of the scores of items ``1..num_items``, in float32, a block at a time: ``(rows,)``.

    The normaliser of a softmax over the catalogue (:func:`torch.log_softmax` subtracts the same), a
    block's ``logsumexp`` folded into the running one with ``logaddexp``.
    """
    total = None
    for start in range(1, num_items + 1, size):
        block = score(start, min(start + size, num_items + 1)).float().logsumexp(dim=-1)
        total = block if total is None else torch.logaddexp(total, block)
    return total


@dataclass(frozen=True)
class Scorer:
    """A model that scores the whole catalogue after a history.

    Attributes:
        kind: the run kind (``student``, ``teacher-moe-lora``, …, ``ensemble``, ``cross-fit``).
        context: history items the model reads (its window).
        width: positions one pass scores: the last ``width`` columns of the window.
        dense: ``(history (B, L), users) -> (B, width, num_items + 1)``: column j scores the item after
            history column ``L - width + j`` (rows of padding columns are meaningless).
        last: ``(history (B, L), users) -> (B, num_items + 1)``: the scores after the last column.
        modules: the torch modules behind it (their parameters are counted, their mode set to eval).
        source: what it was opened from, for the records that name it (a score manifest): its kind and
            run directory, or its members'; paths as :class:`~pathlib.Path`, made relative by the writer.
        blocks: the same scores a block of items at a time (:class:`Blocks`), or None for a scorer that
            only scores the whole catalogue (it then always takes the full path).
    """

    kind: str
    context: int
    width: int
    dense: ScoreFn
    last: ScoreFn
    modules: tuple[nn.Module, ...]
    source: dict = field(default_factory=dict)
    blocks: Blocks | None = None

    @property
    def parameters(self) -> int:
        """Parameters of every module (a teacher's include its frozen backbone), each counted once."""
        seen = {id(p): p.numel() for m in self.modules for p in m.parameters()}
        return sum(seen.values())

    def eval(self) -> Scorer:
        for module in self.modules:
            module.eval()
        return self

    @torch.no_grad()
    def evaluate(
        self,
        data: Dataset,
        split: str,
        batch_size: int,
        users: np.ndarray | None = None,
        block: int | None = None,
    ) -> dict[str, float]:
        """Full-ranking metrics on the ``split`` targets of ``users`` (default all; each rank of a
        multi-process job scores its share, every rank gets the metrics of all). ``block`` is the
        ``--item-block`` option of :func:`item_block`: the metrics are the same either way.

        The users are scored shortest history first (metrics are means over users, so the order does
        not change them): a batch of similar lengths needs little padding, which a model that drops
        all-padding columns (SASRec's :meth:`~student.sasrec.SASRec.user_embedding`) does not compute.
        """
        self.eval()
        users = shard(data.eval_users() if users is None else np.asarray(users, dtype=np.int64))
        starts, ends = data.history_bounds(split)
        users = users[np.argsort(ends[users] - starts[users], kind="stable")]
        batches = data.eval_batches(split, batch_size, self.context, users)
        return evaluate_ranks(self._ranker(data.num_items, batch_size, block), batches)

    @torch.no_grad()
    def ranks(
        self, data: Dataset, split: str, batch_size: int, block: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every user and the 0-based rank of their ``split`` target (:func:`distill.metrics.ranks_of`);
        ``block`` as for :meth:`evaluate`."""
        self.eval()
        batches = data.eval_batches(split, batch_size, self.context)
        return ranks_of(self._ranker(data.num_items, batch_size, block), batches)

    def item_block(self, rows: int, num_items: int, option: int | None = None) -> int | None:
        """:func:`item_block` for this scorer: always None (the whole catalogue) without :attr:`blocks`."""
        return None if self.blocks is None else item_block(rows, num_items, option)

    def _ranker(
        self, num_items: int, batch_size: int, option: int | None
    ) -> Callable[[object], torch.Tensor]:
        """``batch -> (B,)`` ranks of its targets, over the whole catalogue at once or in blocks."""
        size = self.item_block(batch_size, num_items, option)
        if size is None:
            return lambda batch: full_ranks(self._score_batch(batch), batch.targets, batch.seen)
        return lambda batch: block_ranks(
            self.blocks.last(batch.inputs, batch.users, size), num_items, batch.targets, batch.seen, size=size
        )

    @torch.no_grad()
    def ms_per_user(
        self, data: Dataset, split: str, batch_size: int, repeats: int = 5, max_users: int | None = None
    ) -> float:
        """Wall milliseconds to score the whole catalogue for one user, in batches of ``batch_size``: the
        median of ``repeats`` passes over the first ``max_users`` evaluation users (default every one)
        after one warm-up pass (the first pass pays for allocation and kernel selection, which serving
        does once)."""
        self.eval()
        batches = list(data.eval_batches(split, batch_size, self.context, data.eval_users()[:max_users]))
        users = max(sum(len(b.users) for b in batches), 1)
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            for batch in batches:
                self._score_batch(batch)
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times[1:]) / users

    @torch.no_grad()
    def check_finite(self, data: Dataset, where: str | Path) -> Scorer:
        """Refuse (one line) a model whose scores are NaN or infinite: weights that are finite each but
        overflow together. A few users' validation histories are scored; a blown-up model fails on any."""
        self.eval()
        users = data.eval_users()[:8]
        if len(users):
            batch = next(data.eval_batches("valid", len(users), self.context, users))
            if not torch.isfinite(self._score_batch(batch)[:, 1:]).all():
                raise DistillError(
                    f"{where} scores NaN or infinite values (its weights overflow): it cannot rank; "
                    "retrain it, or use an earlier checkpoint"
                )
        return self

    def _score_batch(self, batch) -> torch.Tensor:
        return self.last(batch.inputs, batch.users)
