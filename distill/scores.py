"""The score directory: the teacher's soft labels, the only thing that passes from teacher to student.

Format 2, written now: numpy ``.npy`` arrays, one file per column per shard, beside the manifest.

```
SCORES/manifest.json              format version, teacher kind and run, dataset fingerprint, num_items, k,
                                  positions, tail, columns, rows, shards
SCORES/part-NNNNN.user.npy        (R,) int32
SCORES/part-NNNNN.position.npy    (R,) int32
SCORES/part-NNNNN.items.npy       (R, k) uint16 (up to 65,535 items) or int32: the teacher's k best
                                  items, descending
SCORES/part-NNNNN.logits.npy      (R, k) float16: their scores minus the row's largest (<= 0)
SCORES/part-NNNNN.tail.npy        (R,) float32: log of the teacher's probability (T = 1) outside the k
                                  items; only when the manifest says ``"tail": true``
```

A row is the teacher's prediction for training item ``position`` of ``user`` (0-based within the
user's sequence) given the items before it. **Bytes per row: 4k + 12 with uint16 ids, 6k + 12 with
int32 ids** (4 less without a tail), plus a 128-byte header per file and shard: 412 or 612 at
k = 100. ``k`` may equal the catalogue (``--full``: 4N + 8 or 6N + 8 bytes a row; nothing is
dropped, so there is no tail). The directory is written under a temporary name and renamed when
whole; the reader refuses one whose fingerprint or catalogue size do not match the dataset, or whose
rows point outside the training sequences.

Choices, and why:

- **``.npy`` beside the manifest, not parquet.** A fixed-width array is mapped as it lies on disk:
  reading a directory is checking it, never converting it (format 1 converted every shard into a
  temporary copy, 18.5 GiB for ML-1M's full catalogue), and every process that reads one directory (a
  grid of students) shares its pages in the page cache. ``.npy`` is numpy's own format, dtype and
  shape in its header, so a file still says what it holds without the manifest. Parquet would
  compress a little, but must be decoded, and polars has no float16.
- **Scores as float16 relative to the row's largest.** Every KD loss reads the teacher's scores
  through a softmax or their order, both unchanged by a per-row constant; with the top item at 0
  float16's steps are finest where the probability mass is: the stored ``t_j - t_1`` is off by at
  most ``2^-11·|t_j - t_1|`` (0.002 nats for an item 4 nats below the top, whose probability is then
  off by 0.2%). Order is kept (rounding is monotone; near-equal scores may tie). Measured on ML-100K
  (``bench/results/score_format_ml-100k.md``): against the same rows' float32 scores the top-100
  distribution (with its tail) moves by a KL of 1.4e-9 nats a row on average, where the KD it teaches
  is 0.2 nats a position. Scores more than 65,504 below the row's top (probability below e^-65504)
  are stored at -65,504.
- **The tail**, ``log(1 - Σ_j p_j)`` with ``p = softmax`` of the *full* row at T = 1, is what makes
  the top k with one bucket, "everything else", a proper distribution, so that KL stays defined
  (:func:`distill.losses.kl`). The exporter has the full row: it hands the writer each row's
  ``logsumexp``, and the writer takes ``tail = log(1 - exp(logsumexp(top k) - logsumexp))`` in float64.
  It is as exact as that normaliser: a float32 ``logsumexp`` resolves about 1e-7·|logsumexp| of mass,
  and a dropped mass below that is stored as rounding noise of that size (or -inf), which KD cannot
  tell from the truth (its terms in the tail are of the order of the mass). It holds at T = 1 only:
  see :func:`distill.losses.kl` for what KD does at other temperatures.
- **uint16 ids while the catalogue fits**, int32 beyond (the reader expects the one ``num_items``
  implies): format 1's parquet compresses its int32 ids and float32 scores to 4.3 to 5.4 bytes a value
  (ML-100K's top 100 and full rows, 430 and 8,522 bytes a row; 5.4 for ML-1M's full catalogue), so
  int32 ids and float16 scores, 6 bytes, would be bigger on disk than what they replace; 4 are smaller
  (412 and 6,736 bytes a row on ML-100K).

Format 1 (parquet shards ``part-NNNNN.parquet`` with columns ``user``, ``position``, ``items``
``list[int32]`` and ``logits`` ``list[float32]``, raw scores, no tail) is still read, with its meaning
unchanged: converted into unlinked temporary files as before, and KD renormalises on its top k.

In a multi-process export every rank writes the shards of its contiguous block of rows
(``part-RRR-NNNNN.*``) into one temporary directory; rank 0 lists them all in the manifest, in rank
order, and renames the directory once every rank is done.
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

FORMAT_VERSION = 2
READS = (1, 2)  # the format versions read_scores understands
MANIFEST = "manifest.json"
VALUES_PER_SHARD = 1 << 24  # ids and scores per shard: 96 MiB of them in format 2, what the writer buffers
CHECK_VALUES = 1 << 22  # values the reader checks at a time (a shard is never read whole into memory)
FLOAT16_MIN = float(np.finfo(np.float16).min)
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
V2_FIELDS = {"tail": Field("true or false", lambda v: isinstance(v, bool))}
# Format 2: each shard's files, ``{shard}.{column}.npy``: dtype (items: see item_dtype) and what it holds.
COLUMNS = {
    "user": (np.dtype("<i4"), "int32 (rows)"),
    "position": (np.dtype("<i4"), "int32 (rows)"),
    "items": (None, "{dtype} (rows, k): the teacher's k best items, descending"),
    "logits": (np.dtype("<f2"), "float16 (rows, k): their scores minus the row's largest"),
    "tail": (np.dtype("<f4"), "float32 (rows): log of the teacher's probability (T = 1) outside the k items"),
}
WIDE = ("items", "logits")  # the (rows, k) columns
SHARD_SCHEMA = pl.Schema(  # format 1
    {"user": pl.Int32, "position": pl.Int32, "items": pl.List(pl.Int32), "logits": pl.List(pl.Float32)}
)


def item_dtype(num_items: int) -> np.dtype:
    """Format 2's item ids: uint16 while the catalogue fits (up to 65,535 items), else int32."""
    return np.dtype("<u2") if num_items <= np.iinfo(np.uint16).max else np.dtype("<i4")


def column_dtype(column: str, num_items: int) -> np.dtype:
    return item_dtype(num_items) if column == "items" else COLUMNS[column][0]


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


def tail_of(logits: np.ndarray, logsumexp: np.ndarray) -> np.ndarray:
    """``log(1 - Σ_j exp(t_j - logsumexp))`` per row, float32 ``(n,)``: the log of the probability (T = 1)
    a row's full distribution puts outside its ``k`` scores ``logits`` ``(n, k)``, ``logsumexp`` ``(n,)``
    being the full row's. Computed in float64; -inf where nothing is left outside, and a mass below
    the normaliser's own rounding (about 1e-7·|logsumexp| for a float32 one) is noise of that size.

    Raises:
        ValueError: a ``logsumexp`` below the row's own top ``k`` (not that row's normaliser).
    """
    t = logits.astype(np.float64)
    top = t.max(axis=1)
    kept = top + np.log(np.exp(t - top[:, None]).sum(axis=1)) - logsumexp.astype(np.float64)  # log Σ_k p_j
    if (kept > 1e-3).any():
        raise ValueError(
            "logsumexp below the logsumexp of the row's own top k: not the full row's normaliser"
        )
    kept = np.minimum(kept, 0.0)  # rounding can put it a hair above 0: nothing measurable is left
    with np.errstate(divide="ignore"):  # log(0) = -inf where kept == 0
        small = np.log(-np.expm1(kept))  # exact while the kept mass is near 1
        large = np.log1p(-np.exp(np.minimum(kept, -0.5)))  # exact while it is not
    return np.where(kept > -0.5, small, large).astype(np.float32)


class ScoreWriter:
    """Writes a score directory (format 2) shard by shard; use as a context manager.

    Args:
        path: the directory to create.
        manifest: what describes the scores (teacher, dataset with its ``num_items``, k, positions);
            tail, columns, rows and shards are added on completion.
        overwrite: replace an existing directory (only once the new one is whole).
    """

    def __init__(self, path: str | Path, manifest: dict[str, Any], overwrite: bool = False):
        self.path = Path(path)
        refuse_existing(self.path, overwrite)
        self.manifest = {"format_version": FORMAT_VERSION, **manifest}
        self.k = int(manifest["k"])
        self.num_items = int(manifest["dataset"]["num_items"])
        # A tail when the top k drops items and the caller gives the normalisers: decided by the first
        # write, then the same for every write (a directory's rows all have one or none do).
        self.tail: bool | None = None if self.k < self.num_items else False
        self.rows_per_shard = max(1, VALUES_PER_SHARD // self.k)
        self._rank, self._ranks = world()
        token = gather(os.getpid())[0]  # one temporary directory for every rank: rank 0's pid
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{token}"
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self._shards: list[str] = []
        self.rows = 0

    def __enter__(self) -> ScoreWriter:
        if is_main_process():
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp.mkdir(parents=True)
        barrier()
        return self

    def write(
        self,
        users: np.ndarray,
        positions: np.ndarray,
        items: np.ndarray,
        logits: np.ndarray,
        logsumexp: np.ndarray | None = None,
    ) -> None:
        """Add rows.

        Args:
            users, positions: ``(n,)``.
            items: ``(n, k)`` item ids in ``1..num_items``; logits: ``(n, k)`` their raw scores, descending.
            logsumexp: ``(n,)`` the logsumexp of each full row (every item's score, T = 1) the top k were
                taken from: it gives the row's tail. Ignored when k is the catalogue (nothing is
                dropped). Without it the directory has no tail, and KD renormalises on the top k.
        """
        if items.shape != (len(users), self.k) or logits.shape != items.shape:
            raise ValueError(f"expected items and logits of shape ({len(users)}, {self.k})")
        if logsumexp is not None and np.shape(logsumexp) != (len(users),):
            raise ValueError(f"expected logsumexp of shape ({len(users)},)")
        if self.tail is None:
            self.tail = logsumexp is not None
        elif self.k < self.num_items and self.tail != (logsumexp is not None):
            raise ValueError("give logsumexp with every write of a score directory or with none")
        where = f"refusing to write {self.path}"
        refuse_non_finite(logits, users, positions, where)
        if len(users) == 0:
            return
        logits = np.asarray(logits, dtype=np.float32)
        rows = {
            "user": np.asarray(users).astype(np.int32),
            "position": np.asarray(positions).astype(np.int32),
            "items": np.asarray(items).astype(item_dtype(self.num_items)),
            "logits": np.maximum(logits - logits.max(axis=1, keepdims=True), FLOAT16_MIN).astype(np.float16),
        }
        if self.tail:
            refuse_non_finite(np.asarray(logsumexp)[:, None], users, positions, f"{where} (logsumexp)")
            rows["tail"] = tail_of(logits, np.asarray(logsumexp))
        self._pending.append(rows)
        self._pending_rows += len(users)
        if self._pending_rows >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        n = len(self._shards)
        name = f"part-{n:05d}" if self._ranks == 1 else f"part-{self._rank:03d}-{n:05d}"
        for column in self._pending[0]:
            _save(self._tmp / f"{name}.{column}.npy", [rows[column] for rows in self._pending])
        self._shards.append(name)
        self.rows += self._pending_rows
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
        parts = gather((self.rows, self._shards, self.tail))  # every rank has flushed its last shard
        self.rows = sum(rows for rows, _, _ in parts)
        if is_main_process():
            try:
                tails = {tail for _, names, tail in parts if names}  # ranks with rows
                if len(tails) > 1:
                    raise ValueError("some ranks wrote a tail and others did not")
                tail = bool(tails and tails.pop())
                shards = [name for _, names, _ in parts for name in names]
                ids = item_dtype(self.num_items).name
                columns = {
                    c: what.format(dtype=ids) for c, (_, what) in COLUMNS.items() if c != "tail" or tail
                }
                manifest = {
                    **self.manifest,
                    "tail": tail,
                    "columns": columns,
                    "rows": self.rows,
                    "shards": shards,
                }
                (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
                old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
                if self.path.exists():
                    self.path.rename(old)
                self._tmp.rename(self.path)
                shutil.rmtree(old, ignore_errors=True)
            finally:
                shutil.rmtree(self._tmp, ignore_errors=True)
        barrier()  # the directory is in place before any rank returns


def _save(path: Path, parts: list[np.ndarray]) -> None:
    """``parts`` (one dtype, equal trailing shapes) as one ``.npy`` array, written part by part: no
    concatenated copy is ever made."""
    shape = (sum(len(part) for part in parts), *parts[0].shape[1:])
    header = {"descr": np.lib.format.dtype_to_descr(parts[0].dtype), "fortran_order": False, "shape": shape}
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
        for part in parts:
            file.write(np.ascontiguousarray(part).data)


@dataclass(frozen=True)
class ScoreShard:
    """One shard's rows, memory-mapped.

    Attributes:
        items: ``(R, k)`` teacher item ids, descending by score: uint16 or int32 (format 1: int16
            where the catalogue allows, else int32).
        logits: ``(R, k)`` teacher scores: float16 minus the row's largest (format 1: raw float32).
        tail: ``(R,)`` float32 log of the teacher's probability outside the row's items, or None.
    """

    items: torch.Tensor
    logits: torch.Tensor
    tail: torch.Tensor | None


@dataclass(frozen=True)
class Scores:
    """A score directory loaded for one dataset, its shards memory-mapped.

    Format 2's files are mapped as they are (copy-on-write, so nothing can change them): resident
    memory is the pages a run touches, which the page cache holds as far as RAM allows and shares
    between processes. Format 1's parquet shards are converted one at a time into arrays in unlinked
    temporary files (so nothing is left behind), items as int16 when the catalogue allows (else int32)
    and logits as float32, and mapped back as one shard.

    Attributes:
        manifest: the parsed ``manifest.json``.
        shards: the rows, shard by shard, in manifest order.
        starts: ``(len(shards) + 1,)`` int64, the first row of each shard, then the row count.
        row_of: ``(len(data.items),)``: the row scoring the item at each flat index of
            ``Dataset.items``, -1 where the teacher has none.
    """

    manifest: dict[str, Any]
    shards: tuple[ScoreShard, ...]
    starts: torch.Tensor
    row_of: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    @property
    def has_tail(self) -> bool:
        """Whether every row carries its tail (format 2 with a top k below the catalogue)."""
        return self.manifest.get("format_version") == 2 and self.manifest.get("tail") is True

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """Rows for flat target indices ``(B, L)`` (-1 = padding), -1 where there is no score."""
        rows = self.row_of[index.clamp(min=0)]
        return torch.where(index >= 0, rows, -1)

    def fetch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``(m, k)`` int64 and logits ``(m, k)`` float32 of teacher rows ``(m,)``.

        Logits are the teacher's scores up to a constant per row (format 2 stores them relative to the
        row's largest): what every KD loss reads, a softmax or an order, does not see the constant.
        """
        return self._gather(rows, "items", torch.int64), self._gather(rows, "logits", torch.float32)

    def fetch_tail(self, rows: torch.Tensor) -> torch.Tensor:
        """The tails ``(m,)`` float32 of teacher rows ``(m,)``: log of the teacher's probability (T = 1)
        outside each row's items (-inf: none)."""
        if not self.has_tail:
            raise ValueError(
                f"the score directory has no tail (format {self.manifest.get('format_version')})"
            )
        return self._gather(rows, "tail", torch.float32)

    def table(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Every row's items, logits (as :meth:`fetch`) and tail (or None), read into memory: for tests
        and small directories; training reads rows through :meth:`fetch`."""
        every = torch.arange(self.rows)
        items, logits = self.fetch(every)
        return items, logits, self.fetch_tail(every) if self.has_tail else None

    def _gather(self, rows: torch.Tensor, column: str, dtype: torch.dtype) -> torch.Tensor:
        """``column`` at ``rows``, as ``dtype``: each shard's rows taken from its mapping."""
        rows = rows.cpu().long()
        tables = [getattr(shard, column) for shard in self.shards]
        if len(tables) == 1:
            return tables[0][rows].to(dtype)
        which = torch.searchsorted(self.starts, rows, right=True) - 1  # (m,) each row's shard
        out = torch.empty((len(rows), *tables[0].shape[1:]), dtype=dtype)
        for s in which.unique().tolist():  # a chunk's rows are a few users': a few shards
            at = (which == s).nonzero().squeeze(1)
            out[at] = tables[s][rows[at] - self.starts[s]].to(dtype)
        return out


def read_scores(path: str | Path, data: Dataset) -> Scores:
    """Check a score directory against ``data`` and map its tables (memory bounded by a block of rows:
    format 2 is checked in place; format 1 converted one shard at a time)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise DistillError(
            f"{path} is not a score directory: no {MANIFEST} (create it with `distill export-logits`)"
        )
    manifest = read_json(path / MANIFEST, "scores")
    version = manifest.get("format_version")
    if version not in READS or type(version) is not int:
        raise DistillError(
            f"{path}: unknown score format_version {version!r} (this distill reads "
            f"{' and '.join(map(str, READS))})"
        )
    check_fields(
        manifest, path / MANIFEST, MANIFEST_FIELDS if version == 1 else {**MANIFEST_FIELDS, **V2_FIELDS}
    )
    dataset = manifest["dataset"]
    if dataset["fingerprint"] != data.fingerprint:
        raise DistillError(
            f"{path} scores another dataset (fingerprint {dataset['fingerprint']}) than {data.path} "
            f"(fingerprint {data.fingerprint})"
        )
    if dataset["num_items"] != data.num_items:
        raise DistillError(f"{path} scores {dataset['num_items']} items but {data.path} has {data.num_items}")
    k, total = manifest["k"], manifest["rows"]
    if total == 0:
        raise DistillError(
            f"{path / MANIFEST}: no rows: the export scored no position, so it teaches nothing"
        )
    if k > data.num_items:
        raise DistillError(f"{path / MANIFEST}: k {k} is more than the {data.num_items} items")
    if total > len(data.items):  # at most one row per training position
        raise DistillError(
            f"{path / MANIFEST}: {total} rows, more than the {len(data.items)} positions {data.path} holds"
        )
    if version == 2 and manifest["tail"] and k == data.num_items:
        raise DistillError(
            f"{path / MANIFEST}: a tail with k = {k}, the whole catalogue, where nothing is dropped"
        )
    read = _read_v1 if version == 1 else _read_v2
    shards, sizes, row_of = read(path, manifest, data)
    if sum(sizes) != total:
        raise DistillError(f"{path}: manifest says {total} rows, the shards hold {sum(sizes)}")
    starts = torch.tensor(np.cumsum([0, *sizes]), dtype=torch.int64)
    return Scores(manifest, tuple(shards), starts, torch.from_numpy(row_of))


def _check_rows(
    path: Path, data: Dataset, users: np.ndarray, positions: np.ndarray, row_of: np.ndarray, first: int
) -> None:
    """Refuse rows outside the training sequences; point ``row_of`` at rows ``first..``."""
    if len(users) == 0:
        return
    starts, ends = data.history_bounds("train")
    users, positions = users.astype(np.int64), positions.astype(np.int64)
    if users.min() < 0 or users.max() >= data.num_users:
        raise DistillError(f"{path}: rows point outside the training sequences of {data.path}")
    if (positions < 1).any() or (positions >= (ends - starts)[users]).any():
        raise DistillError(f"{path}: rows point outside the training sequences of {data.path}")
    row_of[starts[users] + positions] = np.arange(first, first + len(users))


def _read_v2(path: Path, manifest: dict, data: Dataset) -> tuple[list[ScoreShard], list[int], np.ndarray]:
    """Map format 2's shards, checking each file's dtype, shape and size, and every value."""
    k, total = manifest["k"], manifest["rows"]
    columns = [c for c in COLUMNS if c != "tail" or manifest["tail"]]
    row_of = np.full(len(data.items), -1, dtype=np.int64)
    shards, sizes, done = [], [], 0
    for shard in manifest["shards"]:
        arrays = {c: _load(path / f"{shard}.{c}.npy", column_dtype(c, data.num_items)) for c in columns}
        rows = len(arrays["user"])
        for column, array in arrays.items():
            want = (rows, k) if column in WIDE else (rows,)
            if array.shape != want:
                raise DistillError(
                    f"{path / f'{shard}.{column}.npy'}: shape {array.shape}, expected {want} "
                    f"(k = {k}, {rows} rows in {shard}.user.npy)"
                )
        if done + rows > total:
            raise DistillError(f"{path}: manifest says {total} rows, the shards hold more")
        users, positions = arrays["user"], arrays["position"]
        _check_rows(path, data, np.asarray(users), np.asarray(positions), row_of, done)
        step = max(1, CHECK_VALUES // k)
        for start in range(0, rows, step):
            block = slice(start, start + step)
            items = arrays["items"][block]
            if items.min() < 1 or items.max() > data.num_items:
                raise DistillError(f"{path / f'{shard}.items.npy'}: item ids outside 1..{data.num_items}")
            refuse_non_finite(
                arrays["logits"][block], users[block], positions[block], f"{path / shard}.logits.npy"
            )
        if "tail" in arrays:
            tail = np.asarray(arrays["tail"])
            if np.isnan(tail).any() or (tail >= 0).any():
                raise DistillError(
                    f"{path / f'{shard}.tail.npy'}: values that are not the log of a probability below 1 "
                    "(NaN or at least 0)"
                )
        tail = torch.from_numpy(arrays["tail"]) if "tail" in arrays else None
        shards.append(ScoreShard(torch.from_numpy(arrays["items"]), torch.from_numpy(arrays["logits"]), tail))
        sizes.append(rows)
        done += rows
    if not shards:
        shards.append(
            ScoreShard(
                torch.zeros(0, k, dtype=torch.int32),
                torch.zeros(0, k, dtype=torch.float16),
                torch.zeros(0) if manifest["tail"] else None,
            )
        )
        sizes.append(0)
    return shards, sizes, row_of


def _load(file: Path, dtype: np.dtype) -> np.ndarray:
    """A format-2 column mapped copy-on-write (the file is never changed); a missing, damaged,
    truncated or padded file, or one of another dtype, is a one-line DistillError."""
    try:
        array = np.load(file, mmap_mode="c", allow_pickle=False)
    except FileNotFoundError:
        raise DistillError(f"{file}: missing (a score directory's shard is incomplete)") from None
    except (
        Exception
    ) as e:  # not .npy, a damaged header, shorter than its header says: numpy raises several types
        raise DistillError(f"{file}: not a readable score array ({first_line(e)[:200]})") from None
    if not isinstance(array, np.memmap) or array.dtype != dtype or not array.flags.c_contiguous:
        raise DistillError(f"{file}: holds {array.dtype} {array.shape}, not a score column of {dtype}")
    size = file.stat().st_size
    if size != array.offset + array.nbytes:
        raise DistillError(
            f"{file}: {size} bytes, but its header says {array.offset + array.nbytes} (damaged or padded)"
        )
    return array


def _read_v1(path: Path, manifest: dict, data: Dataset) -> tuple[list[ScoreShard], list[int], np.ndarray]:
    """Convert format 1's parquet shards, one at a time, into one mapped shard."""
    k, total = manifest["k"], manifest["rows"]
    ids = np.int16 if data.num_items <= np.iinfo(np.int16).max else np.int32
    items = _mapped((total, k), ids)
    logits = _mapped((total, k), np.float32)
    row_of = np.full(len(data.items), -1, dtype=np.int64)
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
        users = frame["user"].to_numpy()
        positions = frame["position"].to_numpy()
        _check_rows(path, data, users, positions, row_of, done)
        shard_items = frame["items"].explode().to_numpy().reshape(-1, k)
        if shard_items.min() < 1 or shard_items.max() > data.num_items:
            raise DistillError(f"{path}: item ids outside 1..{data.num_items}")
        items[done : done + frame.height] = shard_items
        shard_logits = frame["logits"].explode().to_numpy().reshape(-1, k)
        refuse_non_finite(shard_logits, users, positions, f"{path / shard}")
        logits[done : done + frame.height] = shard_logits
        done += frame.height
    return [ScoreShard(torch.from_numpy(items[:done]), torch.from_numpy(logits[:done]), None)], [done], row_of


def _mapped(shape: tuple[int, int], dtype: type) -> np.ndarray:
    """A writable array of ``shape`` in an unlinked temporary file: its pages are evictable, and the
    file vanishes when the last reference to the mapping does."""
    if shape[0] * shape[1] == 0:
        return np.zeros(shape, dtype=dtype)
    with tempfile.TemporaryFile(prefix="distill-scores-") as file:
        return np.memmap(file, dtype=dtype, mode="w+", shape=shape)
