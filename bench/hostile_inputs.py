"""Hostile inputs through every ``distill`` command (issues 13 and 22): each case's exit code and message,
classified as a clean refusal, a traceback, something left behind, a foreign file overwritten, or nonsense
answered as success.

The cases are generated, not written one by one:

- every damage of every file kind distill reads (a dataset's ``meta.json`` and parquet files, a student's
  and a teacher's ``config.json``, checkpoint, trainer state and ``metrics.json``, a score directory's
  manifest and shards, TOML files given by ``--config``, raw interaction files) through every command
  that reads that kind;
- every numeric option of every command, as ``--help`` lists it, at -1, 0 and 2**64 (floats also at NaN,
  the infinities and 1e30), every ``--device`` at names no machine here has, ``--set`` without a key or a
  value, and the values named in issue 22 (``--opset 99``, ``--port 70000``, ``--num-items 5``, ...);
- outputs that cannot be written (under ``/proc``, under a file, a name too long, a read-only directory);
- ``--overwrite`` at files and directories distill did not write, of every command that writes;
- runs whose weights are NaN, infinite or overflow, through every command that scores with them;
- backbones that do not exist, through ``teacher-train`` and ``pipeline``.

Everything happens in a temporary directory: a tiny synthetic dataset (60 users), a one-epoch d=8 SASRec,
a one-epoch MoE-LoRA teacher on the built-in ``tiny`` backbone, a score directory, an ONNX export and a
tiny pipeline output are made once. A case that damages a fixture damages a copy named after both (as
``sasrec-config-truncated``), made before the case and removed after it. Files distill did not write
(``v/thesis.tex``, ``file.txt``, a ``summary.md`` of the user's, ...) are checked after every case. After
each case whatever it created is removed and any fixture it changed is put back, so cases do not see each
other.

A case is:

- **clean**: refused with exit != 0 and one ``Error: ...`` line last (click's usage errors included), or
  exit 0 where the input is valid (``expect`` ok) or may go either way (``expect`` any);
- **traceback**: an exception other than distill's one-line error;
- **leftover**: after a refusal, the output it named exists or something new appeared in the work
  directory (caches distill keeps in a run, ``item_text.safetensors``, excepted); ``.tmp-``/``.old-``
  entries count after a success too;
- **overwrote**: a file distill did not write changed or vanished;
- **nonsense-success**: exit 0 (or still running at the time limit) where the input must be refused;
- **refused-valid**: a valid input refused; **unclear**: a refusal without a one-line ``Error:`` message;
  **timeout**: a valid input still running at the time limit.

Cases run in this process through click's CliRunner (``--subprocess``: each as its own process, much
slower); the unwritable and unreadable cases always run as separate processes, as the ``nobody`` user when
this is root (root reads and writes anywhere). ``distill serve`` runs with uvicorn's ``run`` replaced by a
stub that returns at once: a serve that would have listened exits 0. Data memory (heap, not file
mappings) is bounded at 8 GiB so that an unbounded allocation fails instead of taking a shared machine's.

    python -m bench.hostile_inputs              # every case; writes bench/results/hostile_inputs.md
    python -m bench.hostile_inputs --list       # the cases, without running them
    python -m bench.hostile_inputs --only meta  # the cases whose command, class or probe holds "meta";
                                                # prints their table, leaves the results file as it is
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import polars as pl
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from cli import main

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "hostile_inputs.md"
DATA_MEMORY = 8 << 30
TIMEOUT = 45  # seconds a case may run; every valid case here takes a few

STUDENT = "--max-len 8 --hidden 8 --epochs 1 --device cpu"
TEACHER = (
    "--epochs 1 --positions 1 --prompt-items 5 --objective last --llm-layers 1 --eval-users 10 --device cpu"
)
PIPELINE = (
    "--num-users 30 --num-items 20 --student-epochs 1 --teacher-epochs 1 --teacher-hidden 8 "
    "--student-hidden 8 --kd kl --alphas 0.5 --temperatures 1 --set max_len=8 --set teacher_prompt_items=5 "
    "--set top_k=5 --device cpu"
)
HUGE = str(2**64)

# A valid, cheap command line per command; {O} is its output. Option cases append to it (click keeps the
# last of a repeated option).
BASE = {
    "prepare": "prepare --synthetic --num-users 30 --num-items 20 -o {O}",
    "student-train": f"student-train --data data -o {{O}} {STUDENT}",
    "teacher-train": f"teacher-train --data data --sasrec sasrec -o {{O}} {TEACHER}",
    "export-logits": "export-logits --run teacher --data data -o {O} --top-k 5 --device cpu",
    "evaluate": "evaluate --run sasrec --data data --device cpu",
    "compare": "compare sasrec teacher --data data --samples 100 --device cpu",
    "recommend": "recommend --run sasrec --user 3",
    "export-model": "export-model --run sasrec -o {O}.onnx",
    "serve": "serve --run sasrec --port 0",
    "pipeline": f"pipeline -o {{O}} {PIPELINE}",
}
WRITERS = [name for name, line in BASE.items() if "{O}" in line]

# Files that are not distill's: any change to them is an overwrite.
FOREIGN = {
    "v/thesis.tex": "chapter 1",
    "file.txt": "keep me",
    "mine/notes.txt": "mine",
    "userpipe/summary.md": "# my own summary\n",
    "userpipe/summary.json": '{"mine": true}\n',
    "userdata/data/raw.csv": "user,item\n1,2\n",
    "user.onnx": "my model",
    "user2.items.json": '{"my": "vocabulary"}\n',
    "onnxdir.onnx/keep.txt": "keep",
}
LINKS = {"lnk-v": "v", "broken-lnk": "nosuch", "lnk.onnx": "file.txt"}
CACHES = {"item_text.safetensors"}  # what a teacher run keeps of its backbone's reading of the titles


@dataclasses.dataclass(frozen=True)
class Case:
    group: str  # its class: damaged file, option, unwritable, overwrite, nonsense, backbone
    what: str  # what it probes
    line: str  # the command line (`distill ...`), run from the work directory
    expect: str = "fail"  # fail: must be refused; ok: valid; any: either, cleanly
    fixture: tuple[str, str] | None = None  # (fixture, damage): the damaged copy made before the case
    guard: tuple[
        str, ...
    ] = ()  # what in the damaged copy is the user's ("." all of it): a change is an overwrite
    env: tuple[tuple[str, str], ...] = ()
    nobody: bool = False  # run as its own process, as `nobody` when root
    timeout: int = TIMEOUT
    keeps: bool = False  # a refusal that says what it keeps (a run to --resume): not a leftover


# ---------------------------------------------------------------------------------------------- damages
DELETE = object()


def set_json(rel: str, key: str, value: Any) -> Callable[[Path], None]:
    """Set the dotted ``key`` of the JSON file ``rel`` (DELETE: remove it)."""

    def apply(root: Path) -> None:
        path = root / rel
        data = json.loads(path.read_text())
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
        path.write_text(json.dumps(data))

    return apply


def write(rel: str, content: str | bytes | None) -> Callable[[Path], None]:
    """Replace ``rel`` with ``content`` (None: remove it, file or directory)."""

    def apply(root: Path) -> None:
        path = root / rel
        remove(path)
        if isinstance(content, str):
            path.write_text(content)
        elif isinstance(content, bytes):
            path.write_bytes(content)

    return apply


def truncate(rel: str) -> Callable[[Path], None]:
    """Keep the first half of ``rel``: a write that was cut off."""

    def apply(root: Path) -> None:
        path = root / rel
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return apply


def as_directory(rel: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        remove(root / rel)
        (root / rel).mkdir()

    return apply


def edit_parquet(rel: str, edit: Callable[[pl.DataFrame], pl.DataFrame]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        edit(pl.read_parquet(root / rel)).write_parquet(root / rel)

    return apply


def set_list(column: str, row: int, value: Any, dtype: Any) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Set the first element of list column ``column`` in ``row`` (or the whole list when ``value`` is a
    list or None)."""

    def edit(frame: pl.DataFrame) -> pl.DataFrame:
        rows = frame[column].to_list()
        if value is None or isinstance(value, list):
            rows[row] = value
        else:
            rows[row][0] = value
        return frame.with_columns(pl.Series(column, rows, dtype=dtype))

    return edit


def edit_npy(rel: str, edit: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    """Rewrite the numpy array in ``rel`` as ``edit`` returns it (a score shard's column)."""

    def apply(root: Path) -> None:
        np.save(root / rel, edit(np.load(root / rel)))

    return apply


def first(value: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Set the first element of an array (its first row's first value)."""

    def edit(array: np.ndarray) -> np.ndarray:
        array = array.copy()
        array.flat[0] = value
        return array

    return edit


def set_cell(column: str, value: Any) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def edit(frame: pl.DataFrame) -> pl.DataFrame:
        values = frame[column].to_list()
        values[0] = value
        return frame.with_columns(pl.Series(column, values, dtype=frame[column].dtype))

    return edit


def edit_weights(rel: str, edit: Callable[[dict], dict]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        save_file(edit(load_file(str(root / rel))), str(root / rel))

    return apply


def floats(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], dict]:
    """Apply ``fn`` to every floating-point tensor of a state dict."""
    return lambda w: {k: fn(v) if v.is_floating_point() else v for k, v in w.items()}


def first_float(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], dict]:
    def edit(w: dict) -> dict:
        name = next(k for k, v in sorted(w.items()) if v.is_floating_point())
        return {**w, name: fn(w[name].clone())}

    return edit


def one_nan(v: torch.Tensor) -> torch.Tensor:
    v.view(-1)[0] = float("nan")
    return v


def copy_from(rel: str, source: str) -> Callable[[Path], None]:
    """Replace ``rel`` with the work directory's ``source`` (the fixture copy's parent is the work dir)."""

    def apply(root: Path) -> None:
        remove(root / rel)
        copy(root.parent / source, root / rel)

    return apply


def chain(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        for step in steps:
            step(root)

    return apply


@dataclasses.dataclass(frozen=True)
class Damage:
    name: str  # the damaged copy is FIXTURE-NAME
    what: str
    apply: Callable[[Path], None]
    expect: str | dict[str, str] = "fail"  # per reader ("*": the others)
    only: tuple[str, ...] = ()  # the readers it goes through (default: every reader of the fixture)
    group: str = "damaged file"

    def expected(self, reader: str) -> str:
        expect = (
            self.expect if isinstance(self.expect, str) else self.expect.get(reader, self.expect.get("*"))
        )
        # A resume checks the run against its checkpoint's own config (last/config.json) and writes
        # config.json anew: a damaged config.json it repairs is no nonsense.
        if reader == "resume" and self.name.startswith("config-") and expect in ("fail", None):
            return "any"
        return expect or "fail"


GARBAGE = bytes(range(256)) * 4
NAN, INF = float("nan"), float("inf")
LIST_I32, LIST_STR = pl.List(pl.Int32), pl.List(pl.Utf8)

DATA_DAMAGES = [
    Damage(
        "meta-num_items-forty", "meta.json: num_items 'forty'", set_json("meta.json", "num_items", "forty")
    ),
    Damage("meta-no-num_users", "meta.json: no num_users", set_json("meta.json", "num_users", DELETE)),
    Damage("meta-no-num_items", "meta.json: no num_items", set_json("meta.json", "num_items", DELETE)),
    Damage("meta-no-fingerprint", "meta.json: no fingerprint", set_json("meta.json", "fingerprint", DELETE)),
    Damage(
        "meta-no-format_version",
        "meta.json: no format_version",
        set_json("meta.json", "format_version", DELETE),
    ),
    Damage(
        "meta-format_version-2", "meta.json: format_version 2", set_json("meta.json", "format_version", 2)
    ),
    Damage("meta-list", "meta.json: a list", write("meta.json", "[1, 2]")),
    Damage("meta-truncated", "meta.json: truncated", truncate("meta.json")),
    Damage("meta-empty", "meta.json: empty", write("meta.json", "")),
    Damage("meta-binary", "meta.json: binary", write("meta.json", GARBAGE)),
    Damage("meta-is-dir", "meta.json: a directory", as_directory("meta.json")),
    Damage("meta-num_users-negative", "meta.json: num_users -60", set_json("meta.json", "num_users", -60)),
    Damage("meta-num_items-zero", "meta.json: num_items 0", set_json("meta.json", "num_items", 0)),
    Damage("meta-num_items-float", "meta.json: num_items 40.5", set_json("meta.json", "num_items", 40.5)),
    Damage("meta-num_users-huge", "meta.json: num_users 10**15", set_json("meta.json", "num_users", 10**15)),
    Damage("meta-num_items-true", "meta.json: num_items true", set_json("meta.json", "num_items", True)),
    Damage("meta-num_items-null", "meta.json: num_items null", set_json("meta.json", "num_items", None)),
    Damage(
        "meta-fingerprint-int",
        "meta.json: fingerprint 12345 (a number)",
        set_json("meta.json", "fingerprint", 12345),
        expect={"*": "fail", "student-train": "any", "pipeline": "any"},
    ),
    Damage(
        "meta-counts-swapped",
        "meta.json: num_users and num_items swapped",
        chain(set_json("meta.json", "num_users", 40), set_json("meta.json", "num_items", 60)),
    ),
    Damage("sequences-missing", "sequences.parquet missing", write("sequences.parquet", None)),
    Damage("sequences-truncated", "sequences.parquet truncated", truncate("sequences.parquet")),
    Damage("sequences-empty", "sequences.parquet empty", write("sequences.parquet", b"")),
    Damage("sequences-text", "sequences.parquet: text", write("sequences.parquet", "user items\n1 2 3\n")),
    Damage(
        "sequences-no-items",
        "sequences.parquet: no items column",
        edit_parquet("sequences.parquet", lambda f: f.rename({"items": "history"})),
    ),
    Damage(
        "sequences-items-str",
        "sequences.parquet: items are strings",
        edit_parquet("sequences.parquet", lambda f: f.with_columns(pl.col("items").cast(LIST_STR))),
    ),
    Damage(
        "sequences-item-999",
        "sequences.parquet: item id 999 (of 40)",
        edit_parquet("sequences.parquet", set_list("items", 0, 999, LIST_I32)),
    ),
    Damage(
        "sequences-item-0",
        "sequences.parquet: item id 0 (padding)",
        edit_parquet("sequences.parquet", set_list("items", 0, 0, LIST_I32)),
    ),
    Damage(
        "sequences-item-negative",
        "sequences.parquet: item id -3",
        edit_parquet("sequences.parquet", set_list("items", 0, -3, LIST_I32)),
    ),
    Damage(
        "sequences-items-null",
        "sequences.parquet: a user's items null",
        edit_parquet("sequences.parquet", set_list("items", 0, None, LIST_I32)),
    ),
    Damage("items-missing", "items.parquet missing", write("items.parquet", None)),
    Damage("items-truncated", "items.parquet truncated", truncate("items.parquet")),
    Damage(
        "items-no-title",
        "items.parquet: no title column",
        edit_parquet("items.parquet", lambda f: f.drop("title")),
    ),
]

# Config and checkpoint damages a resumed run may survive: it continues from last/, not best/, and writes
# config.json again.
RESUME_ANY = {"*": "fail", "resume": "any"}


def run_damages(kind: str) -> list[Damage]:
    """Damages of a run directory, common to a student and a teacher run."""
    return [
        Damage(
            "config-dataset-string", "config.json: dataset 'data'", set_json("config.json", "dataset", "data")
        ),
        Damage("config-no-dataset", "config.json: no dataset", set_json("config.json", "dataset", DELETE)),
        Damage(
            "config-no-fingerprint",
            "config.json: no dataset.fingerprint",
            set_json("config.json", "dataset.fingerprint", DELETE),
        ),
        Damage("config-kind-bogus", "config.json: kind 'bogus'", set_json("config.json", "kind", "bogus")),
        Damage("config-no-kind", "config.json: no kind", set_json("config.json", "kind", DELETE), RESUME_ANY),
        Damage("config-truncated", "config.json: truncated", truncate("config.json"), RESUME_ANY),
        Damage("config-list", "config.json: a list", write("config.json", "[1, 2]"), RESUME_ANY),
        Damage("config-empty", "config.json: empty", write("config.json", ""), RESUME_ANY),
        Damage("config-binary", "config.json: binary", write("config.json", GARBAGE), RESUME_ANY),
        Damage("config-missing", "config.json missing", write("config.json", None), RESUME_ANY),
        Damage("config-is-dir", "config.json: a directory", as_directory("config.json"), RESUME_ANY),
        Damage(
            "best-weights-truncated",
            "best/model.safetensors truncated",
            truncate("best/model.safetensors"),
            RESUME_ANY,
        ),
        Damage(
            "best-weights-empty",
            "best/model.safetensors empty",
            write("best/model.safetensors", b""),
            RESUME_ANY,
        ),
        Damage(
            "best-weights-random",
            "best/model.safetensors: random bytes",
            write("best/model.safetensors", GARBAGE),
            RESUME_ANY,
        ),
        Damage(
            "best-weights-missing",
            "best/model.safetensors missing",
            write("best/model.safetensors", None),
            RESUME_ANY,
        ),
        Damage(
            "best-weights-missing-tensor",
            "best/model.safetensors: a tensor missing",
            edit_weights("best/model.safetensors", lambda w: dict(sorted(w.items())[1:])),
            RESUME_ANY,
        ),
        Damage(
            "best-weights-extra-tensor",
            "best/model.safetensors: an extra tensor",
            edit_weights("best/model.safetensors", lambda w: {**w, "nosuch.weight": torch.zeros(3)}),
            RESUME_ANY,
        ),
        Damage(
            "best-weights-int64",
            "best/model.safetensors: int64 weights",
            edit_weights("best/model.safetensors", floats(lambda v: v.long())),
            RESUME_ANY,
        ),
        Damage(
            "best-weights-float16",
            "best/model.safetensors: float16 weights",
            edit_weights("best/model.safetensors", floats(lambda v: v.half())),
            "any",
        ),
        Damage("best-missing", "best/ missing", write("best", None), RESUME_ANY),
        Damage("best-config-list", "best/config.json: a list", write("best/config.json", "[1]"), RESUME_ANY),
        Damage(
            "best-config-truncated", "best/config.json truncated", truncate("best/config.json"), RESUME_ANY
        ),
        Damage(
            "best-config-missing", "best/config.json missing", write("best/config.json", None), RESUME_ANY
        ),
        Damage(
            "last-state-truncated", "last/state.pt truncated", truncate("last/state.pt"), only=("resume",)
        ),
        Damage(
            "last-state-random",
            "last/state.pt: random bytes",
            write("last/state.pt", GARBAGE),
            only=("resume",),
        ),
        Damage("last-state-missing", "last/state.pt missing", write("last/state.pt", None), only=("resume",)),
        Damage(
            "last-weights-random",
            "last/model.safetensors: random bytes",
            write("last/model.safetensors", GARBAGE),
            only=("resume",),
        ),
        Damage("last-missing", "last/ missing", write("last", None), only=("resume",)),
        Damage(
            "last-config-list", "last/config.json: a list", write("last/config.json", "[1]"), only=("resume",)
        ),
        Damage(
            "last-config-truncated",
            "last/config.json truncated",
            truncate("last/config.json"),
            only=("resume",),
        ),
        Damage(
            "last-config-other-dataset",
            "last/config.json: another dataset's fingerprint",
            set_json("last/config.json", "dataset.fingerprint", "0123456789abcdef"),
            only=("resume",),
        ),
        Damage(
            "last-config-kind-bogus",
            "last/config.json: kind 'bogus'",
            set_json("last/config.json", "kind", "bogus"),
            only=("resume",),
        ),
        Damage("metrics-truncated", "metrics.json truncated", truncate("metrics.json"), "any"),
        Damage("metrics-list", "metrics.json: a list", write("metrics.json", "[1]"), "any"),
        Damage(
            "metrics-missing", "metrics.json missing (an unfinished run)", write("metrics.json", None), "ok"
        ),
        Damage(
            "weights-nan",
            f"{kind} weights all NaN",
            edit_weights("best/model.safetensors", floats(lambda v: torch.full_like(v, NAN))),
            RESUME_ANY,
            group="nonsense",
        ),
        Damage(
            "weights-one-nan",
            f"{kind} weights: one NaN",
            edit_weights("best/model.safetensors", first_float(one_nan)),
            RESUME_ANY,
            group="nonsense",
        ),
        Damage(
            "weights-inf",
            f"{kind} weights: one tensor +inf",
            edit_weights("best/model.safetensors", first_float(lambda v: torch.full_like(v, INF))),
            RESUME_ANY,
            group="nonsense",
        ),
        Damage(
            "weights-huge",
            f"{kind} weights x 1e30 (finite; scores overflow)",
            edit_weights("best/model.safetensors", floats(lambda v: v * 1e30)),
            RESUME_ANY,
            group="nonsense",
        ),
    ]


STUDENT_DAMAGES = [
    *run_damages("student"),
    Damage(
        "config-kind-teacher",
        "config.json: kind 'teacher-moe-lora'",
        set_json("config.json", "kind", "teacher-moe-lora"),
    ),
    Damage(
        "config-dataset-path-int",
        "config.json: dataset.path 5",
        set_json("config.json", "dataset.path", 5),
        {"*": "any", "recommend": "fail", "serve": "fail", "export-model": "fail"},
    ),
    Damage(
        "config-dataset-path-other",
        "config.json: dataset.path names another dataset",
        set_json("config.json", "dataset.path", "../data2"),
        {"*": "any", "recommend": "fail", "serve": "fail", "export-model": "fail"},
    ),
    Damage("config-no-model", "config.json: no model", set_json("config.json", "model", DELETE), RESUME_ANY),
    Damage(
        "config-model-list", "config.json: model a list", set_json("config.json", "model", [8, 8]), RESUME_ANY
    ),
    Damage(
        "config-model-hidden-eight",
        "config.json: model.hidden 'eight'",
        set_json("config.json", "model.hidden", "eight"),
        RESUME_ANY,
    ),
    Damage(
        "config-model-hidden-32",
        "config.json: model.hidden 32 (the weights are 8 wide)",
        set_json("config.json", "model.hidden", 32),
        RESUME_ANY,
    ),
    Damage(
        "config-model-max_len-negative",
        "config.json: model.max_len -8",
        set_json("config.json", "model.max_len", -8),
        RESUME_ANY,
    ),
    Damage(
        "config-model-unknown-key",
        "config.json: model.nosuch 1",
        set_json("config.json", "model.nosuch", 1),
        RESUME_ANY,
    ),
    Damage("config-no-train", "config.json: no train", set_json("config.json", "train", DELETE), "any"),
    Damage(
        "config-folds-string",
        "config.json: folds 'x'",
        set_json("config.json", "folds", "x"),
        {"*": "any", "evaluate": "fail", "compare": "fail", "export-logits": "fail"},
    ),
    Damage(
        "early",
        "a run killed before its first checkpoint (config.json and tb/ only)",
        chain(write("best", None), write("last", None), write("metrics.json", None)),
        {"*": "fail", "student-train -o": "ok"},
        only=("resume", "student-train -o", "evaluate", "teacher-train"),
    ),
]

TEACHER_DAMAGES = [
    *run_damages("teacher"),
    Damage("config-kind-student", "config.json: kind 'student'", set_json("config.json", "kind", "student")),
    Damage("config-no-train", "config.json: no train", set_json("config.json", "train", DELETE), RESUME_ANY),
    Damage(
        "config-train-list", "config.json: train a list", set_json("config.json", "train", [1]), RESUME_ANY
    ),
    Damage(
        "config-no-sasrec_run", "config.json: no sasrec_run", set_json("config.json", "sasrec_run", DELETE)
    ),
    Damage("config-sasrec_run-int", "config.json: sasrec_run 5", set_json("config.json", "sasrec_run", 5)),
    Damage(
        "config-sasrec_run-nosuch",
        "config.json: sasrec_run 'nosuch'",
        set_json("config.json", "sasrec_run", "nosuch"),
    ),
    Damage(
        "config-sasrec_run-dataset",
        "config.json: sasrec_run a dataset",
        set_json("config.json", "sasrec_run", "../data"),
    ),
    Damage("config-backbone-int", "config.json: backbone 5", set_json("config.json", "backbone", 5), "any"),
    Damage(
        "config-backbone-nosuch",
        "config.json: backbone and train.llm './nosuch-model'",
        chain(
            set_json("config.json", "backbone", {"spec": "./nosuch-model"}),
            set_json("config.json", "train.llm", "./nosuch-model"),
        ),
        RESUME_ANY,
    ),
    Damage(
        "config-train-experts-four",
        "config.json: train.experts 'four'",
        set_json("config.json", "train.experts", "four"),
        RESUME_ANY,
    ),
    Damage(
        "config-train-r-zero", "config.json: train.r 0", set_json("config.json", "train.r", 0), RESUME_ANY
    ),
    Damage(
        "config-train-prompt_items-99",
        "config.json: train.prompt_items 99 (SASRec reads 8)",
        set_json("config.json", "train.prompt_items", 99),
        RESUME_ANY,
    ),
    Damage(
        "config-train-unknown-key",
        "config.json: train.nosuch 1",
        set_json("config.json", "train.nosuch", 1),
        RESUME_ANY,
    ),
    Damage(
        "config-train-target_modules-nosuch",
        "config.json: train.target_modules ['nosuch']",
        set_json("config.json", "train.target_modules", ["nosuch"]),
        RESUME_ANY,
    ),
    Damage(
        "best-weights-of-student",
        "best/model.safetensors: a student's weights",
        copy_from("best/model.safetensors", "sasrec/best/model.safetensors"),
        RESUME_ANY,
    ),
    Damage("sasrec-copy-missing", "its SASRec copy (RUN/sasrec) missing", write("sasrec", None), RESUME_ANY),
    Damage(
        "sasrec-copy-weights-random",
        "its SASRec copy: random weights file",
        write("sasrec/best/model.safetensors", GARBAGE),
        RESUME_ANY,
    ),
    Damage(
        "sasrec-copy-config-list",
        "its SASRec copy: config.json a list",
        write("sasrec/config.json", "[1]"),
        RESUME_ANY,
    ),
    Damage(
        "sasrec-copy-weights-nan",
        "its SASRec copy: weights all NaN",
        edit_weights("sasrec/best/model.safetensors", floats(lambda v: torch.full_like(v, NAN))),
        RESUME_ANY,
        group="nonsense",
    ),
    Damage(
        "item_text-truncated",
        "item_text.safetensors truncated (a cache)",
        truncate("item_text.safetensors"),
        "ok",
    ),
    Damage(
        "item_text-random",
        "item_text.safetensors: random bytes (a cache)",
        write("item_text.safetensors", GARBAGE),
        "ok",
    ),
]

SHARD = "part-00000"  # format 2: one .npy file per column (user, position, items, logits, tail)
SCORE_DAMAGES = [
    Damage("manifest-list", "manifest.json: a list", write("manifest.json", "[1, 2]")),
    Damage("manifest-truncated", "manifest.json truncated", truncate("manifest.json")),
    Damage("manifest-empty", "manifest.json empty", write("manifest.json", "")),
    Damage("manifest-missing", "manifest.json missing", write("manifest.json", None)),
    Damage("manifest-no-k", "manifest.json: no k", set_json("manifest.json", "k", DELETE)),
    Damage("manifest-k-five", "manifest.json: k 'five'", set_json("manifest.json", "k", "five")),
    Damage("manifest-k-zero", "manifest.json: k 0", set_json("manifest.json", "k", 0)),
    Damage("manifest-k-negative", "manifest.json: k -5", set_json("manifest.json", "k", -5)),
    Damage("manifest-k-huge", "manifest.json: k 10**9", set_json("manifest.json", "k", 10**9)),
    Damage("manifest-rows-huge", "manifest.json: rows 10**15", set_json("manifest.json", "rows", 10**15)),
    Damage("manifest-rows-negative", "manifest.json: rows -1", set_json("manifest.json", "rows", -1)),
    Damage("manifest-rows-string", "manifest.json: rows 'many'", set_json("manifest.json", "rows", "many")),
    Damage("manifest-no-rows", "manifest.json: no rows", set_json("manifest.json", "rows", DELETE)),
    Damage(
        "manifest-shards-nosuch",
        "manifest.json: shards names a missing file",
        set_json("manifest.json", "shards", ["part-00009"]),
    ),
    Damage(
        "manifest-shards-string", "manifest.json: shards a string", set_json("manifest.json", "shards", SHARD)
    ),
    Damage("manifest-shards-empty", "manifest.json: shards []", set_json("manifest.json", "shards", [])),
    Damage(
        "manifest-shards-outside",
        "manifest.json: shards names ../data/sequences.parquet",
        set_json("manifest.json", "shards", ["../data/sequences.parquet"]),
    ),
    Damage("manifest-shards-int", "manifest.json: shards [5]", set_json("manifest.json", "shards", [5])),
    Damage("manifest-no-dataset", "manifest.json: no dataset", set_json("manifest.json", "dataset", DELETE)),
    Damage(
        "manifest-dataset-string",
        "manifest.json: dataset 'data'",
        set_json("manifest.json", "dataset", "data"),
    ),
    Damage(
        "manifest-format_version-2",
        "manifest.json: format_version 2",
        set_json("manifest.json", "format_version", 2),
    ),
    Damage(
        "manifest-num_items-41",
        "manifest.json: dataset.num_items 41",
        set_json("manifest.json", "dataset.num_items", 41),
    ),
    Damage("shard-truncated", "shard: items.npy truncated", truncate(f"{SHARD}.items.npy")),
    Damage("shard-empty", "shard: logits.npy empty", write(f"{SHARD}.logits.npy", b"")),
    Damage("shard-text", "shard: user.npy is text", write(f"{SHARD}.user.npy", "user,position\n")),
    Damage("shard-no-items", "shard: items.npy missing", write(f"{SHARD}.items.npy", None)),
    Damage("shard-no-tail", "shard: tail.npy missing", write(f"{SHARD}.tail.npy", None)),
    Damage(
        "shard-short-logits",
        "shard: logits one column shorter than items",
        edit_npy(f"{SHARD}.logits.npy", lambda a: a[:, :-1]),
    ),
    Damage(
        "shard-logits-float64",
        "shard: logits float64",
        edit_npy(f"{SHARD}.logits.npy", lambda a: a.astype(np.float64)),
    ),
    Damage(
        "shard-rows-short",
        "shard: position.npy one row short",
        edit_npy(f"{SHARD}.position.npy", lambda a: a[:-1]),
    ),
    Damage("shard-item-999", "shard: item id 999 (of 40)", edit_npy(f"{SHARD}.items.npy", first(999))),
    Damage("shard-item-0", "shard: item id 0 (padding)", edit_npy(f"{SHARD}.items.npy", first(0))),
    Damage("shard-user-999", "shard: user 999 (of 60)", edit_npy(f"{SHARD}.user.npy", first(999))),
    Damage("shard-position-0", "shard: position 0", edit_npy(f"{SHARD}.position.npy", first(0))),
    Damage(
        "shard-logits-nan",
        "shard: one NaN logit",
        edit_npy(f"{SHARD}.logits.npy", first(NAN)),
        group="nonsense",
    ),
    Damage(
        "shard-logits-inf",
        "shard: one -inf logit",
        edit_npy(f"{SHARD}.logits.npy", first(-INF)),
        group="nonsense",
    ),
    Damage(
        "shard-tail-positive",
        "shard: a tail above 0 (more than all the mass)",
        edit_npy(f"{SHARD}.tail.npy", first(1.0)),
        group="nonsense",
    ),
]

# The second run of a two-fold cross-fit (fold0 is the first).
FOLD_DAMAGES = [
    Damage("as-is", "cross-fit: both folds (valid)", lambda root: None, "ok"),
    Damage("folds-k-3", "cross-fit: fold 1 says k 3", set_json("config.json", "folds.k", 3)),
    Damage("folds-fold-0", "cross-fit: fold 0 twice", set_json("config.json", "folds.fold", 0)),
    Damage("folds-fold-2", "cross-fit: fold 2 of 2", set_json("config.json", "folds.fold", 2)),
    Damage("folds-k-string", "cross-fit: folds.k 'two'", set_json("config.json", "folds.k", "two")),
    Damage(
        "no-folds",
        "cross-fit: fold 1 without folds (an ensemble member)",
        set_json("config.json", "folds", DELETE),
        "any",
    ),
    Damage(
        "weights-nan",
        "cross-fit: fold 1 weights all NaN",
        edit_weights("best/model.safetensors", floats(lambda v: torch.full_like(v, NAN))),
        group="nonsense",
    ),
]

# Who reads each fixture kind: (reader, command template with {X} for the damaged copy).
READERS: dict[str, list[tuple[str, str]]] = {
    "data": [
        ("student-train", f"student-train --data {{X}} -o out {STUDENT}"),
        ("teacher-train", f"teacher-train --data {{X}} --sasrec sasrec -o out {TEACHER}"),
        ("export-logits", "export-logits --run teacher --data {X} -o out --top-k 5 --device cpu"),
        ("evaluate", "evaluate --run sasrec --data {X} --device cpu"),
        ("compare", "compare sasrec teacher --data {X} --samples 100 --device cpu"),
        ("recommend", "recommend --run sasrec --data {X} --user 3"),
        ("export-model", "export-model --run sasrec --data {X} -o out.onnx"),
        ("serve", "serve --run sasrec --data {X} --port 0"),
        ("pipeline", f"pipeline --data {{X}} -o out {PIPELINE}"),
    ],
    "sasrec": [
        ("evaluate", "evaluate --run {X} --data data --device cpu"),
        ("compare", "compare sasrec {X} --data data --samples 100 --device cpu"),
        ("recommend", "recommend --run {X} --user 3"),
        ("export-model", "export-model --run {X} -o out.onnx"),
        ("serve", "serve --run {X} --port 0"),
        ("export-logits", "export-logits --run {X} --data data -o out --top-k 5 --device cpu"),
        ("teacher-train", f"teacher-train --data data --sasrec {{X}} -o out {TEACHER}"),
        ("student-train --hint-run", f"student-train --data data -o out {STUDENT} --hint-run {{X}}"),
        ("resume", f"student-train --data data -o {{X}} --resume {STUDENT} --epochs 2"),
        ("student-train -o", f"student-train --data data -o {{X}} {STUDENT}"),
    ],
    "teacher": [
        ("evaluate", "evaluate --run {X} --data data --device cpu"),
        ("compare", "compare sasrec {X} --data data --samples 100 --device cpu"),
        ("recommend", "recommend --run {X} --user 3"),
        ("serve", "serve --run {X} --port 0"),
        ("export-logits", "export-logits --run {X} --data data -o out --top-k 5 --device cpu"),
        ("resume", f"teacher-train --data data --sasrec sasrec -o {{X}} --resume {TEACHER} --epochs 2"),
    ],
    "fold1": [
        ("evaluate", "evaluate --run fold0 --run {X} --data data --device cpu"),
        ("compare", "compare sasrec fold0,{X} --data data --samples 100 --device cpu"),
        ("export-logits", "export-logits --run fold0 --run {X} --data data -o out --top-k 5 --device cpu"),
        (
            "evaluate --weights fit",
            "evaluate --run sasrec --run fold0 --run {X} --weights fit --data data --device cpu",
        ),
    ],
    "scores": [
        ("student-train kl", f"student-train --data data -o out {STUDENT} --teacher-scores {{X}}"),
        (
            "student-train rank",
            f"student-train --data data -o out {STUDENT} --kd rank --teacher-scores {{X}}",
        ),
    ],
}
# "student-train -o" (a run directory to write, not read) only meets the killed-run fixture.
DAMAGES = {
    "data": DATA_DAMAGES,
    "sasrec": STUDENT_DAMAGES,
    "teacher": TEACHER_DAMAGES,
    "fold1": FOLD_DAMAGES,
    "scores": SCORE_DAMAGES,
}


def damaged_file_cases() -> list[Case]:
    cases = []
    for fixture, damages in DAMAGES.items():
        for damage in damages:
            for reader, template in READERS[fixture]:
                wanted = damage.only or tuple(r for r, _ in READERS[fixture] if r != "student-train -o")
                if reader not in wanted:
                    continue
                name = f"{fixture}-{damage.name}"
                cases.append(
                    Case(
                        damage.group,
                        damage.what,
                        template.format(X=name),
                        damage.expected(reader),
                        fixture=(fixture, damage.name),
                    )
                )
    return cases + raw_input_cases() + toml_cases()


# Raw interaction files `prepare` reads (made by setup()): (file and options, what, expect).
RAW_INPUTS = [
    ("nosuch.txt", "input file missing", "fail"),
    ("mine", "input is a directory", "fail"),
    ("empty.txt", "empty input", "fail"),
    ("/dev/null", "input /dev/null", "fail"),
    ("f.txt", "one interaction", "fail"),
    ("big.txt", "26-digit ids", "ok"),
    ("gz.csv", "gzip bytes named .csv", "fail"),
    ("mixed.txt", "'user item' lines and a 3-field line", "fail"),
    ("latin1.txt", "Latin-1 bytes, not UTF-8", "any"),
    ("header.csv", "CSV header only", "fail"),
    ("ok.csv --user-col nosuch", "CSV: --user-col names no column", "fail"),
    ("ok.csv --time-col when", "CSV: timestamps 'yesterday'", "fail"),
    ("trunc.parquet --format parquet", "Parquet truncated", "fail"),
    ("f.txt --format parquet", "text read as --format parquet", "fail"),
    ("bad.dat --format movielens", "MovieLens line with 2 fields", "fail"),
    ("bad.inter --format recbole", "RecBole file without its header", "fail"),
    ("ok.csv --items nosuch.tsv", "--items missing", "fail"),
    ("ok.csv --items gz.csv", "--items binary", "fail"),
    ("ok.csv --min-user-interactions 1000", "every user filtered out", "fail"),
]


def raw_input_cases() -> list[Case]:
    return [
        Case("damaged file", f"prepare: {what}", f"prepare {args} -o out", expect)
        for args, what, expect in RAW_INPUTS
    ]


# An integer config field per command that its BASE line does not set (a value given as an option would
# replace the file's before it is read), and a float one where there is one.
INT_KEY = {
    "prepare": "min_item_interactions",
    "student-train": "patience",
    "teacher-train": "patience",
    "export-logits": "batch_size",
    "evaluate": "batch_size",
    "compare": "batch_size",
    "recommend": "k",
    "export-model": "opset",
    "serve": "max_k",
    "pipeline": "seeds",
}
FLOAT_KEY = {"student-train": "lr", "teacher-train": "lr"}


def toml_files() -> dict[str, str | bytes]:
    """The TOML files the cases give to --config (name -> content), written by setup()."""
    files: dict[str, str | bytes] = {
        "bad-syntax": "epochs = = 3\n",
        "unknown-key": "nosuch = 1\n",
        "unknown-table": "[model]\nhidden = 8\n",
        "binary": GARBAGE,
        "empty": "",
    }
    for command, key in INT_KEY.items():
        files[f"{command}-int-string"] = f'{key} = "forty"\n'
        files[f"{command}-int-list"] = f"{key} = [1, 2]\n"
        files[f"{command}-int-table"] = f"[{key}]\nx = 1\n"
        files[f"{command}-int-negative"] = f"{key} = -1\n"
        files[f"{command}-int-huge"] = f"{key} = {HUGE}\n"
    for command, key in FLOAT_KEY.items():
        files[f"{command}-float-nan"] = f"{key} = nan\n"
    return files


def toml_cases() -> list[Case]:
    cases = []
    for command, base in BASE.items():
        line = base.format(O="out")
        for name, what, expect in (
            ("toml/bad-syntax.toml", "--config: not TOML", "fail"),
            ("toml/unknown-key.toml", "--config: unknown key", "fail"),
            ("toml/unknown-table.toml", "--config: unknown table [model]", "fail"),
            ("toml/binary.toml", "--config: binary file", "fail"),
            ("toml/empty.toml", "--config: empty file (valid)", "ok"),
            ("toml/nosuch.toml", "--config: missing file", "fail"),
            ("v", "--config: a directory", "fail"),
            (f"toml/{command}-int-string.toml", f"--config: {INT_KEY[command]} 'forty'", "fail"),
            (f"toml/{command}-int-list.toml", f"--config: {INT_KEY[command]} a list", "fail"),
            (f"toml/{command}-int-table.toml", f"--config: {INT_KEY[command]} a table", "fail"),
            (f"toml/{command}-int-negative.toml", f"--config: {INT_KEY[command]} -1", "fail"),
            (
                f"toml/{command}-int-huge.toml",
                f"--config: {INT_KEY[command]} 2**64",
                option_expect(INT_KEY[command], HUGE),
            ),
        ):
            cases.append(Case("damaged file", what, f"{line} --config {name}", expect))
        if command in FLOAT_KEY:
            name = f"toml/{command}-float-nan.toml"
            cases.append(
                Case("damaged file", f"--config: {FLOAT_KEY[command]} nan", f"{line} --config {name}")
            )
    return cases


# ---------------------------------------------------------------------------------------------- options
ZERO_OK = {
    "seed",
    "patience",
    "weight_decay",
    "dropout",
    "lora_dropout",
    "warmup",
    "alpha",
    "hint_weight",
    "port",
}
HUGE_FAILS = {
    "dropout",
    "lora_dropout",
    "warmup",
    "alpha",
    "port",
    "min_user_interactions",
    "min_item_interactions",
    "num_users",
    "num_items",
    "prompt_items",
    "experts",
    "opset",
    "seeds",
    "heads",
    "blocks",
}


def option_expect(name: str, value: str) -> str:
    """What an option (its config field name) at ``value`` should give: every integer is a seed; --fold
    and --folds need each other; fractions stay below 1; 2**64 of anything counted is at best clamped."""
    if name in ("fold", "folds") or value in ("nan", "inf", "-inf"):
        return "fail"
    if name == "seed":
        return "any"
    if value.startswith("-"):
        return "fail"
    if value == "0":
        return "ok" if name in ZERO_OK else "fail"
    return "fail" if name in HUGE_FAILS else "any"


def numeric_options(command: str) -> list[tuple[str, str, bool]]:
    """(flag, config field, is float) of every numeric option of ``command``, as ``--help`` lists them."""
    out = []
    for param in main.commands[command].params:
        if isinstance(param, click.Option) and isinstance(
            param.type, (click.types.IntParamType, click.types.FloatParamType)
        ):
            flag = next(o for o in param.opts if o.startswith("--"))
            out.append((flag, param.name, isinstance(param.type, click.types.FloatParamType)))
    return out


DEVICES = ("bogus", "cuda", "cuda:7", "mps", "meta", "", "cpu:1")

# The values issue 22 names, and other options with a range of their own: (command, arguments, expect, what).
SPECIAL_OPTIONS = [
    ("export-model", "--opset 99", "fail", "opset 99"),
    ("export-model", "--opset 5", "fail", "opset 5"),
    ("export-model", "--opset 17", "ok", "opset 17"),
    ("pipeline", "--num-items 5", "fail", "5 synthetic items"),
    ("pipeline", "--num-items 10", "ok", "10 synthetic items"),
    ("prepare", "--num-items 9", "fail", "9 synthetic items"),
    ("student-train", "--loss bce --negatives 100000000", "fail", "10**8 negatives"),
    ("student-train", "--loss bce --negatives 40", "any", "negatives = catalogue"),
    ("student-train", "--teacher-scores scores --temperature 1e30", "any", "temperature 1e30"),
    ("student-train", "--teacher-scores scores --temperature 1e-30", "any", "temperature 1e-30"),
    ("student-train", "--teacher-scores scores --loss bce", "fail", "distillation with bce"),
    ("student-train", "--max-len 10000000000000", "fail", "max-len 10**13"),
    ("student-train", "--hidden 8 --heads 3", "fail", "heads do not divide hidden"),
    ("student-train", "--folds 2 --fold 2", "fail", "fold = folds"),
    ("student-train", "--folds 1 --fold 0", "fail", "one fold"),
    ("student-train", f"--folds {HUGE} --fold 0", "any", "2**64 folds"),
    ("student-train", "--folds 2 --fold -1", "fail", "fold -1"),
    ("teacher-train", "--prompt-items 9", "fail", "prompt-items > the SASRec's max_len"),
    ("teacher-train", "--lora-r 6 --experts 4", "fail", "r not divisible by experts"),
    ("teacher-train", "--target-modules nosuch", "fail", "target module that does not exist"),
    ("teacher-train", "--target-modules ,", "fail", "no target module"),
    ("teacher-train", "--folds 2 --fold 5", "fail", "fold >= folds"),
    ("export-logits", "--top-k 1000000000", "any", "top-k 10**9"),
    ("export-logits", "--full --top-k 0", "any", "--full with --top-k 0"),
    ("export-logits", "--run teacher", "fail", "a run given twice"),
    ("recommend", "--k 1000000000", "ok", "k 10**9 (fewer come back)"),
    ("serve", "--port 70000", "fail", "port 70000"),
    ("serve", "--port 65536", "fail", "port 65536"),
    ("serve", "--host bogus.invalid", "fail", "unknown host"),
    ("serve", "--host ''", "any", "empty host (all interfaces)"),
    ("compare", "--metric ndcg@0", "fail", "metric ndcg@0"),
    ("compare", "--metric hr@-1", "fail", "metric hr@-1"),
    ("compare", "--metric mrr@5", "fail", "metric mrr@5"),
    ("compare", "--metric bogus", "fail", "unknown metric"),
    ("compare", "--metric ndcg@100000", "any", "metric at k > catalogue"),
    ("compare", f"--samples {10**12}", "fail", "10**12 bootstrap samples"),
    ("pipeline", "--alphas 2", "fail", "alpha 2"),
    ("pipeline", "--alphas ''", "fail", "no alphas"),
    ("pipeline", "--alphas 0.5,nan", "fail", "an alpha NaN"),
    ("pipeline", "--temperatures 0", "fail", "temperature 0"),
    ("pipeline", "--temperatures ''", "fail", "no temperatures"),
    ("pipeline", "--kd ''", "fail", "no KD loss"),
    ("pipeline", "--kd bogus", "fail", "unknown KD loss"),
    ("pipeline", "--teacher cross-fit --members 1", "fail", "cross-fit of 1 fold"),
    ("pipeline", f"--teacher ensemble --members {HUGE}", "fail", "2**64 ensemble members"),
    ("pipeline", "--set max_len=0", "fail", "max_len 0"),
    ("pipeline", "--set top_k=0", "fail", "top_k 0"),
    ("pipeline", "--set teacher_prompt_items=9", "fail", "prompt items > max_len"),
]


def option_cases() -> list[Case]:
    cases = []
    for command, base in BASE.items():
        line = base.format(O="out")
        for flag, name, is_float in numeric_options(command):
            for value in ("-1", "0", "nan", "inf", "-inf", "1e30") if is_float else ("-1", "0", HUGE):
                expect = option_expect(name, value)
                timeout = 30 if expect == "fail" else TIMEOUT  # something accepted that must not be
                cases.append(
                    Case("option", f"{flag} {value}", f"{line} {flag} {value}", expect, timeout=timeout)
                )
        if any(p.name == "device" for p in main.commands[command].params):
            for device in DEVICES:
                expect = (
                    "any"
                    if device == "cpu:1" or (device.startswith("cuda") and torch.cuda.is_available())
                    else "fail"
                )
                shown = shlex.quote(device)
                cases.append(Case("option", f"--device {shown}", f"{line} --device {shown}", expect))
        for item in ("nosuch=1", "novalue", "=1"):
            cases.append(Case("option", f"--set {item}", f"{line} --set {item}"))
    for command, args, expect, what in SPECIAL_OPTIONS:
        line = f"{BASE[command].format(O='out')} {args}"
        cases.append(Case("option", what, line, expect, timeout=30))
    line = f"{BASE['student-train'].format(O='out')} --epochs 2 --lr 1e30"
    cases.append(Case("option", "exploding loss (keeps epoch 1 to --resume)", line, keeps=True))
    return cases


# ---------------------------------------------------------------------------------------------- writing
def unwritable_cases() -> list[Case]:
    cases = []
    for command in WRITERS:
        for target, what, nobody in (
            ("/proc/x", "output under /proc", False),
            ("file.txt/out", "output under a file", False),
            ("n" * 300, "output name of 300 characters", False),
            ("ro/x", "output in a read-only directory", True),
        ):
            line = BASE[command].format(O=target)
            cases.append(Case("unwritable", what, line, nobody=nobody))
    for line, what in (
        (
            "prepare --synthetic --num-users 30 --num-items 20 -o ro/a/b",
            "output two levels into a read-only directory",
        ),
        ("evaluate --run locked --data data --device cpu", "run directory unreadable"),
        ("evaluate --run sasrec --data lockeddata --device cpu", "dataset directory unreadable"),
        ("evaluate --run sasrec --data data --device cpu --config locked.toml", "--config unreadable"),
    ):
        cases.append(Case("unwritable", what, line, "fail", nobody=True))
    return cases


def overwrite_cases() -> list[Case]:
    """--overwrite (and its absence) at what distill did not write, or wrote as another kind."""
    other_kind = {
        "prepare": "sasrec",
        "student-train": "data",
        "teacher-train": "scores",
        "export-logits": "sasrec",
        "pipeline": "sasrec",
    }
    own_kind = {
        "prepare": "data",
        "student-train": "sasrec",
        "teacher-train": "teacher",
        "export-logits": "scores",
        "pipeline": "pipe",
    }
    cases = []
    for command in WRITERS:
        if command == "export-model":
            continue
        line = BASE[command]
        for target, what, overwrite in (
            ("v", "a foreign directory", True),
            ("v", "a foreign directory, no --overwrite", False),
            ("mine", "a directory of the user's notes", True),
            ("file.txt", "a foreign file", True),
            ("lnk-v", "a symbolic link to a foreign directory", True),
            ("broken-lnk", "a broken symbolic link", True),
        ):
            extra = " --overwrite" if overwrite else ""
            # The pipeline writes its parts into a directory of other files and leaves those (documented in
            # distill/outputs.py): a success there is right as long as the user's files stay.
            beside = command == "pipeline" and overwrite and target in ("v", "mine", "lnk-v")
            cases.append(Case("overwrite", what, line.format(O=target) + extra, "any" if beside else "fail"))
        copy_name = f"{other_kind[command]}-as-is"
        cases.append(
            Case(
                "overwrite",
                f"a {other_kind[command]} copy where the command writes another kind",
                line.format(O=copy_name) + " --overwrite",
                fixture=(other_kind[command], "as-is"),
                guard=(".",),
            )
        )
        cases.append(
            Case(
                "overwrite",
                "its own kind (valid)",
                line.format(O=f"{own_kind[command]}-as-is") + " --overwrite",
                "ok",
                fixture=(own_kind[command], "as-is"),
            )
        )
        cases.append(
            Case(
                "overwrite",
                "its own kind, holding a file of the user's",
                line.format(O=f"{own_kind[command]}-user-notes") + " --overwrite",
                "any" if command == "pipeline" else "fail",  # the pipeline replaces its parts only
                fixture=(own_kind[command], "user-notes"),
                guard=("notes.txt",),
            )
        )
    pipe = BASE["pipeline"]
    for target, what, overwrite, fixture in (
        ("userpipe", "the user's summary.md and summary.json", True, None),
        ("userpipe", "the user's summary.md and summary.json, no --overwrite", False, None),
        ("userdata", "a directory holding the user's data/", True, None),
        (
            "pipe-user-summary",
            "a pipeline output whose summary.md is the user's",
            True,
            ("pipe", "user-summary"),
        ),
    ):
        extra = " --overwrite" if overwrite else ""
        cases.append(
            Case("overwrite", what, pipe.format(O=target) + extra, fixture=fixture, guard=("summary.md",))
        )
    model = "export-model --run sasrec -o {O} --overwrite"
    for target, what, expect in (
        ("user.onnx", "a foreign .onnx file", "fail"),
        ("user2.onnx", "a foreign vocabulary beside the output", "fail"),
        ("onnxdir.onnx", "a directory named .onnx", "fail"),
        ("lnk.onnx", "a symbolic link to a foreign file", "fail"),
        ("m.onnx", "its own export (valid)", "ok"),
        ("v/new.onnx", "a new file in a foreign directory (valid)", "ok"),
    ):
        cases.append(Case("overwrite", what, model.format(O=target), expect))
    cases.append(
        Case("overwrite", "a foreign vocabulary, no --overwrite", "export-model --run sasrec -o user2.onnx")
    )
    return cases


# ---------------------------------------------------------------------------------------------- the rest
def nonsense_cases() -> list[Case]:
    cases = [
        ("recommend --run sasrec --user nosuch", "unknown user", "fail"),
        ("recommend --run sasrec --user ''", "empty user id", "fail"),
        ("recommend --run sasrec --history nosuch", "unknown items only (documented: popular items)", "ok"),
        ("recommend --run sasrec --history ''", "empty history (documented: popular items)", "ok"),
        ("recommend --run sasrec --history '1 nosuch 2'", "one unknown item among known ones", "ok"),
        ("recommend --run sasrec --user 3 --history 1", "--user and --history", "fail"),
        ("recommend --run sasrec", "neither --user nor --history", "fail"),
        ("recommend --run teacher --user 3", "a teacher run (valid)", "ok"),
        ("recommend --run sasrec --data data2 --user 3", "another dataset", "fail"),
        ("recommend --run data --user 3", "a dataset as the run", "fail"),
        ("evaluate --run sasrec --data data2 --device cpu", "another dataset", "fail"),
        ("evaluate --run nosuch --data data --device cpu", "a run that does not exist", "fail"),
        ("evaluate --run sasrec --data f.txt --device cpu", "--data a file", "fail"),
        ("evaluate --run scores --data data --device cpu", "a score directory as the run", "fail"),
        (
            "evaluate --run sasrec --run teacher --weights fit --data data --device cpu",
            "an ensemble (valid)",
            "ok",
        ),
        ("compare sasrec --data data --device cpu", "one run", "fail"),
        ("compare sasrec sasrec --data data --samples 100 --device cpu", "a run against itself", "any"),
        ("evaluate --run fold0 --data data --device cpu", "one fold of a two-fold cross-fit alone", "fail"),
        ("recommend --run fold0 --user 3", "one fold of a cross-fit, for a user it trained on", "any"),
        ("export-model --run fold0 -o out.onnx", "one fold of a cross-fit exported", "any"),
        ("compare sasrec nosuch --data data --device cpu", "a run that does not exist", "fail"),
        ("export-model --run teacher -o out.onnx", "a teacher run", "fail"),
        ("export-model --run sasrec -o out.txt", "not a .onnx output", "fail"),
        ("export-model --run sasrec --data data2 -o out.onnx", "another dataset", "fail"),
        ("serve --run teacher --port 0", "a teacher run (valid)", "ok"),
        ("serve --run sasrec --data data2 --port 0", "another dataset", "fail"),
        ("export-logits --run sasrec --data data2 -o out --device cpu", "another dataset", "fail"),
        (
            "export-logits --run scores --data data -o out --device cpu",
            "a score directory as the run",
            "fail",
        ),
        (
            f"student-train --data data2 -o out {STUDENT} --teacher-scores scores",
            "scores of another dataset",
            "fail",
        ),
        (
            f"student-train --data data -o out {STUDENT} --teacher-scores data",
            "a dataset as the scores",
            "fail",
        ),
        (
            f"student-train --data data -o out {STUDENT} --teacher-scores nosuch",
            "scores that do not exist",
            "fail",
        ),
        (
            f"student-train --data data -o out {STUDENT} --hint-run teacher",
            "a teacher as the hint run",
            "fail",
        ),
        (
            f"student-train --data data -o out {STUDENT} --max-len 16 --hint-run sasrec",
            "hint run reads less",
            "fail",
        ),
        (
            f"student-train --data data2 -o out {STUDENT} --hint-run sasrec",
            "hint run of another dataset",
            "fail",
        ),
        (f"teacher-train --data data --sasrec teacher -o out {TEACHER}", "a teacher as its SASRec", "fail"),
        (f"teacher-train --data data --sasrec data -o out {TEACHER}", "a dataset as its SASRec", "fail"),
        (f"teacher-train --data data2 --sasrec sasrec -o out {TEACHER}", "SASRec of another dataset", "fail"),
        (
            f"student-train --data data2 -o sasrec --resume {STUDENT} --epochs 2",
            "resume on another dataset",
            "fail",
        ),
        (
            f"student-train --data data -o sasrec --resume {STUDENT} --epochs 2 --hidden 16",
            "resume wider",
            "fail",
        ),
        (
            f"teacher-train --data data2 --sasrec sasrec -o teacher --resume {TEACHER} --epochs 2",
            "resume on another dataset",
            "fail",
        ),
        (f"pipeline -o out {PIPELINE} --teacher sasrec", "a SASRec teacher (valid)", "ok"),
        (f"pipeline -o out {PIPELINE} --data nosuch", "--data that does not exist", "fail"),
        (f"pipeline -o out {PIPELINE} --data sasrec", "--data a run", "fail"),
    ]
    return [Case("nonsense", what, line, expect) for line, what, expect in cases]


BACKBONES = [
    ("./nosuch-model", "a local path that does not exist", ()),
    ("nosuch-org/nosuch-model", "a hub id not cached, HF_HUB_OFFLINE=1", (("HF_HUB_OFFLINE", "1"),)),
    ("nosuch-org/nosuch-model", "a hub id not cached, no network", ()),
    ("file.txt", "a text file", ()),
    ("fake.gguf", "random bytes named .gguf", ()),
    ("empty.gguf", "an empty .gguf", ()),
    ("v", "a directory of foreign files", ()),
    ("data", "a dataset directory", ()),
    ("''", "an empty name", ()),
    ("/proc", "/proc", ()),
]


def backbone_cases() -> list[Case]:
    cases = []
    for spec, what, env in BACKBONES:
        for command in ("teacher-train", "pipeline"):
            line = BASE[command].format(O="out") + f" --llm {spec}"
            cases.append(Case("backbone", f"--llm: {what}", line, env=env))
    for teacher in ("e4srec",):
        line = BASE["pipeline"].format(O="out") + f" --teacher {teacher} --llm ./nosuch-model"
        cases.append(Case("backbone", f"--llm: a local path that does not exist, --teacher {teacher}", line))
    return cases


def all_cases() -> list[Case]:
    return (
        damaged_file_cases()
        + option_cases()
        + unwritable_cases()
        + overwrite_cases()
        + nonsense_cases()
        + backbone_cases()
    )


# ---------------------------------------------------------------------------------------------- fixtures
def setup(work: Path) -> None:
    """The datasets, runs, scores and files the cases act on (relative paths, run from ``work``)."""
    os.chdir(work)
    for line in (
        "prepare --synthetic --num-users 60 --num-items 40 -o data",
        "prepare --synthetic --num-users 50 --num-items 40 --seed 1 -o data2",
        f"student-train --data data -o sasrec {STUDENT}",
        f"teacher-train --data data --sasrec sasrec -o teacher {TEACHER}",
        "export-logits --run teacher --data data -o scores --top-k 5 --device cpu",
        "export-model --run sasrec -o m.onnx",
        f"pipeline -o pipe {PIPELINE}",
        f"student-train --data data -o fold0 {STUDENT} --folds 2 --fold 0",
        f"student-train --data data -o fold1 {STUDENT} --folds 2 --fold 1",
    ):
        result = CliRunner().invoke(main, shlex.split(line))
        assert result.exit_code == 0, (line, result.output)
    for name, text in FOREIGN.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text)
    for name, target in LINKS.items():
        os.symlink(target, name)
    Path("f.txt").write_text("1 2\n")
    Path("empty.txt").write_text("")
    Path("big.txt").write_text("".join(f"{10**25 + u} {i}\n" for u in range(3) for i in range(1, 4)))
    Path("mixed.txt").write_text("".join(f"{u} {i}\n" for u in range(6) for i in range(1, 4)) + "9 1 2\n")
    Path("latin1.txt").write_bytes(
        "".join(f"caf\xe9{u} {i}\n" for u in range(6) for i in range(1, 4)).encode("latin-1")
    )
    Path("gz.csv").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
    Path("header.csv").write_text("user,item\n")
    Path("ok.csv").write_text(
        "user,item,when\n" + "".join(f"{u},{i},yesterday\n" for u in range(6) for i in range(1, 5))
    )
    frame = pl.DataFrame({"user": [u for u in range(6) for _ in range(4)], "item": list(range(1, 5)) * 6})
    frame.write_parquet("trunc.parquet")
    Path("trunc.parquet").write_bytes(Path("trunc.parquet").read_bytes()[:40])
    Path("bad.dat").write_text("".join(f"{u}::{i}\n" for u in range(6) for i in range(1, 5)))
    Path("bad.inter").write_text("".join(f"{u}\t{i}\n" for u in range(6) for i in range(1, 5)))
    Path("fake.gguf").write_bytes(GARBAGE)
    Path("empty.gguf").write_bytes(b"")
    Path("toml").mkdir()
    for name, content in toml_files().items():
        path = Path("toml") / f"{name}.toml"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    Path("ro").mkdir(mode=0o555)
    shutil.copytree("sasrec", "locked")
    shutil.copytree("data", "lockeddata")
    Path("locked.toml").write_text("batch_size = 16\n")
    for path in ("locked", "lockeddata", "locked.toml"):
        os.chmod(path, 0)


# Damages that make fixtures for the overwrite cases rather than break them.
FIXTURE_VARIANTS = {
    "as-is": lambda root: None,
    "user-notes": write("notes.txt", "my notes on this run\n"),
    "user-summary": write("summary.md", "# my own summary\n"),
}


def make_fixture(work: Path, pristine: Path, fixture: tuple[str, str]) -> Path:
    """The damaged copy ``work/FIXTURE-DAMAGE`` of a pristine fixture."""
    source, damage = fixture
    target = work / f"{source}-{damage}"
    copy(pristine / source, target)
    apply = FIXTURE_VARIANTS.get(damage) or next(d.apply for d in DAMAGES[source] if d.name == damage)
    apply(target)
    return target


def copy(source: Path, target: Path) -> None:
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    elif source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target)


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        for root, dirs, _ in os.walk(path):  # a read-only directory a case made (as root) must go too
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        os.chmod(path, 0o755)
        shutil.rmtree(path)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root`` (not following links): relative path -> (size, mtime), (-1, 0) for
    directories, whose own times change with their entries."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            key = os.path.relpath(path, root)
            out[key] = (-1, 0) if stat.S_ISDIR(st.st_mode) else (st.st_size, st.st_mtime_ns)
    return out


# ---------------------------------------------------------------------------------------------- running
class CaseTimeout(BaseException):
    """Raised inside a command that ran past its case's time limit (not an Exception: nothing catches it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


def _no_serve(*args: Any, **kwargs: Any) -> None:
    """uvicorn.run for the cases: a serve that got this far would listen; it returns instead."""


# The same stub in a separate process.
WRAPPER = (
    "import uvicorn; uvicorn.run = lambda *a, **k: None\nfrom cli import main\nmain(prog_name='distill')\n"
)


def run_case(case: Case, as_process: bool) -> tuple[int | None, str, BaseException | None]:
    """(exit code, None when it ran past its limit; everything printed; the exception it raised)."""
    args = shlex.split(case.line)
    env = dict(case.env)
    if as_process or case.nobody:
        prefix = []
        if case.nobody and os.geteuid() == 0:
            prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        try:
            proc = subprocess.run(
                [*prefix, sys.executable, "-c", WRAPPER, *args],
                env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                timeout=case.timeout,
            )
        except subprocess.TimeoutExpired:
            return None, "", None
        return proc.returncode, proc.stdout + proc.stderr, None
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(case.timeout)
    try:
        result = CliRunner().invoke(main, args)
    except CaseTimeout:
        return None, "", None
    finally:
        signal.alarm(0)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.set_num_threads(1)  # serve sets it from --threads
    exception = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.output, exception


@dataclasses.dataclass
class Row:
    case: Case
    code: int | None
    verdict: str
    message: str
    seconds: float
    left: list[str]
    lost: list[str]
    touched: list[str]  # inputs of a refused command that changed (put back)
    where: str = ""  # for a traceback: the exception and the deepest frame in this repository


VERDICTS = (
    "traceback",
    "overwrote",
    "leftover",
    "nonsense-success",
    "timeout",
    "refused-valid",
    "unclear",
    "clean",
)


def run_one(case: Case, work: Path, pristine: Path, as_process: bool) -> Row:
    os.chdir(work)
    fixture = make_fixture(work, pristine, case.fixture) if case.fixture else None
    mine = f"{fixture.name}" if fixture else None
    before = snapshot(work)
    started = time.perf_counter()
    code, text, exception = run_case(case, as_process)
    seconds = time.perf_counter() - started
    os.chdir(work)
    after = snapshot(work)

    def in_fixture(path: str) -> bool:
        return mine is not None and (path == mine or path.startswith(mine + "/"))

    def temporary(path: str) -> bool:
        return ".tmp-" in os.path.basename(path) or ".old-" in os.path.basename(path)

    new = [p for p in after if p not in before]
    top = [p for p in new if os.path.dirname(p) not in new]
    changed = [p for p in before if after.get(p) != before[p]]
    if code is None:  # stopped by the time limit: what it left is ours
        left = []
    elif code != 0 and not case.keeps:
        left = [p for p in top if (temporary(p) or not in_fixture(p)) and os.path.basename(p) not in CACHES]
    else:
        left = [p for p in new if temporary(p)]
    lost = [
        name
        for name, text_ in FOREIGN.items()
        if not (work / name).is_file() or (work / name).read_text() != text_
    ]
    lost += [
        name
        for name, target in LINKS.items()
        if not (work / name).is_symlink() or os.readlink(work / name) != target
    ]
    for path in case.guard:
        lost += [p for p in changed if in_fixture(p) and (path == "." or p == f"{mine}/{path}")]
    foreign_tops = {n.split("/")[0] for n in [*FOREIGN, *LINKS]}
    touched = [
        p
        for p in changed
        if code not in (0, None)
        and not in_fixture(p)
        and p.split("/")[0] not in foreign_tops
        and os.path.basename(p) not in CACHES
    ]

    for path in sorted(top, key=len, reverse=True):
        if os.path.lexists(work / path):
            remove(work / path)
    for name in sorted({p.split("/")[0] for p in changed + new if not in_fixture(p)}):
        if (pristine / name).exists() or (pristine / name).is_symlink():
            remove(work / name)
            copy(pristine / name, work / name)
    if fixture is not None and os.path.lexists(fixture):
        remove(fixture)
    verdict, message, where = classify(case, code, text, exception, left, lost)
    return Row(case, code, verdict, message, seconds, left, lost, touched, where)


def classify(
    case: Case, code: int | None, text: str, exception: BaseException | None, left: list[str], lost: list[str]
) -> tuple[str, str, str]:
    """(verdict, the message shown, where a traceback was raised)."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if ln.startswith("Error:")]
    where = ""
    if exception is not None:
        where = frame_of(traceback.extract_tb(exception.__traceback__))
        first = (str(exception).strip().splitlines() or [""])[0][:300]
        message = f"{type(exception).__name__}: {first}"
    elif "Traceback" in text:
        message = next((ln for ln in reversed(lines) if not ln.startswith(" ")), "")
        frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)
        where = frame_of([traceback.FrameSummary(f, int(n), fn) for f, n, fn in frames])
    elif errors:
        message = lines[errors[-1]]
        if errors[-1] != len(lines) - 1:
            message += f" [and {len(lines) - 1 - errors[-1]} more lines]"
    elif code is None:
        message = f"still running after {case.timeout} s (stopped)"
    elif not lines:
        message = "(no output)"
    else:
        notes = ("warning", "note", "starting it afresh", "read as --format", "wrote")
        message = next((ln for ln in lines if any(n in ln for n in notes)), lines[-1] if lines else "")
    if exception is not None or "Traceback" in text:
        verdict = "traceback"
    elif lost:
        verdict = "overwrote"
    elif left:
        verdict = "leftover"
    elif case.expect == "fail" and code in (0, None):
        verdict = "nonsense-success"
    elif code is None:
        verdict = "timeout"
    elif case.expect == "ok" and code != 0:
        verdict = "refused-valid"
    elif code != 0 and (not errors or errors[-1] != len(lines) - 1):
        verdict = "unclear"
    else:
        verdict = "clean"
    return verdict, message, where


def frame_of(frames: list[traceback.FrameSummary]) -> str:
    """The deepest frame in this repository's code (not bench/ or the venv), as path:line in function."""
    ours = [
        f
        for f in frames
        if f.filename.startswith(str(ROOT)) and "/.venv/" not in f.filename and "/bench/" not in f.filename
    ]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return ""
    return f"{relative(frame.filename)}:{frame.lineno} in {frame.name}"


def relative(text: str) -> str:
    """``text`` with this machine's paths made repository- or work-relative."""
    text = text.replace(str(ROOT) + "/", "").replace(str(Path.home()), "~")
    text = re.sub(r"/tmp/[^/\s'\"]+/work/", "", text)
    text = re.sub(r"/tmp/[^/\s'\"]+/work\b", ".", text)
    return re.sub(r"\S*/site-packages/", "site-packages/", text)


# ---------------------------------------------------------------------------------------------- report
def table(rows: list[Row]) -> list[str]:
    out = [
        "| class | probes | command (`distill …`) | expect | exit | verdict | message | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(rows, key=lambda r: VERDICTS.index(r.verdict))
    for r in order:
        notes = []
        if r.where:
            notes.append(f"at {r.where}")
        if r.left:
            notes.append("left " + ", ".join(r.left[:4]))
        if r.lost:
            notes.append("changed or lost " + ", ".join(r.lost[:4]))
        if r.touched:
            notes.append("changed its input " + ", ".join(r.touched[:3]) + " (put back)")
        message = relative(r.message[:300] + (f" ({'; '.join(notes)})" if notes else "")).replace("|", "\\|")
        code = "-" if r.code is None else r.code
        line = relative(r.case.line).replace("|", "\\|")
        out.append(
            f"| {r.case.group} | {r.case.what} | `{line}` | {r.case.expect} | {code} | {r.verdict} | "
            f"{message} | {r.seconds:.1f} |"
        )
    return out


def causes(rows: list[Row]) -> list[str]:
    """Non-clean cases grouped: tracebacks by exception type and frame, the rest by verdict and message."""
    groups: dict[tuple[str, str], list[Row]] = collections.defaultdict(list)
    for r in rows:
        if r.verdict == "clean":
            continue
        if r.verdict == "traceback":
            key = (r.verdict, f"{r.message.split(':')[0]} at {r.where}")
        else:
            key = (r.verdict, r.case.what)
        groups[key].append(r)
    out = []
    for (verdict, cause), members in sorted(
        groups.items(), key=lambda kv: (VERDICTS.index(kv[0][0]), -len(kv[1]))
    ):
        out.append(f"- **{verdict}**, {len(members)} cases: {cause.replace('|', '/')}")
        out.append(f"  - e.g. `{relative(members[0].case.line)}`: {relative(members[0].message)[:300]}")
        for r in members[1:6]:
            out.append(f"  - `{relative(r.case.line)}`")
        if len(members) > 6:
            out.append(f"  - … and {len(members) - 6} more (in the table)")
    return out


def summary_line(rows: list[Row]) -> str:
    count = collections.Counter(r.verdict for r in rows)
    others = ", ".join(f"{count[v]} {v}" for v in ("timeout", "refused-valid", "unclear") if count[v])
    return (
        f"**{len(rows)} cases: {count['traceback']} tracebacks, {count['leftover']} with leftovers, "
        f"{count['overwrote']} with a foreign file overwritten or lost, {count['nonsense-success']} nonsense "
        f"successes**" + (f" (and {others})" if others else "") + f"; {count['clean']} clean."
    )


def source_state() -> str:
    """The commit the pass ran on, and how many source files differed from it (another engineer may be
    fixing them while it runs)."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    files = [ln[3:] for ln in changed.stdout.splitlines() if not ln[3:].startswith("bench/")]
    return f"commit {commit}" + (f" with uncommitted changes to {len(files)} source files" if files else "")


def write_results(
    rows: list[Row], how: str, seconds: float, source: str, before: tuple[float, float, float]
) -> None:
    """``before``: the load average when the pass began."""
    by_group = collections.Counter(r.case.group for r in rows)
    after = os.getloadavg()
    out = [
        "# Hostile inputs through the CLI (issues 13 and 22)",
        "",
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores (shared), load "
        f"average {before[0]:.2f} before, {after[0]:.2f}/{after[2]:.2f} (1/15 min) after, "
        f"{torch.__version__.split('+')[0]} torch, no GPU used, distill at {source}; cases run with {how} "
        "(the unwritable and "
        "unreadable cases as separate processes, as `nobody` when run by root). The whole pass took "
        f"{seconds / 60:.1f} min. Rerun: `python -m bench.hostile_inputs` (writes this file); a subset: "
        "`python -m bench.hostile_inputs --only SUBSTRING` (prints its table); the cases: `--list`.",
        "",
        summary_line(rows),
        "",
        "Cases by class: " + ", ".join(f"{n} {g}" for g, n in by_group.items()) + ". `expect`: fail (must be "
        "refused), ok (valid input), any (a clean refusal and a success are both right). A damaged copy of "
        "a fixture is named after both (`sasrec-config-truncated` is the SASRec run with its config.json "
        "cut in half); `data` is a 60-user synthetic dataset, `data2` another one, `sasrec` a d=8 student, "
        "`teacher` a MoE-LoRA teacher on the `tiny` backbone, `scores` its top-5 scores, `pipe` a pipeline "
        "output; `v/`, `mine/`, `file.txt`, `userpipe/`, `userdata/`, `user.onnx`, `user2.items.json`, "
        "`onnxdir.onnx/` and the links `lnk-v`, `broken-lnk`, `lnk.onnx` are the user's.",
        "",
        "## Non-clean cases by cause",
        "",
        *(causes(rows) or ["None."]),
        "",
        "## Every case (non-clean first)",
        "",
        *table(rows),
        "",
        "Reading: a refusal is clean when it is one `Error:` line, last, with nothing written; a success is "
        "nonsense when the input should have been refused (a damaged file read as if whole, a count of 2**64 "
        "accepted, weights that cannot score used to score). `serve` ran with uvicorn's `run` stubbed out, "
        "so its exit 0 means it would have started listening. Data memory was bounded at 8 GiB, so an "
        "allocation beyond that fails here where a bigger machine might try it.",
        "",
    ]
    RESULTS.write_text("\n".join(out))
    print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)


def main_() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", metavar="SUBSTRING", help="run the cases whose command, class or probe holds it"
    )
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    parser.add_argument("--subprocess", action="store_true", help="run every case as its own process")
    args = parser.parse_args()
    cases = all_cases()
    if args.only:
        cases = [c for c in cases if args.only in c.line or args.only in c.what or args.only in c.group]
    if args.list:
        for i, c in enumerate(cases, start=1):
            print(f"{i:4d}  {c.group:<12}  {c.expect:<4}  {c.line}    # {c.what}")
        print(f"{len(cases)} cases", file=sys.stderr)
        return
    limit = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (DATA_MEMORY, limit[1]))
    uvicorn = __import__("uvicorn")
    uvicorn.run = _no_serve
    torch.set_num_threads(1)
    source = source_state()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work, pristine = Path(tmp) / "work", Path(tmp) / "pristine"
        work.mkdir()
        for path in (Path(tmp), work):  # the unwritable cases run as nobody, who must read the fixtures
            path.chmod(0o755)
        setup(work)
        shutil.copytree(work, pristine, symlinks=True)
        for i, case in enumerate(cases, start=1):
            row = run_one(case, work, pristine, args.subprocess)
            rows.append(row)
            code = "-" if row.code is None else row.code
            print(
                f"[{i}/{len(cases)}] {row.verdict:<16} {code:>3} {row.seconds:5.1f}s {case.line}",
                file=sys.stderr,
            )
            if row.verdict != "clean":
                print(f"      {relative(row.message)} {row.where}", file=sys.stderr)
        os.chdir(ROOT)
        remove(work)
        remove(pristine)
    seconds = time.perf_counter() - started
    how = "subprocess" if args.subprocess else "CliRunner, in one process"
    if args.only:
        print(summary_line(rows))
        print("\n".join(table(rows)))
        print(f"{seconds:.0f} s", file=sys.stderr)
    else:
        write_results(rows, how, seconds, source, before)


if __name__ == "__main__":
    main_()
