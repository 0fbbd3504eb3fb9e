"""Using a trained run (a student, or any run that scores): top-k recommendations for histories of raw
item ids.

:class:`Recommender` is what ``distill recommend``, ``distill serve`` and Python callers share. Raw ids
(the ids of the input files, as strings) go in and come out; the dataset directory translates them.

- Unknown raw item ids are dropped from a history and reported beside the recommendations.
- Items already in the history are not recommended (unless asked), however long the history: the
  model reads its last ``max_len`` items, the exclusion uses all of them.
- A history that is empty (or empty once unknown ids are dropped) gets the most popular items, by
  interactions in the whole dataset (ties: the lower item id first), and says so (``popular``); their
  scores are those counts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from distill.data import Dataset
from distill.errors import DistillError
from distill.outputs import STUDENT
from distill.runs import run_dataset
from distill.scoring import Scorer
from pipeline.config import RecommendConfig
from pipeline.index import ItemIndex
from pipeline.runs import open_run


@dataclasses.dataclass(frozen=True)
class Recommendations:
    """Top-k items for a batch of histories, best first; one list per history.

    Attributes:
        items: raw item ids.
        scores: the model's scores of those items (interaction counts where ``popular``).
        titles: item titles, None where the dataset has none.
        unknown: raw ids of each history that the dataset does not know (dropped before scoring).
        popular: True where the history was empty, so the items are the most popular ones.
    """

    items: list[list[str]]
    scores: list[list[float]]
    titles: list[list[str | None]]
    unknown: list[list[str]]
    popular: list[bool]

    def as_dicts(self) -> list[dict]:
        """One JSON-ready dictionary per history."""
        return [
            {
                "items": [
                    {"item": item, "score": score, "title": title}
                    for item, score, title in zip(items, scores, titles, strict=True)
                ],
                "unknown": unknown,
                "popular": popular,
            }
            for items, scores, titles, unknown, popular in zip(
                self.items, self.scores, self.titles, self.unknown, self.popular, strict=True
            )
        ]


class Recommender:
    """A model with its dataset's vocabulary: raw item ids in, top-k raw item ids out.

    Args:
        scorer: a loaded run (put in eval mode here), e.g. from :func:`pipeline.runs.open_run`.
        data: the dataset it was trained on (vocabulary, titles, users, popularity).
    """

    def __init__(self, scorer: Scorer, data: Dataset, index: str = "none") -> None:
        self.scorer = scorer.eval()
        self.data = data
        self.index = None
        if index != "none":  # a student's item table in a vector index: see pipeline.index
            if scorer.kind != STUDENT:
                raise DistillError(
                    f"--index {index} retrieves a student's items; this run is a {scorer.kind}"
                )
            (model,) = scorer.modules  # a student scorer's one module is its SASRec
            self.index = ItemIndex(model.item_embeddings()[1:].detach().float().cpu().numpy(), index)
        counts = np.bincount(data.items, minlength=data.num_items + 1)[1:]  # (N,) interactions per item
        order = np.argsort(-counts, kind="stable")  # fixed order among ties, whatever the batch
        self.popular_items = (order + 1).tolist()  # item ids, most popular first
        self.popular_counts = counts[order].astype(float).tolist()

    @classmethod
    def load(
        cls,
        run: str | Path,
        data: str | Path | Dataset | None = None,
        device: str | torch.device = "cpu",
        index: str = "none",
    ) -> Recommender:
        """The model of a run (a student, a teacher: any kind :func:`pipeline.runs.open_run` opens),
        checked against its dataset.

        Args:
            run: the run directory.
            data: a dataset directory or :class:`Dataset`; default: the directory the run records.
            device: where to score.
            index: ``none`` (score every item), or ``exact`` / ``hnsw``: a student's top-k from a
                vector index (:class:`pipeline.index.ItemIndex`).
        """
        dataset = data if isinstance(data, Dataset) else run_dataset(run, data)
        return cls(open_run(run, dataset, device), dataset, index)

    @property
    def num_items(self) -> int:
        return self.data.num_items

    @property
    def max_len(self) -> int:
        return self.scorer.context

    def user_history(self, raw_user: str) -> list[str]:
        """A dataset user's whole history (train, validation and test items) as raw item ids.

        Raises:
            DistillError: the dataset has no user ``raw_user``.
        """
        user = self.data.user_id(raw_user)
        if user is None:
            raise DistillError(f"unknown user {raw_user!r}: {self.data.path} has no such raw user id")
        return [self.data.raw_item(int(i)) for i in self.data.sequence(user)]

    @torch.inference_mode()
    def recommend(
        self, histories: Sequence[Sequence[str | int]], k: int = 10, exclude_seen: bool = True
    ) -> Recommendations:
        """Top-``k`` items after each history.

        Args:
            histories: raw item ids per user, oldest first (ints are read as their decimal string).
            k: items per history; fewer come back when the catalogue (less the history) is smaller.
            exclude_seen: leave out the items of each history.

        Returns:
            :class:`Recommendations`, one entry per history, in order.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        ids, unknown = [], []
        for history in histories:
            known, missing = [], []
            for raw in history:
                item = self.data.item_id(str(raw))
                if item is None:
                    missing.append(str(raw))
                else:
                    known.append(item)
            ids.append(known)
            unknown.append(missing)
        B = len(ids)
        if B == 0:
            return Recommendations([], [], [], [], [])
        popular = [not h for h in ids]

        width = max(1, min(self.max_len, max(len(h) for h in ids)))
        inputs = np.zeros((B, width), dtype=np.int64)  # left-padded, the last `width` items
        for row, history in enumerate(ids):
            tail = history[-width:]
            if tail:
                inputs[row, width - len(tail) :] = tail
        if self.index is not None:
            (model,) = self.scorer.modules
            queries = model.user_embedding(
                torch.from_numpy(inputs).to(model.item_emb.weight.device)
            )  # (B, d)
            top_items, top_scores = self.index.search(
                queries.float().cpu().numpy(), k, ids if exclude_seen else ()
            )
        else:
            scores = self.scorer.last(torch.from_numpy(inputs), None).float()  # (B, N + 1)
            scores[:, 0] = float("-inf")  # padding
            if exclude_seen:
                seen = np.zeros(
                    (B, max(1, max(len(h) for h in ids))), dtype=np.int64
                )  # 0 = pad, masked anyway
                for row, history in enumerate(ids):
                    seen[row, : len(history)] = history
                scores.scatter_(1, torch.from_numpy(seen).to(scores.device), float("-inf"))
            top_scores, top_items = scores.topk(min(k, self.num_items), dim=1)  # (B, k)
            top_scores, top_items = top_scores.cpu().tolist(), top_items.cpu().tolist()

        items, values, titles = [], [], []
        for row_scores, row_items, fallback in zip(top_scores, top_items, popular, strict=True):
            if fallback:  # nothing seen, nothing to mask
                row_items, row_scores = self.popular_items[:k], self.popular_counts[:k]
            kept = [(i, s) for i, s in zip(row_items, row_scores, strict=True) if s != float("-inf")]
            items.append([self.data.raw_item(i) for i, _ in kept])
            values.append([s for _, s in kept])
            titles.append([self.data.title(i) for i, _ in kept])
        return Recommendations(items, values, titles, unknown, popular)


def split_history(text: str) -> list[str]:
    """Raw item ids from a command-line string: separated by spaces or commas."""
    return text.replace(",", " ").split()


def run(cfg: RecommendConfig) -> tuple[Recommendations, list[str]]:
    """``distill recommend``: the recommendations for ``cfg``'s user or history, and that history."""
    recommender = Recommender.load(cfg.run, cfg.data, cfg.device, cfg.index)
    history = recommender.user_history(cfg.user) if cfg.user is not None else split_history(cfg.history)
    return recommender.recommend([history], cfg.k, exclude_seen=not cfg.include_seen), history


def format_recommendations(recs: Recommendations, as_json: bool = False) -> str:
    """The first (only) entry of ``recs`` as a table (rank, item, score, title) or as JSON."""
    entry = recs.as_dicts()[0]
    if as_json:
        return json.dumps(entry, ensure_ascii=False)
    lines = []
    if entry["unknown"]:
        lines.append(f"unknown items, ignored: {' '.join(entry['unknown'])}")
    if entry["popular"]:
        lines.append("empty history: the most popular items (score = interactions)")
    width = max([len(r["item"]) for r in entry["items"]] + [4])
    lines.append(f"{'rank':>4}  {'item':<{width}}  {'score':>9}  title")
    for rank, r in enumerate(entry["items"], start=1):
        lines.append(f"{rank:>4}  {r['item']:<{width}}  {r['score']:>9.4g}  {r['title'] or ''}".rstrip())
    return "\n".join(lines)
