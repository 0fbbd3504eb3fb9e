"""The embedded default dataset: deterministic synthetic sessions with planted sequential structure.

Items belong to latent interest clusters and have a popularity skew inside their cluster. Every user
has a sparse interest mix over clusters. Each next item is, with fixed probabilities,

- a *successor* of the current item (each item has three successors, the first one most likely),
- a popular item of a cluster that the current item's cluster tends to lead to, or
- a popular item of one of the user's own interest clusters,

so a model that reads order (SASRec, a teacher) beats one that only counts (popularity), and a model
that also knows the user's mix beats one that only sees the last item.

Every item has a title that names its cluster (``"dark night 17"``: two words per cluster, then the
item's id). The interactions only hint at the clusters (a rare item is seen a few times), the titles
state them: a teacher that reads titles knows something an ID-only student cannot learn from the same
interactions, which is what makes distillation pay on this data.
"""

from __future__ import annotations

import numpy as np

P_SUCCESSOR = 0.5
P_TRANSITION = 0.25
SUCCESSOR_WEIGHTS = np.array([0.6, 0.3, 0.1])
MEAN_EXTRA_LENGTH = 16
MIN_LENGTH = 5
MAX_LENGTH = 60


# Cluster names: an adjective and a noun the tiny backbone's word-level vocabulary knows.
ADJECTIVES = "dark light black white red blue green gold silver old new great little big secret lost".split()
NOUNS = "night day star king queen fire water ice heart dream city war love world home house".split()


def cluster_name(cluster: int) -> str:
    """Two words per cluster (a number after them past the 256 pairs)."""
    pair = f"{ADJECTIVES[cluster % 16]} {NOUNS[cluster // 16 % 16]}"
    return pair if cluster < 256 else f"{pair} {cluster // 256}"


def generate(num_users: int, num_items: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Draw the interactions of ``num_users`` users over ``num_items`` items.

    Returns:
        ``(users, items, titles)``: int64 arrays of equal length, ids from 1, users in order and each
        user's items in chronological order; ``titles[i - 1]`` is item i's title, naming its cluster.
    """
    rng = np.random.default_rng(seed)
    num_clusters = max(2, num_items // 25)
    cluster_of = rng.permutation(num_items) % num_clusters  # (N,)

    # Per cluster: members ordered by popularity rank, and the cumulative Zipf weights over them.
    size = np.bincount(cluster_of, minlength=num_clusters)
    members = np.zeros((num_clusters, size.max()), dtype=np.int64)
    cum_pop = np.ones((num_clusters, size.max()))
    by_cluster = np.split(np.argsort(cluster_of, kind="stable"), np.cumsum(size)[:-1])  # ascending ids
    for c in range(num_clusters):
        ids = rng.permutation(by_cluster[c])
        weights = 1.0 / np.arange(1, len(ids) + 1)
        members[c, : len(ids)] = ids
        cum_pop[c, : len(ids)] = np.cumsum(weights) / weights.sum()

    next_cluster = rng.integers(0, num_clusters, size=(num_clusters, 2))
    # Successors come from the item's own cluster or from one it leads to.
    own = rng.random((num_items, 3)) < 0.5  # (N, 3)
    led_to = next_cluster[cluster_of, rng.integers(0, 2, num_items)]  # (N,)
    succ_cluster = np.where(own, cluster_of[:, None], led_to[:, None])
    successors = _popular_item(members, cum_pop, size, succ_cluster.ravel(), rng).reshape(num_items, 3)

    interest = rng.dirichlet(np.full(num_clusters, 0.2), size=num_users)  # (U, C)
    cum_interest = np.cumsum(interest, axis=1)
    del interest
    extra = rng.geometric(1 / MEAN_EXTRA_LENGTH, num_users) - 1
    lengths = np.clip(MIN_LENGTH + extra, MIN_LENGTH, MAX_LENGTH)

    seqs = np.zeros((num_users, lengths.max()), dtype=np.int64)
    rows = np.arange(num_users)

    def from_interest() -> np.ndarray:
        clusters = (cum_interest < rng.random((num_users, 1))).sum(1).clip(max=num_clusters - 1)
        return _popular_item(members, cum_pop, size, clusters, rng)

    current = from_interest()
    for t in range(lengths.max()):
        if t > 0:
            pick = rng.choice(3, size=num_users, p=SUCCESSOR_WEIGHTS)
            by_successor = successors[current, pick]
            by_transition = _popular_item(
                members, cum_pop, size, next_cluster[cluster_of[current], rng.integers(0, 2, num_users)], rng
            )
            r = rng.random(num_users)
            otherwise = np.where(r < P_SUCCESSOR + P_TRANSITION, by_transition, from_interest())
            current = np.where(r < P_SUCCESSOR, by_successor, otherwise)
            # Real logs rarely repeat an item: one redraw from the user's interests on a repeat.
            # (Compared with the user's items so far, not a users x items table: 10^6 items fit.)
            repeat = (seqs[:, :t] == current[:, None]).any(axis=1)
            current = np.where(repeat, from_interest(), current)
        seqs[:, t] = current

    keep = np.arange(lengths.max())[None, :] < lengths[:, None]
    users = np.broadcast_to(rows[:, None] + 1, seqs.shape)[keep]
    titles = [f"{cluster_name(int(c))} {i}" for i, c in enumerate(cluster_of, start=1)]
    return users.astype(np.int64), seqs[keep] + 1, titles


def _popular_item(
    members: np.ndarray, cum_pop: np.ndarray, size: np.ndarray, clusters: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One item per entry of ``clusters``, drawn by popularity within that cluster."""
    idx = (cum_pop[clusters] < rng.random((len(clusters), 1))).sum(1)
    return members[clusters, np.minimum(idx, size[clusters] - 1)]
