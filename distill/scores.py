"""The score directory: the teacher's soft labels, the only thing that passes from teacher to student.

```
SCORES/manifest.json        format version, teacher kind and run, dataset fingerprint, num_items, k,
                            positions, rows, shards
SCORES/part-NNNNN.parquet   user (int32), position (int32), items (list[int32], k), logits (list[float32], k)
```

A row is the teacher's prediction for training item ``position`` of ``user`` (0-based within the
user's sequence) given the items before it: its ``k`` highest-scoring items and their raw scores,
descending. ``k`` may equal the catalogue (full distributions). The directory is written under a
temporary name and renamed when whole; the reader refuses one whose fingerprint or catalogue size do
not match the dataset, or whose rows point outside the training sequences.

In a multi-process export every rank writes the shards of its contiguous block of rows
(``part-RRR-NNNNN.parquet``) into one temporary directory; rank 0 lists them all in the manifest,
in rank order, and renames the directory once every rank is done.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from distill.data import Dataset
from distill.dist import barrier, gather, world
from distill.errors import DistillError
from distill.io import TEXT, Field, check_fields, first_line, is_main_process, read_json, table, whole
from distill.outputs import claim

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VALUES_PER_SHARD = 1 << 24  # about 128 MB of items and logits per shard
# What a manifest must hold for read_scores, and the columns of every shard it names.
MANIFEST_FIELDS = {
    "dataset": table({"fingerprint": TEXT, "num_items": whole(1)}),
    "k": whole(1),
    "rows": whole(0),
    "shards": Field(
        "a list of shard file names",
        lambda v: isinstance(v, list) and all(isinstance(s, str) and s and Path(s).name == s for s in v),
    ),
}
SHARD_SCHEMA = pl.Schema(
    {"user": pl.Int32, "position": pl.Int32, "items": pl.List(pl.Int32), "logits": pl.List(pl.Float32)}
)


def refuse_existing(path: Path, overwrite: bool) -> None:
    """A score directory is never replaced unless asked to, and then only one distill wrote."""
    claim(path, kind="scores", overwrite=overwrite, what="score directory")


def refuse_non_finite(logits: np.ndarray, users: np.ndarray, positions: np.ndarray, where: str) -> None:
    """Soft labels must be numbers: one line naming the first row whose logits are NaN or infinite."""
    finite = np.isfinite(logits).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise DistillError(
            f"{where}: {int((~finite).sum())} rows hold NaN or infinite logits (first: user "
            f"{int(users[row])}, position {int(positions[row])}); the teacher that scored them is broken"
        )


class ScoreWriter:
    """Writes a score directory shard by shard; use as a context manager.

    Args:
        path: the directory to create.
        manifest: what describes the scores (teacher, dataset, k, positions); rows and shards are
            added on completion.
        overwrite: replace an existing directory (only once the new one is whole).
    """

    def __init__(self, path: str | Path, manifest: dict[str, Any], overwrite: bool = False):
        self.path = Path(path)
        refuse_existing(self.path, overwrite)
        self.manifest = {"format_version": FORMAT_VERSION, **manifest}
        self.k = int(manifest["k"])
        self.rows_per_shard = max(1, VALUES_PER_SHARD // self.k)
        self._rank, self._ranks = world()
        token = gather(os.getpid())[0]  # one temporary directory for every rank: rank 0's pid
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{token}"
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._pending_rows = 0
        self._shards: list[str] = []
        self.rows = 0

    def __enter__(self) -> ScoreWriter:
        if is_main_process():
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp.mkdir(parents=True)
        barrier()
        return self

    def write(self, users: np.ndarray, positions: np.ndarray, items: np.ndarray, logits: np.ndarray) -> None:
        """Add rows: ``users``, ``positions`` ``(n,)``; ``items``, ``logits`` ``(n, k)``, descending."""
        if items.shape != (len(users), self.k) or logits.shape != items.shape:
            raise ValueError(f"expected items and logits of shape ({len(users)}, {self.k})")
        refuse_non_finite(logits, users, positions, f"refusing to write {self.path}")
        self._pending.append((users, positions, items, logits))
        self._pending_rows += len(users)
        if self._pending_rows >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        users, positions, items, logits = (
            np.concatenate(parts) for parts in zip(*self._pending, strict=True)
        )
        n = len(self._shards)
        name = f"part-{n:05d}.parquet" if self._ranks == 1 else f"part-{self._rank:03d}-{n:05d}.parquet"
        pl.DataFrame(
            {
                "user": users.astype(np.int32),
                "position": positions.astype(np.int32),
                "items": pl.Series(items.astype(np.int32)).cast(pl.List(pl.Int32)),
                "logits": pl.Series(logits.astype(np.float32)).cast(pl.List(pl.Float32)),
            }
        ).write_parquet(self._tmp / name)
        self._shards.append(name)
        self.rows += len(users)
        self._pending, self._pending_rows = [], 0

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        try:
            self._flush()
        except BaseException:  # a full disk, say: the partial directory goes
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        parts = gather((self.rows, self._shards))  # every rank has flushed its last shard
        self.rows = sum(rows for rows, _ in parts)
        if is_main_process():
            try:
                shards = [name for _, names in parts for name in names]
                manifest = {**self.manifest, "rows": self.rows, "shards": shards}
                (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
                old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
                if self.path.exists():
                    self.path.rename(old)
                self._tmp.rename(self.path)
                shutil.rmtree(old, ignore_errors=True)
            finally:
                shutil.rmtree(self._tmp, ignore_errors=True)
        barrier()  # the directory is in place before any rank returns


@dataclass(frozen=True)
class Scores:
    """A score directory loaded for one dataset, its tables memory-mapped.

    The shards are converted one at a time into two arrays in unlinked temporary files (so nothing is
    left behind), items as int16 when the catalogue allows (else int32) and logits as float32, and
    mapped back: resident memory is the pages a run touches, not the table. Top 100 at every ML-1M
    training position (~0.97M rows) is 0.6 GB of such arrays; the full catalogue (3,416 items) 20 GB of
    disk, which the page cache holds as far as RAM allows.

    Attributes:
        manifest: the parsed ``manifest.json``.
        items: ``(R, k)`` int16 or int32 teacher item ids, descending by score (memory-mapped).
        logits: ``(R, k)`` float32 raw teacher scores (memory-mapped).
        row_of: ``(len(data.items),)``: the row scoring the item at each flat index of
            ``Dataset.items``, -1 where the teacher has none.
    """

    manifest: dict[str, Any]
    items: torch.Tensor
    logits: torch.Tensor
    row_of: torch.Tensor

    @property
    def k(self) -> int:
        return self.items.shape[1]

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """Rows for flat target indices ``(B, L)`` (-1 = padding), -1 where there is no score."""
        rows = self.row_of[index.clamp(min=0)]
        return torch.where(index >= 0, rows, -1)

    def fetch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``(m, k)`` int64 and logits ``(m, k)`` float32 of teacher rows ``(m,)``."""
        rows = rows.cpu()
        return self.items[rows].long(), self.logits[rows]


def read_scores(path: str | Path, data: Dataset) -> Scores:
    """Check a score directory against ``data`` and map its tables (memory bounded by one shard)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise DistillError(
            f"{path} is not a score directory: no {MANIFEST} (create it with `distill export-logits`)"
        )
    manifest = read_json(path / MANIFEST, "scores")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DistillError(f"{path}: unknown score format_version {manifest.get('format_version')!r}")
    check_fields(manifest, path / MANIFEST, MANIFEST_FIELDS)
    dataset = manifest["dataset"]
    if dataset["fingerprint"] != data.fingerprint:
        raise DistillError(
            f"{path} scores another dataset (fingerprint {dataset['fingerprint']}) than {data.path} "
            f"(fingerprint {data.fingerprint})"
        )
    if dataset["num_items"] != data.num_items:
        raise DistillError(f"{path} scores {dataset['num_items']} items but {data.path} has {data.num_items}")
    k, total = manifest["k"], manifest["rows"]
    if k > data.num_items:
        raise DistillError(f"{path / MANIFEST}: k {k} is more than the {data.num_items} items")
    if total > len(data.items):  # at most one row per training position
        raise DistillError(
            f"{path / MANIFEST}: {total} rows, more than the {len(data.items)} positions {data.path} holds"
        )
    item_dtype = np.int16 if data.num_items <= np.iinfo(np.int16).max else np.int32
    items = _mapped((total, k), item_dtype)
    logits = _mapped((total, k), np.float32)
    row_of = np.full(len(data.items), -1, dtype=np.int64)
    starts, ends = data.history_bounds("train")
    done = 0
    for shard in manifest["shards"]:
        try:
            frame = pl.read_parquet(path / shard)
        except Exception as e:  # a missing or damaged shard: polars raises several types
            raise DistillError(f"{path}: cannot read the score shards: {first_line(e)}") from None
        if frame.schema != SHARD_SCHEMA:
            raise DistillError(
                f"{path / shard}: columns {dict(frame.schema)} are not a score shard's {dict(SHARD_SCHEMA)}"
            )
        if done + frame.height > total:
            raise DistillError(f"{path}: manifest says {total} rows, the shards hold more")
        if frame.height == 0:
            continue
        if (frame["items"].list.len() != k).any() or (frame["logits"].list.len() != k).any():
            raise DistillError(f"{path / shard}: rows with other than k={k} items or logits")
        if frame["items"].explode().null_count() or frame["logits"].explode().null_count():
            raise DistillError(f"{path / shard}: rows with missing items or logits")
        users = frame["user"].to_numpy().astype(np.int64)
        positions = frame["position"].to_numpy().astype(np.int64)
        if (
            users.min() < 0
            or users.max() >= data.num_users
            or (positions < 1).any()
            or (positions >= (ends - starts)[users]).any()
        ):
            raise DistillError(f"{path}: rows point outside the training sequences of {data.path}")
        shard_items = frame["items"].explode().to_numpy().reshape(-1, k)
        if shard_items.min() < 1 or shard_items.max() > data.num_items:
            raise DistillError(f"{path}: item ids outside 1..{data.num_items}")
        items[done : done + frame.height] = shard_items
        shard_logits = frame["logits"].explode().to_numpy().reshape(-1, k)
        refuse_non_finite(shard_logits, users, positions, f"{path / shard}")
        logits[done : done + frame.height] = shard_logits
        row_of[starts[users] + positions] = np.arange(done, done + frame.height)
        done += frame.height
    if done != total:
        raise DistillError(f"{path}: manifest says {total} rows, the shards hold {done}")
    return Scores(manifest, torch.from_numpy(items), torch.from_numpy(logits), torch.from_numpy(row_of))


def _mapped(shape: tuple[int, int], dtype: type) -> np.ndarray:
    """A writable array of ``shape`` in an unlinked temporary file: its pages are evictable, and the
    file vanishes when the last reference to the mapping does."""
    if shape[0] * shape[1] == 0:
        return np.zeros(shape, dtype=dtype)
    with tempfile.TemporaryFile(prefix="distill-scores-") as file:
        return np.memmap(file, dtype=dtype, mode="w+", shape=shape)
