"""Reading a dataset directory: leave-one-out views, padded batches, ``window``, titles."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from distill import prepare
from distill.config import PrepareConfig
from distill.data import Dataset, window
from distill.errors import DistillError

# Raw ids are 1..8, so prepared item ids equal raw ids and users are numbered 0, 1, 2.
SEQUENCES = [[1, 2, 3], [4, 5, 6, 7, 8], [2, 4, 6, 8, 1, 3, 5, 7]]
TITLES = {1: "One", 2: "Two", 5: "Five"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("tiny")
    (root / "data.txt").write_text("".join(f"{u} {i}\n" for u, seq in enumerate(SEQUENCES) for i in seq))
    (root / "items.tsv").write_text("item_id\ttitle\n" + "".join(f"{i}\t{t}\n" for i, t in TITLES.items()))
    prepare.run(
        PrepareConfig(
            inputs=(str(root / "data.txt"),), items=str(root / "items.tsv"), output=str(root / "ds")
        )
    )
    return Dataset(root / "ds")


def test_opens_what_prepare_wrote(tiny, synthetic_dataset):
    assert (tiny.num_users, tiny.num_items) == (3, 8)
    assert [tiny.sequence(u).tolist() for u in range(3)] == SEQUENCES
    assert tiny.lengths.tolist() == [3, 5, 8]
    assert tiny.fingerprint == tiny.meta["fingerprint"]
    ds = Dataset(synthetic_dataset)
    assert ds.items.min() >= 1 and ds.items.max() == ds.num_items
    assert len(ds.lengths) == ds.num_users and ds.lengths.sum() == ds.meta["num_interactions"]


def views(ds: Dataset, split: str) -> list[list[int]]:
    starts, ends = ds.history_bounds(split)
    return [ds.items[s:e].tolist() for s, e in zip(starts, ends, strict=True)]


def test_leave_one_out_views(tiny):
    assert views(tiny, "train") == [seq[:-2] for seq in SEQUENCES]
    assert views(tiny, "valid") == [seq[:-2] for seq in SEQUENCES]
    assert views(tiny, "test") == [seq[:-1] for seq in SEQUENCES]
    assert tiny.eval_users().tolist() == [0, 1, 2]


def test_eval_batches_targets_history_and_seen(tiny):
    for split, holdout in (("valid", 2), ("test", 1)):
        (batch,) = list(tiny.eval_batches(split, batch_size=10, max_len=3))
        assert batch.users.tolist() == [0, 1, 2]
        assert batch.targets.tolist() == [seq[-holdout] for seq in SEQUENCES]
        for row, seq in enumerate(SEQUENCES):
            history = seq[:-holdout]
            last = history[-3:]
            assert batch.inputs[row].tolist() == [0] * (3 - len(last)) + last
            # seen holds the whole history, not only the last max_len items
            assert sorted(x for x in batch.seen[row].tolist() if x) == sorted(history)
        assert batch.seen.shape[1] == max(len(seq) - holdout for seq in SEQUENCES)


def test_eval_batches_subset_and_batching(tiny):
    batches = list(tiny.eval_batches("test", batch_size=1, max_len=4, users=np.array([2, 0])))
    assert [b.users.tolist() for b in batches] == [[2], [0]]
    assert [b.targets.tolist() for b in batches] == [[7], [3]]
    assert batches[1].seen.tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="split"):
        next(tiny.eval_batches("train", batch_size=1, max_len=4))


def test_train_batches_alignment_and_left_padding(tiny):
    batch = next(iter(tiny.train_batches(batch_size=10, max_len=3)))
    inputs, targets = batch.inputs, batch.targets
    rows = sorted(zip(map(tuple, inputs.tolist()), map(tuple, targets.tolist()), strict=True))
    # User 0's train sequence [1] has nothing to predict; user 1's is [4, 5, 6]; user 2's is
    # [2, 4, 6, 8, 1, 3] and longer than max_len, so the LAST items are kept.
    assert rows == [((0, 4, 5), (0, 5, 6)), ((6, 8, 1), (8, 1, 3))]
    assert inputs.dtype == targets.dtype == torch.int64


def expected_train_rows(ds: Dataset, max_len: int) -> Counter:
    """A naive per-user reference of what ``train_batches`` should yield."""
    rows = Counter()
    for u in range(ds.num_users):
        train = ds.sequence(u)[:-2].tolist()
        if len(train) < 2:
            continue
        inp, tgt = train[:-1][-max_len:], train[1:][-max_len:]
        pad = [0] * (max_len - len(inp))
        rows[(tuple(pad + inp), tuple(pad + tgt))] += 1
    return rows


@pytest.mark.parametrize("length_group", [1, 3])
def test_every_eligible_user_once_per_epoch(synthetic_dataset, length_group):
    ds = Dataset(synthetic_dataset)
    seen = Counter()
    sizes = []
    for batch in ds.train_batches(
        batch_size=7, max_len=5, generator=torch.Generator().manual_seed(0), length_group=length_group
    ):
        inputs, targets = batch.inputs, batch.targets
        # as wide as the longest input in the batch, never wider than max_len
        assert inputs.shape == targets.shape and inputs.shape[1] <= 5 and (inputs[:, 0] != 0).any()
        # index locates every target in the flat item array, -1 at padding
        real = batch.index >= 0
        assert torch.equal(real, targets != 0)
        assert torch.equal(torch.from_numpy(ds.items)[batch.index[real]], targets[real])
        sizes.append(len(inputs))
        pad = torch.zeros(len(inputs), 5 - inputs.shape[1], dtype=torch.int64)
        inputs, targets = torch.cat([pad, inputs], 1), torch.cat([pad, targets], 1)
        seen.update(zip(map(tuple, inputs.tolist()), map(tuple, targets.tolist()), strict=True))
    assert seen == expected_train_rows(ds, 5)
    assert sorted(sizes)[1:] == [7] * (len(sizes) - 1) and 1 <= min(sizes) <= 7


def test_length_groups_cut_padding_and_stay_random(synthetic_dataset):
    ds = Dataset(synthetic_dataset)

    def epoch(length_group: int, seed: int = 0) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return [b.inputs for b in ds.train_batches(16, 30, generator=gen, length_group=length_group)]

    def padded_cells(batches: list[torch.Tensor]) -> int:
        return sum(int((b == 0).sum()) for b in batches)

    assert padded_cells(epoch(8)) < 0.5 * padded_cells(epoch(1))
    first, again, other = epoch(8), epoch(8), epoch(8, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # Another seed draws other groups, not just another order of the same batches.
    assert {tuple(b[:, -1].tolist()) for b in first} != {tuple(b[:, -1].tolist()) for b in other}
    with pytest.raises(ValueError, match="length_group"):
        next(ds.train_batches(16, 30, length_group=0))


def test_train_batches_deterministic_for_seeded_generator(synthetic_dataset):
    ds = Dataset(synthetic_dataset)

    def epoch(seed: int) -> list[list[list[int]]]:
        gen = torch.Generator().manual_seed(seed)
        return [b.inputs.tolist() for b in ds.train_batches(batch_size=8, max_len=4, generator=gen)]

    assert epoch(1) == epoch(1)
    assert epoch(1) != epoch(2)


def test_window_against_naive_reference():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 9, size=30)
    flat = rng.integers(1, 50, size=int(lengths.sum()) + 1)  # + 1 so empty rows at the end still index
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ends = starts + lengths
    for length in (1, 3, 8, 12):
        expected = []
        for s, e in zip(starts, ends, strict=True):
            last = flat[s:e].tolist()[-length:]
            expected.append([0] * (length - len(last)) + last)
        got = window(flat, starts, ends, length)
        assert got.dtype == np.int64 and got.shape == (30, length)
        assert got.tolist() == expected


def test_titles(tiny):
    assert tiny.has_titles
    expected = [None, "One", "Two", None, None, "Five", None, None, None, None]  # ids 0..9; 0 is padding
    assert [tiny.title(i) for i in range(10)] == expected
    assert tiny.raw_item(8) == "8"


@pytest.mark.parametrize("damage", ["no_dir", "no_meta", "bad_json", "no_parquet", "wrong_counts"])
def test_broken_dataset_directories(tiny, tmp_path, damage):
    path = tmp_path / "ds"
    if damage != "no_dir":
        shutil.copytree(tiny.path, path)
    meta = json.loads((tiny.path / "meta.json").read_text())
    if damage == "no_meta":
        (path / "meta.json").unlink()
    elif damage == "bad_json":
        (path / "meta.json").write_text("{")
    elif damage == "no_parquet":
        (path / "sequences.parquet").unlink()
    elif damage == "wrong_counts":
        (path / "meta.json").write_text(json.dumps({**meta, "num_users": 4}))
    with pytest.raises(DistillError, match=re.escape(str(path))):
        Dataset(path)


@pytest.mark.parametrize("per_user", [1, 3, None])
def test_prefix_samples_against_a_naive_reference(synthetic_dataset, per_user):
    ds = Dataset(synthetic_dataset)
    expected = []
    for u in range(ds.num_users):
        train = ds.sequence(u)[:-2].tolist()
        targets = list(range(1, len(train)))
        for position in targets if per_user is None else targets[-per_user:]:
            history = train[:position][-4:]
            expected.append((u, position, [0] * (4 - len(history)) + history, train[position]))
    samples = ds.prefix_samples(per_user, 4)
    got = list(
        zip(
            samples.users.tolist(),
            samples.position.tolist(),
            samples.histories.tolist(),
            samples.targets.tolist(),
            strict=True,
        )
    )
    assert got == expected


@pytest.mark.parametrize(("width", "context", "last"), [(3, 5, None), (4, 4, None), (3, 6, 5), (1, 4, None)])
def test_dense_windows_score_every_target_once_with_its_history(synthetic_dataset, width, context, last):
    ds = Dataset(synthetic_dataset)
    w = ds.train_windows(width, context, last=last)
    expected = {
        (u, p)
        for u in range(ds.num_users)
        for p in range(1, len(ds.sequence(u)) - 2)
        if last is None or p >= len(ds.sequence(u)) - 2 - last
    }
    scored = [(int(u), int(p)) for u, row in zip(w.users, w.position, strict=True) for p in row if p >= 0]
    assert sorted(scored) == sorted(expected)  # each once
    for s in range(len(w.users)):
        train = ds.sequence(w.users[s])[:-2].tolist()
        for j in range(width):
            p = w.position[s, j]
            if p < 0:
                assert w.targets[s, j] == 0
                continue
            assert w.targets[s, j] == train[p]
            # the column scoring position p holds item p - 1, with the items before it to its left
            history = w.histories[s, : context - width + j + 1].tolist()
            before = train[:p][-len(history) :]
            assert history == [0] * (len(history) - len(before)) + before
