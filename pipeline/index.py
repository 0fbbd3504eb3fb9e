"""Retrieval by a vector index: a student's top-k items without scoring the whole catalogue.

A SASRec student scores item ``j`` after a history as the dot product of the history's query vector
(its last state, :meth:`student.sasrec.SASRec.user_embedding`) with the item's vector (the tied item
table). Exact top-k is then a maximum-inner-product search, which an index answers without touching
every item per request:

- ``exact``: faiss's flat inner-product index, every item compared (the same top-k as scoring, found by
  faiss's blocked matrix product; for small catalogues, and as the reference for the approximate one);
- ``hnsw``: a hierarchical navigable small-world graph over the item vectors (faiss ``IndexHNSWFlat``
  with the inner-product metric, ``m`` links per node, ``ef_search`` candidates kept per query): about
  ``log N`` hops per query instead of ``N`` products, at a recall below 1 that ``bench/catalogue_scale``
  measures against ``exact``.

Seen items are excluded by asking the index for ``k`` plus the history's distinct items and dropping
those (a history's items can take at most that many of the top places), so the answer is the top ``k``
unseen items whenever the index's own answer is. Needs the ``index`` extra (``faiss-cpu``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from distill.errors import DistillError

IndexKind = Literal["none", "exact", "hnsw"]
INDEX_KINDS: tuple[str, ...] = ("none", "exact", "hnsw")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise DistillError("retrieval by index needs the index extra: pip install 'distill[index]'") from None
    return faiss


class ItemIndex:
    """Item vectors in a faiss index that returns item ids ``1..N`` by inner product.

    Args:
        vectors: ``(N, d)`` float32, row ``i`` the vector of item id ``i + 1``.
        kind: ``"exact"`` or ``"hnsw"`` (see the module docstring).
        m: HNSW links per node (more: higher recall, more memory, slower build).
        ef_search: HNSW candidates kept while searching (more: higher recall, slower queries).
        threads: faiss threads (one request is small; serving keeps the default of 1).
    """

    def __init__(
        self, vectors: np.ndarray, kind: str = "exact", m: int = 32, ef_search: int = 128, threads: int = 1
    ) -> None:
        faiss = _faiss()
        faiss.omp_set_num_threads(threads)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.num_items, dim = vectors.shape
        self.kind = kind
        if kind == "exact":
            self.index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = max(2 * m, 40)
            self.index.hnsw.efSearch = ef_search
        else:
            raise DistillError(f"unknown index {kind!r} (expected exact or hnsw)")
        self.index.add(vectors)

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] = ()
    ) -> tuple[list[list[int]], list[list[float]]]:
        """The top ``k`` item ids (and their scores, descending) for each query ``(B, d)``, leaving out the
        ids of ``exclude[b]`` for query ``b`` (fewer come back when the catalogue runs out)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        seen = [set(map(int, e)) for e in exclude] or [set() for _ in range(len(queries))]
        ask = min(self.num_items, k + max((len(s) for s in seen), default=0))
        scores, rows = self.index.search(queries, ask)  # (B, ask); row -1 where the index found fewer
        items, values = [], []
        for row_ids, row_scores, skip in zip(rows, scores, seen, strict=True):
            kept = [(int(r) + 1, float(s)) for r, s in zip(row_ids, row_scores, strict=True) if r >= 0]
            kept = [(i, s) for i, s in kept if i not in skip][:k]
            items.append([i for i, _ in kept])
            values.append([s for _, s in kept])
        return items, values
