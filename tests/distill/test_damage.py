"""Property-based damage (hypothesis) of every kind of file distill reads back: a dataset's ``meta.json``
and parquet files, a run's ``config.json`` and checkpoint, a score directory's manifest and shards (the
compact ``.npy`` columns of format 2, and format 1's parquet). A valid file is damaged at random (a key
dropped, a value of another type, the text cut short, the whole file replaced, columns dropped or
retyped, rows cut, an array of another dtype or shape or with values it cannot hold) and read by the
reader every command uses.

Whatever comes in: the reader works (the damage was harmless) or says why not in one ``DistillError``
line; never another exception.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.data import Dataset
from distill.errors import DistillError
from distill.scores import COLUMNS, read_scores
from pipeline.config import ExportConfig
from pipeline.export import run as export_logits
from pipeline.runs import open_run
from student.config import StudentTrainConfig
from student.train import run as train_student
from tests.distill.test_scores import write_v1

DAMAGE = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 30)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(data: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON object (nested objects included)."""
    if not isinstance(data, dict):
        return []
    out = []
    for key, value in data.items():
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


@st.composite
def damaged_json(draw, original: dict) -> str:
    """``original`` with one kind of damage."""
    how = draw(st.sampled_from(["drop", "retype", "truncate", "replace", "scale"]))
    text = json.dumps(original, indent=2)
    if how == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))]
    if how == "replace":
        return json.dumps(draw(json_values))
    data = json.loads(text)
    path = draw(st.sampled_from(_paths(data)))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if how == "drop":
        del parent[path[-1]]
    elif how == "retype":
        parent[path[-1]] = draw(json_values)
    else:  # a number far off its range: huge, negative, zero
        parent[path[-1]] = draw(st.sampled_from([0, -1, 10**15, 2**63, 1.5]))
    return json.dumps(data)


@st.composite
def damaged_bytes(draw, original: bytes) -> bytes:
    """``original`` cut short, with bytes overwritten, or replaced by random bytes."""
    how = draw(st.sampled_from(["truncate", "flip", "random"]))
    if how == "truncate":
        return original[: draw(st.integers(0, len(original) - 1))]
    if how == "random":
        return draw(st.binary(max_size=200))
    at = draw(st.integers(0, len(original) - 1))
    return original[:at] + draw(st.binary(min_size=1, max_size=16)) + original[at + 16 :]


@st.composite
def damaged_frame(draw, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with a column dropped, retyped or emptied, or rows cut."""
    how = draw(st.sampled_from(["drop", "retype", "null", "rows"]))
    column = draw(st.sampled_from(frame.columns))
    if how == "drop":
        return frame.drop(column)
    if how == "rows":
        return frame.head(draw(st.integers(0, max(frame.height - 1, 0))))
    if how == "null":
        return frame.with_columns(pl.lit(None).alias(column))
    kind = draw(st.sampled_from([pl.String, pl.Float64, pl.Int8, pl.List(pl.String), pl.List(pl.Float64)]))
    try:
        return frame.with_columns(frame[column].cast(kind, strict=False))
    except pl.exceptions.PolarsError:  # a cast polars has no rule for: drop the column instead
        return frame.drop(column)


@st.composite
def damaged_array(draw, array: np.ndarray) -> np.ndarray:
    """``array`` of another dtype, with rows or columns cut or added, another rank, or one value that
    no column may hold (NaN, infinite, negative, huge)."""
    how = draw(st.sampled_from(["dtype", "rows", "columns", "rank", "value"]))
    if how == "dtype":
        return array.astype(
            draw(st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int16, np.uint8]))
        )
    if how == "rows":
        return (
            array[: draw(st.integers(0, max(len(array) - 1, 0)))]
            if draw(st.booleans())
            else np.concatenate([array, array[:1]])
        )
    if how == "columns" and array.ndim == 2:
        return array[:, : draw(st.integers(0, array.shape[1] - 1))]
    if how == "rank":
        return array.reshape(-1) if array.ndim == 2 else array[:, None]
    changed = array.copy()
    if changed.dtype.kind == "f":
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.0, 65504.0]))
    else:
        bounds = np.iinfo(changed.dtype)
        value = draw(
            st.sampled_from(sorted({0, -1 if bounds.min < 0 else 0, int(bounds.min), int(bounds.max)}))
        )
    changed.reshape(-1)[draw(st.integers(0, changed.size - 1))] = value
    return changed


def survives(read: Callable[[], object]) -> None:
    """``read()`` works or raises one line of DistillError."""
    try:
        read()
    except DistillError as e:
        assert "\n" not in str(e), str(e)


@pytest.fixture(scope="module")
def made(synthetic_dataset, tmp_path_factory) -> dict[str, Path]:
    """A student run and its scores on the synthetic data: the valid files to damage."""
    root = tmp_path_factory.mktemp("damage")
    run = root / "run"
    train_student(
        StudentTrainConfig(
            data=str(synthetic_dataset), output=str(run), max_len=8, hidden=8, epochs=1, device="cpu"
        )
    )
    scores = root / "scores"
    export_logits(
        ExportConfig(runs=(str(run),), data=str(synthetic_dataset), output=str(scores), top_k=5, device="cpu")
    )
    # the same rows as a format-1 directory, which distill still reads
    data = Dataset(synthetic_dataset)
    loaded = read_scores(scores, data)
    flat = torch.nonzero(loaded.row_of >= 0).squeeze(1).numpy()
    user_of = np.searchsorted(data.offsets, flat, side="right") - 1
    items, logits = loaded.fetch(loaded.row_of[flat])
    write_v1(root / "scores-v1", data, user_of, flat - data.offsets[user_of], items.numpy(), logits.numpy())
    return {"data": synthetic_dataset, "run": run, "scores": scores, "scores-v1": root / "scores-v1"}


def copy(source: Path, to: Path) -> Path:
    shutil.copytree(source, to)
    return to


@DAMAGE
@given(data=st.data())
def test_a_damaged_meta_json(made, data):
    with tempfile.TemporaryDirectory() as tmp:
        dataset = copy(made["data"], Path(tmp) / "data")
        meta = json.loads((dataset / "meta.json").read_text())
        (dataset / "meta.json").write_text(data.draw(damaged_json(meta)))
        survives(lambda: Dataset(dataset))


@DAMAGE
@given(data=st.data(), name=st.sampled_from(["sequences.parquet", "items.parquet"]))
def test_a_damaged_dataset_parquet(made, data, name):
    with tempfile.TemporaryDirectory() as tmp:
        dataset = copy(made["data"], Path(tmp) / "data")
        if data.draw(st.booleans()):
            frame = pl.read_parquet(dataset / name)
            data.draw(damaged_frame(frame)).write_parquet(dataset / name)
        else:
            (dataset / name).write_bytes(data.draw(damaged_bytes((dataset / name).read_bytes())))
        survives(lambda: Dataset(dataset))


@DAMAGE
@given(data=st.data(), name=st.sampled_from(["config.json", "best/config.json"]))
def test_a_damaged_run_config(made, data, name):
    dataset = Dataset(made["data"])
    with tempfile.TemporaryDirectory() as tmp:
        run = copy(made["run"], Path(tmp) / "run")
        config = json.loads((run / name).read_text())
        (run / name).write_text(data.draw(damaged_json(config)))
        survives(lambda: open_run(run, dataset, "cpu"))


@DAMAGE
@given(data=st.data())
def test_a_damaged_checkpoint(made, data):
    dataset = Dataset(made["data"])
    with tempfile.TemporaryDirectory() as tmp:
        run = copy(made["run"], Path(tmp) / "run")
        weights = run / "best" / "model.safetensors"
        weights.write_bytes(data.draw(damaged_bytes(weights.read_bytes())))
        survives(lambda: open_run(run, dataset, "cpu"))


@DAMAGE
@given(data=st.data(), kind=st.sampled_from(["scores", "scores-v1"]))
def test_a_damaged_manifest(made, data, kind):
    dataset = Dataset(made["data"])
    with tempfile.TemporaryDirectory() as tmp:
        scores = copy(made[kind], Path(tmp) / "scores")
        manifest = json.loads((scores / "manifest.json").read_text())
        (scores / "manifest.json").write_text(data.draw(damaged_json(manifest)))
        survives(lambda: read_scores(scores, dataset))


@DAMAGE
@given(data=st.data(), column=st.sampled_from(sorted(COLUMNS)))
def test_a_damaged_compact_score_shard(made, data, column):
    dataset = Dataset(made["data"])
    with tempfile.TemporaryDirectory() as tmp:
        scores = copy(made["scores"], Path(tmp) / "scores")
        shard = scores / f"{json.loads((scores / 'manifest.json').read_text())['shards'][0]}.{column}.npy"
        how = data.draw(st.sampled_from(["bytes", "array", "missing"]))
        if how == "bytes":
            shard.write_bytes(data.draw(damaged_bytes(shard.read_bytes())))
        elif how == "array":
            np.save(shard, data.draw(damaged_array(np.load(shard))))
        else:
            shard.unlink()
        survives(lambda: read_scores(scores, dataset))


@DAMAGE
@given(data=st.data())
def test_a_damaged_format_1_score_shard(made, data):
    dataset = Dataset(made["data"])
    with tempfile.TemporaryDirectory() as tmp:
        scores = copy(made["scores-v1"], Path(tmp) / "scores")
        shard = scores / json.loads((scores / "manifest.json").read_text())["shards"][0]
        if data.draw(st.booleans()):
            data.draw(damaged_frame(pl.read_parquet(shard))).write_parquet(shard)
        else:
            shard.write_bytes(data.draw(damaged_bytes(shard.read_bytes())))
        survives(lambda: read_scores(scores, dataset))


@settings(DAMAGE, max_examples=int(os.environ.get("FUZZ_EXAMPLES", 8)))
@given(data=st.data())
def test_a_damaged_trainer_state_on_resume(made, data):
    with tempfile.TemporaryDirectory() as tmp:
        run = copy(made["run"], Path(tmp) / "run")
        state = run / "last" / "state.pt"
        state.write_bytes(data.draw(damaged_bytes(state.read_bytes())))
        config = StudentTrainConfig(
            data=str(made["data"]), output=str(run), max_len=8, hidden=8, epochs=2, device="cpu", resume=True
        )
        survives(lambda: train_student(config))
