"""Property-based tests (hypothesis): generated files through every reader of ``prepare`` and generated
values through every config option. Whatever comes in: a result, or one ``DistillError`` line, and no
output left behind on failure; never another exception."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill import prepare
from distill.config import PrepareConfig, resolve
from distill.errors import DistillError
from distill.outputs import kind_of
from pipeline.config import EvaluateConfig, ExportConfig, PipelineConfig
from student.config import StudentTrainConfig
from teacher.config import TeacherTrainConfig

# FUZZ_EXAMPLES=1000 for a longer hunt than CI affords.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 40)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

ids = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.integers(0, 20).map(str),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=6),
)
delimiters = st.sampled_from([" ", "\t", ",", "::", ";", "|", "  ", ""])


@st.composite
def interaction_files(draw) -> tuple[str, bytes]:
    """(file name, content): random bytes, or rows of ids with a random delimiter, ragged widths, an
    optional header, and a random encoding."""
    name = draw(st.sampled_from(["x.txt", "x.csv", "x.tsv", "x.inter", "ratings.dat", "x.parquet", "x"]))
    if draw(st.booleans()) and draw(st.booleans()):
        return name, draw(st.binary(max_size=300))
    delimiter = draw(delimiters)
    rows = draw(st.lists(st.lists(ids, min_size=0, max_size=5), min_size=0, max_size=25))
    header = draw(
        st.sampled_from(
            [
                [],
                ["user_id", "item_id"],
                ["user_id:token", "item_id:token", "timestamp:float"],
                ["user", "item", "time"],
            ]
        )
    )
    lines = [delimiter.join(r) for r in ([header] if header else []) + rows]
    text = "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16"]))
    return name, text.encode(encoding, errors="replace")


def run_prepare(name: str, content: bytes, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / name
        path.write_bytes(content)
        out = root / "out"
        cfg = PrepareConfig(inputs=(str(path),), output=str(out), format=fmt)
        try:
            prepare.run(cfg)
        except DistillError as e:
            assert "\n" not in str(e), str(e)
            assert sorted(p.name for p in root.iterdir()) == [name], "output left behind after an error"
            return
        assert kind_of(out) == "dataset"
        assert pl.read_parquet(out / "sequences.parquet")["items"].list.len().min() >= 3


@pytest.mark.slow
@FUZZ
@given(
    interaction_files(), st.sampled_from(["auto", "sasrec", "lines", "csv", "tsv", "movielens", "recbole"])
)
def test_prepare_reads_any_file_or_says_why_not(file, fmt):
    run_prepare(*file, fmt)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["auto", "parquet", "csv"]))
def test_prepare_survives_random_bytes(content, fmt):
    run_prepare("x.parquet" if fmt == "parquet" else "x.bin", content, fmt)


def test_valid_parquet_with_odd_columns(tmp_path):
    # The fuzzer's bytes are never valid Parquet: one real file with no usable columns.
    pl.DataFrame({"a": [1], "b": [None]}).write_parquet(tmp_path / "x.parquet")
    with pytest.raises(DistillError, match="cannot tell which column holds the user id"):
        prepare.run(PrepareConfig(inputs=(str(tmp_path / "x.parquet"),), output=str(tmp_path / "out")))


REQUIRED = {
    PrepareConfig: {"output": "o", "synthetic": "true"},
    StudentTrainConfig: {"data": "d", "output": "o"},
    TeacherTrainConfig: {"data": "d", "sasrec": "s", "output": "o"},
    ExportConfig: {"runs": "r", "data": "d", "output": "o"},
    PipelineConfig: {"output": "o"},
    EvaluateConfig: {"runs": "r", "data": "d"},
}
OPTIONS = [(cls, f.name) for cls in REQUIRED for f in dataclasses.fields(cls) if "help" in f.metadata]
values = st.one_of(
    st.sampled_from(
        ["nan", "inf", "-inf", "1e400", "-0", "0", "-1", "1e-400", "none", "true", "", " ", "1,2,,"]
    ),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(OPTIONS), values)
def test_any_option_value_is_accepted_or_refused_in_one_line(option, value):
    cls, name = option
    sets = [f"{k}={v}" for k, v in REQUIRED[cls].items() if k != name] + [f"{name}={value}"]
    try:
        cfg = resolve(cls, sets=sets)
    except DistillError as e:
        assert "\n" not in str(e) and name in str(e) or "required" in str(e) or "input" in str(e), str(e)
        return
    number = getattr(cfg, name)
    if isinstance(number, float):
        assert number == number and abs(number) != float("inf")  # finite whatever came in
