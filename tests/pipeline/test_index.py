"""Retrieval by a vector index (``recommend`` / ``serve --index``): the exact index returns the same
top-k as scoring every item, seen items excluded; HNSW finds nearly all of it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.errors import DistillError
from pipeline.index import ItemIndex
from pipeline.recommend import Recommender

pytest.importorskip("faiss")


def test_exact_index_is_exact_top_k_with_exclusions():
    rng = np.random.default_rng(0)
    vectors, queries = rng.normal(size=(500, 16)), rng.normal(size=(20, 16))
    exclude = [rng.choice(500, size=int(rng.integers(0, 30)), replace=False) + 1 for _ in range(20)]
    items, scores = ItemIndex(vectors, "exact").search(queries, 10, exclude)
    full = queries @ vectors.T  # (20, 500): column j is item j + 1
    for row, skip in enumerate(exclude):
        full[row, skip - 1] = -np.inf
        expected = np.argsort(-full[row], kind="stable")[:10] + 1
        assert items[row] == expected.tolist()
        np.testing.assert_allclose(scores[row], full[row, expected - 1], rtol=1e-5)
        assert not set(items[row]) & set(skip.tolist())


def test_hnsw_recall_on_a_small_catalogue():
    rng = np.random.default_rng(1)
    vectors, queries = rng.normal(size=(5000, 32)), rng.normal(size=(100, 32))
    exact, _ = ItemIndex(vectors, "exact").search(queries, 10)
    approx, _ = ItemIndex(vectors, "hnsw").search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95, recall


def test_recommender_with_an_index_answers_as_scoring_does(ring_run):
    run, data = ring_run
    plain, indexed = Recommender.load(run, data), Recommender.load(run, data, index="exact")
    histories = [["m3", "m4"], ["m6", "m3", "m4", "m5"], [], ["nope"], ["m1"]]
    for exclude_seen in (True, False):
        a = plain.recommend(histories, k=5, exclude_seen=exclude_seen)
        b = indexed.recommend(histories, k=5, exclude_seen=exclude_seen)
        assert a.items == b.items and a.popular == b.popular and a.unknown == b.unknown
        np.testing.assert_allclose(np.array(a.scores), np.array(b.scores), rtol=1e-5)


def test_an_index_is_for_a_student(ring_run):
    run, data = ring_run
    scorer = Recommender.load(run, data).scorer
    teacher_like = type(scorer)(
        "teacher-moe-lora", scorer.context, scorer.width, scorer.dense, scorer.last, scorer.modules
    )
    with pytest.raises(DistillError, match="retrieves a student's items"):
        Recommender(teacher_like, Recommender.load(run, data).data, index="hnsw")


def test_unknown_index_kind():
    with pytest.raises(DistillError, match="unknown index 'ivf'"):
        ItemIndex(np.zeros((10, 4)), "ivf")


def test_cli_recommend_with_an_index_prints_what_scoring_prints(ring_run):
    from click.testing import CliRunner

    from cli import main

    run, _ = ring_run
    args = ["recommend", "--run", str(run), "--history", "m3 m4", "--k", "3", "--json"]
    plain = CliRunner().invoke(main, args)
    for kind in ("exact", "hnsw"):
        indexed = CliRunner().invoke(main, [*args, "--index", kind])
        assert indexed.exit_code == 0, indexed.output
        assert (
            json.loads(indexed.output)["items"][0]["item"]
            == json.loads(plain.output)["items"][0]["item"]
            == "m5"
        )
