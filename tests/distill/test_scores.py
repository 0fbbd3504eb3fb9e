"""The score directory: write, read back, refuse what does not match."""

import json

import numpy as np
import polars as pl
import pytest
import torch

from distill import scores as scores_module
from distill.data import Dataset
from distill.errors import DistillError
from distill.scores import ScoreWriter, read_scores


def fake_rows(data, k, per_user=2, seed=0):
    samples = data.prefix_samples(per_user, 5)
    rng = np.random.default_rng(seed)
    items = np.stack(
        [rng.choice(np.arange(1, data.num_items + 1), k, replace=False) for _ in samples.targets]
    )
    logits = np.sort(rng.random((len(samples.targets), k)).astype(np.float32), axis=1)[:, ::-1].copy()
    return samples, items, logits


def manifest(data, k):
    return {
        "teacher": {"kind": "test"},
        "dataset": {"fingerprint": data.fingerprint, "num_items": data.num_items},
        "k": k,
        "positions": "last 2 per user",
    }


def write(path, data, k=5, **kwargs):
    samples, items, logits = fake_rows(data, k, **kwargs)
    with ScoreWriter(path, manifest(data, k)) as writer:
        half = len(items) // 2
        writer.write(samples.users[:half], samples.position[:half], items[:half], logits[:half])
        writer.write(samples.users[half:], samples.position[half:], items[half:], logits[half:])
    return samples, items, logits


@pytest.mark.parametrize("values_per_shard", [1 << 24, 37])
def test_round_trip_and_lookup(synthetic_dataset, tmp_path, monkeypatch, values_per_shard):
    monkeypatch.setattr(scores_module, "VALUES_PER_SHARD", values_per_shard)
    data = Dataset(synthetic_dataset)
    samples, items, logits = write(tmp_path / "scores", data)
    loaded = read_scores(tmp_path / "scores", data)
    saved = json.loads((tmp_path / "scores" / "manifest.json").read_text())
    assert (len(saved["shards"]) > 1) == (values_per_shard == 37)
    assert saved["rows"] == len(items) and loaded.k == 5
    flat = data.offsets[samples.users] + samples.position
    rows = loaded.lookup(torch.from_numpy(flat))
    assert torch.equal(loaded.items[rows], torch.from_numpy(items))
    assert torch.equal(loaded.logits[rows], torch.from_numpy(logits))
    # positions without a teacher row, and padding, map to -1
    others = torch.tensor([[-1, int(data.offsets[0])]])
    assert loaded.lookup(others).tolist() == [[-1, -1]]


def test_an_error_while_writing_leaves_nothing(synthetic_dataset, tmp_path):
    data = Dataset(synthetic_dataset)
    with pytest.raises(RuntimeError):
        with ScoreWriter(tmp_path / "scores", manifest(data, 5)) as writer:
            writer.write(np.array([0]), np.array([1]), np.ones((1, 5), int), np.zeros((1, 5), np.float32))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_is_refused_unless_overwritten(synthetic_dataset, tmp_path):
    data = Dataset(synthetic_dataset)
    write(tmp_path / "scores", data)
    with pytest.raises(DistillError, match="already exists"):
        write(tmp_path / "scores", data)
    write(tmp_path / "other", data, seed=1)
    samples, items, logits = fake_rows(data, 5, seed=1)
    with ScoreWriter(tmp_path / "scores", manifest(data, 5), overwrite=True) as writer:
        writer.write(samples.users, samples.position, items, logits)
    assert torch.equal(
        read_scores(tmp_path / "scores", data).items, read_scores(tmp_path / "other", data).items
    )


def test_mismatches_are_refused(synthetic_dataset, tmp_path):
    data = Dataset(synthetic_dataset)
    write(tmp_path / "scores", data)
    path = tmp_path / "scores" / "manifest.json"
    original = json.loads(path.read_text())
    cases = [
        ({"dataset": {"fingerprint": "0000", "num_items": data.num_items}}, "another dataset"),
        ({"dataset": {"fingerprint": data.fingerprint, "num_items": 7}}, "scores 7 items"),
        ({"format_version": 99}, "format_version"),
        ({"rows": 3}, "manifest says 3 rows"),
    ]
    for change, message in cases:
        path.write_text(json.dumps({**original, **change}))
        with pytest.raises(DistillError, match=message):
            read_scores(tmp_path / "scores", data)
    path.write_text("{not json")
    with pytest.raises(DistillError, match="not valid JSON"):
        read_scores(tmp_path / "scores", data)
    with pytest.raises(DistillError, match="not a score directory"):
        read_scores(tmp_path, data)


def test_rows_outside_the_training_sequences_are_refused(synthetic_dataset, tmp_path):
    data = Dataset(synthetic_dataset)
    starts, ends = data.history_bounds("train")
    with ScoreWriter(tmp_path / "scores", manifest(data, 2)) as writer:
        # position == training length: that is the validation target, not a training one
        writer.write(
            np.array([0]), np.array([ends[0] - starts[0]]), np.array([[1, 2]]), np.zeros((1, 2), np.float32)
        )
    with pytest.raises(DistillError, match="outside the training sequences"):
        read_scores(tmp_path / "scores", data)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_are_refused_by_the_writer(synthetic_dataset, tmp_path, bad):
    data = Dataset(synthetic_dataset)
    samples, items, logits = fake_rows(data, 5)
    logits[3, 2] = bad
    with pytest.raises(DistillError, match="refusing to write .* NaN or infinite logits"):
        with ScoreWriter(tmp_path / "scores", manifest(data, 5)) as writer:
            writer.write(samples.users, samples.position, items, logits)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_logits_are_refused_by_the_reader(synthetic_dataset, tmp_path):
    data = Dataset(synthetic_dataset)
    write(tmp_path / "scores", data)
    shard = tmp_path / "scores" / "part-00000.parquet"
    frame = pl.read_parquet(shard)
    logits = frame["logits"].to_list()
    logits[1][0] = float("nan")
    frame.with_columns(logits=pl.Series(logits, dtype=pl.List(pl.Float32))).write_parquet(shard)
    with pytest.raises(DistillError, match="1 rows hold NaN or infinite logits"):
        read_scores(tmp_path / "scores", data)
