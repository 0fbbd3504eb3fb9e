"""``Recommender`` and ``distill recommend`` on a student that learnt a ring (item i -> item i + 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from distill.data import Dataset
from pipeline.recommend import Recommender
from tests.conftest import RING, successor


@pytest.fixture(scope="module")
def recommender(ring_run) -> Recommender:
    run, data = ring_run
    return Recommender.load(run, data)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("last", [0, 4, 7, 11])
def test_known_history_gives_the_planted_successor(recommender, last):
    history = [f"m{(last - 2) % RING}", f"m{(last - 1) % RING}", f"m{last}"]
    recs = recommender.recommend([history], k=3)
    assert recs.items[0][0] == successor(f"m{last}")
    assert recs.scores[0] == sorted(recs.scores[0], reverse=True)
    assert recs.unknown == [[]] and recs.popular == [False]


def test_seen_items_are_excluded(recommender):
    history = ["m6", "m3", "m4", "m5"]
    every = recommender.recommend([history], k=RING)  # asks for more than is left
    assert sorted(every.items[0]) == sorted({f"m{i}" for i in range(RING)} - set(history))
    free = recommender.recommend([history], k=RING, exclude_seen=False)
    assert len(free.items[0]) == RING
    assert every.items[0] == [item for item in free.items[0] if item not in history]


def test_unknown_ids_are_dropped_and_reported(recommender):
    plain = recommender.recommend([["m3", "m4"]], k=5)
    mixed = recommender.recommend([["nope", "m3", 42, "m4"]], k=5)
    assert mixed.unknown == [["nope", "42"]]
    assert mixed.items == plain.items
    np.testing.assert_allclose(mixed.scores, plain.scores, rtol=1e-5)


@pytest.mark.parametrize("history", [[], ["nope"]])
def test_empty_history_gets_the_most_popular_items(recommender, ring_run, history):
    data = Dataset(ring_run[1])
    counts = np.bincount(data.items, minlength=data.num_items + 1)[1:]
    recs = recommender.recommend([history], k=4)
    assert recs.popular == [True]
    assert recs.scores[0] == sorted(counts, reverse=True)[:4]
    assert [counts[data.item_id(item) - 1] for item in recs.items[0]] == recs.scores[0]


def test_a_batch_equals_one_history_at_a_time(recommender):
    histories = [["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9", "m10"], ["m5"], [], ["m0", "x"]]
    batch = recommender.recommend(histories, k=4)
    for i, history in enumerate(histories):
        alone = recommender.recommend([history], k=4)
        assert alone.items[0] == batch.items[i] and alone.unknown[0] == batch.unknown[i]
        np.testing.assert_allclose(alone.scores[0], batch.scores[i], rtol=1e-4, atol=1e-5)


def test_a_user_is_recommended_after_their_whole_history(recommender):
    history = recommender.user_history("u5")
    assert len(history) == 5 + 5 % 7 and history[0] == "m5"
    assert recommender.recommend([history], k=1).items == [[successor(history[-1])]]


def test_cli_recommend_history_and_user(ring_run):
    run, data = ring_run
    result = invoke("recommend", "--run", run, "--data", data, "--history", "m2 m3,nope m4", "--k", 2)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "unknown items, ignored: nope"
    assert lines[2].split()[:2] == ["1", "m5"]
    result = invoke("recommend", "--run", run, "--user", "u3", "--k", 3, "--json")  # data from the run
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["items"][0]["item"] == successor(f"m{(3 + 7) % RING}")  # u3 walks m3 .. m10
    assert len(answer["items"]) == 3 and answer["unknown"] == [] and answer["popular"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "u999"], "unknown user 'u999'"),
        (["--user", "u1", "--history", "m1"], "either --user RAW_USER or --history"),
        ([], "either --user RAW_USER or --history"),
        (["--history", "m1", "--k", "0"], "k must be at least 1"),
    ],
)
def test_cli_recommend_errors_are_one_line(ring_run, args, message):
    result = invoke("recommend", "--run", ring_run[0], *args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [result.output.strip()] and message in result.output
    assert "Traceback" not in result.output


def test_help_of_the_new_commands_does_not_import_torch():
    code = (
        "import sys, cli\n"
        "from click.testing import CliRunner\n"
        "for command in ('recommend', 'export-model', 'serve'):\n"
        "    result = CliRunner().invoke(cli.main, [command, '--help'])\n"
        "    assert result.exit_code == 0, result.output\n"
        "assert 'torch' not in sys.modules, 'distill --help imported torch'\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
