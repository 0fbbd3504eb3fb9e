"""Retrieval by index at 10⁴–10⁶ items: recall@10 of HNSW against exact search, and one user's latency.

For each catalogue size, item vectors and query vectors of dimension ``--dim`` are drawn, either
``clustered`` (a mixture of 256 Gaussian clusters, queries near one cluster each: the structure a
trained recommender's embeddings have) or ``gaussian`` (isotropic: no structure, the hardest case for a
graph index). Three ways to answer one user's top 10 with their 20 seen items excluded (the
``distill recommend`` / ``serve`` path of :class:`pipeline.index.ItemIndex`):

- ``scan``: ``q @ E.T`` in torch and a top-k over every item (what ``--index none`` does per request);
- ``exact``: faiss's flat inner-product index (the same answer, faiss's kernel);
- ``hnsw``: faiss HNSW, ``m`` 32, ``ef_search`` 128 (what ``--index hnsw`` builds).

Recall@10 is the share of the exact top 10 (seen excluded) that HNSW returns, over ``--queries``
queries; latency is per single query (batch 1, one thread), p50 and p99 over the same queries after
one warm-up query. Writes ``bench/results/index_recall.md``.

    python -m bench.index_recall [--sizes 10000,100000,1000000] [--dim 64] [--queries 300]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np
import torch

from pipeline.index import ItemIndex

RESULTS = os.path.join(os.path.dirname(__file__), "results", "index_recall.md")
SEEN = 20


def draw(
    kind: str, n: int, queries: int, dim: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, dim)`` item vectors and ``(queries, dim)`` query vectors, float32."""
    if kind == "gaussian":
        return (
            rng.standard_normal((n, dim), dtype=np.float32),
            rng.standard_normal((queries, dim), dtype=np.float32),
        )
    centres = rng.standard_normal((256, dim), dtype=np.float32) * 2
    items = centres[rng.integers(0, 256, n)] + rng.standard_normal((n, dim), dtype=np.float32)
    users = centres[rng.integers(0, 256, queries)] + rng.standard_normal((queries, dim), dtype=np.float32)
    return items, users


def latencies(answer, queries: np.ndarray) -> np.ndarray:
    """Milliseconds per single query (after one warm-up)."""
    answer(queries[:1])
    times = []
    for q in queries:
        started = time.perf_counter()
        answer(q[None])
        times.append(1000 * (time.perf_counter() - started))
    return np.array(times)


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--kinds", default="clustered,gaussian")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for kind in args.kinds.split(","):
        for n in map(int, args.sizes.split(",")):
            rng = np.random.default_rng(0)
            items, queries = draw(kind, n, args.queries, args.dim, rng)
            seen = [rng.choice(n, SEEN, replace=False) + 1 for _ in range(args.queries)]
            table = torch.from_numpy(items)

            one = seen[:1]  # the seen items every timed query excludes

            def scan(q: np.ndarray, table: torch.Tensor = table, one: list = one) -> None:
                scores = torch.from_numpy(q) @ table.T  # (1, n)
                scores[0, torch.from_numpy(one[0] - 1)] = float("-inf")
                scores.topk(10, dim=1)

            built = {}
            for index_kind in ("exact", "hnsw"):
                started = time.perf_counter()
                built[index_kind] = ItemIndex(items, index_kind)
                built[f"{index_kind} build s"] = time.perf_counter() - started
            exact, _ = built["exact"].search(queries, 10, seen)
            approx, _ = built["hnsw"].search(queries, 10, seen)
            recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)]))
            row = {"kind": kind, "items": n, "recall@10": recall}
            for name, answer in (
                ("scan", scan),
                ("exact", lambda q, ix=built["exact"], one=one: ix.search(q, 10, one)),
                ("hnsw", lambda q, ix=built["hnsw"], one=one: ix.search(q, 10, one)),
            ):
                ms = latencies(answer, queries)
                row[f"{name} p50"], row[f"{name} p99"] = float(np.median(ms)), float(np.percentile(ms, 99))
            row["hnsw build s"] = built["hnsw build s"]
            rows.append(row)
            print(row, flush=True)
    write(rows, args, before)


def write(rows: list[dict], args: argparse.Namespace, before: tuple[float, float, float]) -> None:
    """``before``: the load average when the benchmark began."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Retrieval by index: HNSW recall@10 against exact search, and one user's latency",
        "",
        f"- command: `python -m bench.index_recall --sizes {args.sizes} --dim {args.dim} "
        f"--queries {args.queries} --kinds {args.kinds}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPU cores; load average "
        f"{before[0]:.2f} before, (1, 5, 15 min) {load} when written (the machine was shared: latencies "
        "are upper bounds)",
        "- one query at a time, one thread; top 10 with 20 seen items excluded; d = "
        f"{args.dim}; HNSW m 32, ef_search 128, ef_construction 64 (`pipeline.index.ItemIndex`)",
        "",
        "| vectors | items | HNSW recall@10 | scan p50 / p99 ms | exact p50 / p99 ms | HNSW p50 / p99 ms | "
        "HNSW build s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['items']:,} | {r['recall@10']:.3f} "
            f"| {r['scan p50']:.2f} / {r['scan p99']:.2f} "
            f"| {r['exact p50']:.2f} / {r['exact p99']:.2f} | {r['hnsw p50']:.3f} / {r['hnsw p99']:.3f} "
            f"| {r['hnsw build s']:.0f} |"
        )
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
