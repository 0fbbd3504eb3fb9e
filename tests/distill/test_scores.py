"""The score directory: write, read back, refuse what does not match; format 2 (compact, with the
tail) round-trips, format 1 still reads as it did, and a damaged shard is one line."""

import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from distill import scores as scores_module
from distill.data import Dataset
from distill.errors import DistillError
from distill.scores import COLUMNS, Scores, ScoreWriter, read_scores, tail_of

# float16 keeps 11 significant bits: a stored value is off by at most 2^-11 of its magnitude.
FLOAT16_RTOL = 2.0**-11


def fake_rows(data, k, per_user=2, seed=0):
    """Rows of a random teacher: its full rows over the catalogue, and their top k, descending."""
    samples = data.prefix_samples(per_user, 5)
    rng = np.random.default_rng(seed)
    full = (3 * rng.standard_normal((len(samples.targets), data.num_items))).astype(np.float32)  # (n, N)
    order = np.argsort(-full, axis=1, kind="stable")[:, :k]
    logits = np.take_along_axis(full, order, axis=1)
    return samples, order + 1, logits, full


def lse(full):
    return torch.from_numpy(full).logsumexp(-1).numpy()


def manifest(data, k):
    return {
        "teacher": {"kind": "test"},
        "dataset": {"fingerprint": data.fingerprint, "num_items": data.num_items},
        "k": k,
        "positions": "last 2 per user",
    }


def write(path, data, k=5, tail=True, **kwargs):
    samples, items, logits, full = fake_rows(data, k, **kwargs)
    norm = lse(full) if tail else None
    with ScoreWriter(path, manifest(data, k)) as writer:
        half = len(items) // 2
        for part in (slice(0, half), slice(half, None)):
            writer.write(
                samples.users[part],
                samples.position[part],
                items[part],
                logits[part],
                None if norm is None else norm[part],
            )
    return samples, items, logits, full


def write_v1(path, data, users, positions, items, logits, rows_per_shard=None):
    """A format-1 directory, as distill wrote them before format 2: parquet shards, raw float32 scores."""
    path.mkdir()
    rows_per_shard = rows_per_shard or len(users)
    shards = []
    for n, start in enumerate(range(0, len(users), rows_per_shard)):
        part = slice(start, start + rows_per_shard)
        pl.DataFrame(
            {
                "user": users[part].astype(np.int32),
                "position": positions[part].astype(np.int32),
                "items": pl.Series(items[part].astype(np.int32)).cast(pl.List(pl.Int32)),
                "logits": pl.Series(logits[part].astype(np.float32)).cast(pl.List(pl.Float32)),
            }
        ).write_parquet(path / f"part-{n:05d}.parquet")
        shards.append(f"part-{n:05d}.parquet")
    k = items.shape[1]
    saved = {"format_version": 1, **manifest(data, k), "rows": len(users), "shards": shards}
    (path / "manifest.json").write_text(json.dumps(saved))


@pytest.mark.parametrize("values_per_shard", [1 << 24, 37])
@pytest.mark.parametrize("ids", ["<u2", "<i4"])  # int32: as for a catalogue of more than 65,535 items
def test_compact_files_round_trip(synthetic_dataset, tmp_path, monkeypatch, values_per_shard, ids):
    monkeypatch.setattr(scores_module, "VALUES_PER_SHARD", values_per_shard)
    monkeypatch.setattr(scores_module, "item_dtype", lambda num_items: np.dtype(ids))
    data = Dataset(synthetic_dataset)
    samples, items, logits, full = write(tmp_path / "scores", data)
    loaded = read_scores(tmp_path / "scores", data)
    saved = json.loads((tmp_path / "scores" / "manifest.json").read_text())
    assert saved["format_version"] == 2 and saved["tail"] is True and loaded.has_tail
    assert (len(saved["shards"]) > 1) == (values_per_shard == 37)
    assert saved["rows"] == len(items) == loaded.rows and loaded.k == 5
    flat = data.offsets[samples.users] + samples.position
    rows = loaded.lookup(torch.from_numpy(flat))
    got_items, got_logits = loaded.fetch(rows)
    assert got_items.dtype == torch.int64 and got_logits.dtype == torch.float32
    assert torch.equal(got_items, torch.from_numpy(items).long())  # ids exact
    # scores relative to the row's largest, within float16's precision
    relative = torch.from_numpy(logits - logits[:, :1])
    assert (got_logits[:, 0] == 0).all()
    assert ((got_logits - relative).abs() <= FLOAT16_RTOL * relative.abs()).all()
    # the tail: exactly what the writer computed, and that is the full rows' mass outside the top k
    tail = loaded.fetch_tail(rows)
    assert tail.dtype == torch.float32
    assert torch.equal(tail, torch.from_numpy(tail_of(logits, lse(full))))
    outside = torch.from_numpy(full).double().scatter(1, torch.from_numpy(items).long() - 1, -math.inf)
    exact = outside.logsumexp(-1) - torch.from_numpy(full).double().logsumexp(-1)
    # as exact as the float32 normaliser it came from: its mass to a few 1e-7 (|logsumexp| is about 8)
    torch.testing.assert_close(tail.double().exp(), exact.exp(), rtol=0, atol=2e-6)
    # every file as the docstring says, and 4k + 12 (uint16 ids) or 6k + 12 (int32) bytes a row
    files = [f"{shard}.{c}.npy" for shard in saved["shards"] for c in COLUMNS]
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == sorted(["manifest.json", *files])
    for shard in saved["shards"]:
        for column, (dtype, _) in COLUMNS.items():
            stored = np.load(tmp_path / "scores" / f"{shard}.{column}.npy", mmap_mode="r").dtype
            assert stored == (np.dtype(ids) if column == "items" else dtype)
    assert saved["columns"]["items"].startswith({"<u2": "uint16", "<i4": "int32"}[ids])
    per_row = (2 if ids == "<u2" else 4) * 5 + 2 * 5 + 12
    assert (
        sum((tmp_path / "scores" / f).stat().st_size for f in files)
        == 128 * len(files) + len(items) * per_row
    )
    # positions without a teacher row, and padding, map to -1
    others = torch.tensor([[-1, int(data.offsets[0])]])
    assert loaded.lookup(others).tolist() == [[-1, -1]]


def test_without_normalisers_or_with_the_whole_catalogue_there_is_no_tail(synthetic_dataset, tmp_path):
    data = Dataset(synthetic_dataset)
    write(tmp_path / "plain", data, tail=False)
    plain = read_scores(tmp_path / "plain", data)
    assert not plain.has_tail and plain.table()[2] is None
    assert not (tmp_path / "plain" / "part-00000.tail.npy").exists()
    with pytest.raises(ValueError, match="no tail"):
        plain.fetch_tail(torch.tensor([0]))
    write(tmp_path / "full", data, k=data.num_items)  # given the normalisers: nothing is dropped
    full = read_scores(tmp_path / "full", data)
    assert not full.has_tail and full.manifest["tail"] is False


def test_the_writer_refuses_mixed_or_wrong_normalisers(synthetic_dataset, tmp_path):
    data = Dataset(synthetic_dataset)
    samples, items, logits, full = fake_rows(data, 5)
    with pytest.raises(ValueError, match="every write .* or with none"):
        with ScoreWriter(tmp_path / "mixed", manifest(data, 5)) as writer:
            writer.write(samples.users[:3], samples.position[:3], items[:3], logits[:3], lse(full)[:3])
            writer.write(samples.users[3:], samples.position[3:], items[3:], logits[3:])
    with pytest.raises(ValueError, match="not the full row's normaliser"):
        with ScoreWriter(tmp_path / "low", manifest(data, 5)) as writer:
            writer.write(samples.users, samples.position, items, logits, logits[:, 0])
    norm = lse(full)
    norm[2] = np.nan
    with pytest.raises(DistillError, match="logsumexp.*NaN or infinite"):
        with ScoreWriter(tmp_path / "nan", manifest(data, 5)) as writer:
            writer.write(samples.users, samples.position, items, logits, norm)
    assert list(tmp_path.iterdir()) == []


def test_tail_of_is_as_exact_as_the_normaliser():
    logits = np.array([[0.0, -1.0], [5.0, 4.0], [0.0, -30.0]], dtype=np.float32)
    full = [[0.0, -1.0, -20.0], [5.0, 4.0, 5.0 - 1e-3], [0.0, -30.0]]  # the last row is whole
    norms = np.array([np.logaddexp.reduce(np.array(row)) for row in full])  # float64
    tail = tail_of(logits, norms)
    # a dropped mass of e^-20 / (1 + e^-1) survives as its log, one of about 42% too
    assert tail[0] == pytest.approx(-20 - math.log1p(math.exp(-1) + math.exp(-20)), rel=1e-6)
    assert tail[1] == pytest.approx(
        math.log(math.exp(-1e-3) / (1 + math.exp(-1) + math.exp(-1e-3))), rel=1e-6
    )
    assert math.exp(tail[2]) < 1e-15  # nothing left outside: rounding's worth
    # a float32 normaliser resolves about 1e-7 of mass: e^-20 (2e-9) is below it, 42% is not
    coarse = tail_of(logits, norms.astype(np.float32))
    assert coarse[0] < -14 and coarse[1] == pytest.approx(tail[1], rel=1e-5)


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
    samples, items, logits, full = fake_rows(data, 5, seed=1)
    with ScoreWriter(tmp_path / "scores", manifest(data, 5), overwrite=True) as writer:
        writer.write(samples.users, samples.position, items, logits, lse(full))
    for new, other in zip(
        read_scores(tmp_path / "scores", data).table(),
        read_scores(tmp_path / "other", data).table(),
        strict=True,
    ):
        assert torch.equal(new, other)


@pytest.mark.parametrize("rows_per_shard", [None, 7])
def test_format_1_directories_still_read_as_before(synthetic_dataset, tmp_path, rows_per_shard):
    data = Dataset(synthetic_dataset)
    samples, items, logits, _ = fake_rows(data, 5)
    write_v1(tmp_path / "v1", data, samples.users, samples.position, items, logits, rows_per_shard)
    loaded = read_scores(tmp_path / "v1", data)
    assert not loaded.has_tail and loaded.rows == len(items) and len(loaded.shards) == 1
    assert loaded.shards[0].items.dtype == torch.int16 and loaded.shards[0].logits.dtype == torch.float32
    rows = loaded.lookup(torch.from_numpy(data.offsets[samples.users] + samples.position))
    got_items, got_logits = loaded.fetch(rows)
    assert torch.equal(got_items, torch.from_numpy(items).long())
    assert torch.equal(got_logits, torch.from_numpy(logits))  # raw float32 scores, unchanged


def test_mismatches_are_refused(synthetic_dataset, tmp_path):
    data = Dataset(synthetic_dataset)
    write(tmp_path / "scores", data)
    path = tmp_path / "scores" / "manifest.json"
    original = json.loads(path.read_text())
    cases = [
        ({"dataset": {"fingerprint": "0000", "num_items": data.num_items}}, "another dataset"),
        ({"dataset": {"fingerprint": data.fingerprint, "num_items": 7}}, "scores 7 items"),
        ({"format_version": 99}, "format_version 99 .*reads 1 and 2"),
        ({"format_version": True}, "format_version True"),
        ({"rows": 3}, "manifest says 3 rows"),
        ({"tail": "yes"}, "field 'tail' must be true or false"),
        ({"tail": None}, "no field 'tail'"),
        ({"tail": False, "k": data.num_items}, "shape"),
        ({"rows": 0, "shards": []}, "no rows: the export scored no position"),
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
    samples, items, logits, _ = fake_rows(data, 5)
    logits[3, 2] = bad
    with pytest.raises(DistillError, match="refusing to write .* NaN or infinite logits"):
        with ScoreWriter(tmp_path / "scores", manifest(data, 5)) as writer:
            writer.write(samples.users, samples.position, items, logits)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_logits_are_refused_by_the_reader(synthetic_dataset, tmp_path):
    data = Dataset(synthetic_dataset)
    write(tmp_path / "scores", data)
    stored = np.load(tmp_path / "scores" / "part-00000.logits.npy", mmap_mode="r+")
    stored[1, 2] = np.nan
    stored.flush()
    del stored
    with pytest.raises(DistillError, match="1 rows hold NaN or infinite logits"):
        read_scores(tmp_path / "scores", data)
    samples, items, logits, _ = fake_rows(data, 5)
    logits[1, 0] = np.nan
    write_v1(tmp_path / "v1", data, samples.users, samples.position, items, logits)
    with pytest.raises(DistillError, match="1 rows hold NaN or infinite logits"):
        read_scores(tmp_path / "v1", data)


def _rewrite(path, change):
    array = np.load(path)
    np.save(path, change(array))


DAMAGES = {
    "truncated": (lambda f: f.write_bytes(f.read_bytes()[:-3]), "not a readable score array"),
    "padded": (lambda f: f.write_bytes(f.read_bytes() + b"\0" * 8), "bytes, but its header says"),
    "header only": (lambda f: f.write_bytes(f.read_bytes()[:128]), "not a readable score array"),
    "empty": (lambda f: f.write_bytes(b""), "not a readable score array"),
    "text": (lambda f: f.write_text("user,position\n"), "not a readable score array"),
    "missing": (lambda f: f.unlink(), "missing"),
    "float32": (lambda f: _rewrite(f, lambda a: a.astype(np.float32)), "not a score column of"),
    "object": (lambda f: np.save(f, np.array([{"a": 1}], dtype=object)), "not a readable score array"),
    "fortran": (lambda f: _rewrite(f, np.asfortranarray), "not a score column of"),
    "one row fewer": (lambda f: _rewrite(f, lambda a: a[:-1]), r"shape \(\d+, 5\), expected"),
    "one column fewer": (lambda f: _rewrite(f, lambda a: a[:, :-1]), r"shape \(\d+, 4\), expected"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_compact_shard_is_one_line(synthetic_dataset, tmp_path, damage):
    data = Dataset(synthetic_dataset)
    write(tmp_path / "scores", data)
    hurt, message = DAMAGES[damage]
    hurt(tmp_path / "scores" / "part-00000.logits.npy")
    with pytest.raises(DistillError, match=message) as caught:
        read_scores(tmp_path / "scores", data)
    assert "\n" not in str(caught.value) and "part-00000.logits.npy" in str(caught.value)


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("items", 0, "item ids outside"),
        ("items", 65535, "item ids outside"),
        ("tail", np.nan, "not the log of a probability below 1"),
        ("tail", 0.0, "not the log of a probability below 1"),
        ("user", 10**6, "outside the training sequences"),
        ("position", 0, "outside the training sequences"),
    ],
)
def test_values_a_shard_cannot_hold_are_refused(synthetic_dataset, tmp_path, column, value, message):
    data = Dataset(synthetic_dataset)
    write(tmp_path / "scores", data)
    stored = np.load(tmp_path / "scores" / f"part-00000.{column}.npy", mmap_mode="r+")
    stored[3] = value
    stored.flush()
    del stored
    with pytest.raises(DistillError, match=message):
        read_scores(tmp_path / "scores", data)


def test_only_format_2_carries_a_tail():
    """A format-1 manifest saying "tail" (it has no such column) must not send KD looking for one."""
    empty = torch.zeros(1, dtype=torch.int64)
    assert not Scores({"format_version": 1, "tail": True}, (), empty, empty).has_tail
    assert Scores({"format_version": 2, "tail": True}, (), empty, empty).has_tail
