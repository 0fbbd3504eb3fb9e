"""Exact counts of ``distill prepare`` on the real datasets beside the project (``../shared/data``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill import prepare
from distill.config import PrepareConfig
from distill.data import Dataset

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared datasets not found at {DATA}")


def prepared(tmp_path: Path, *inputs: str, items: str | None = None) -> tuple[dict, Dataset]:
    for name in (*inputs, *([items] if items else [])):
        if not (DATA / name).is_file():
            pytest.skip(f"{DATA / name} not found")
    meta = prepare.run(
        PrepareConfig(
            inputs=tuple(str(DATA / name) for name in inputs),
            items=str(DATA / items) if items else None,
            output=str(tmp_path / "out"),
        )
    )
    return meta, Dataset(tmp_path / "out")


def counts(meta: dict) -> tuple[int, int, int]:
    return meta["num_users"], meta["num_items"], meta["num_interactions"]


def test_ml_1m_with_titles(tmp_path):
    meta, ds = prepared(tmp_path, "ml-1m/ml-1m.txt", items="ml-1m/items.tsv")
    assert meta["sources"][0]["format"] == "sasrec"
    assert counts(meta) == (6040, 3416, 987531)
    assert meta["num_titles"] == 3416
    assert ds.raw_item(7) == "7"  # SASRec's integer ids keep their numbering
    assert all(ds.title(i) for i in range(1, ds.num_items + 1))


def test_beauty(tmp_path):
    meta, _ = prepared(tmp_path, "beauty/Beauty.txt")
    assert meta["sources"][0]["format"] == "lines"
    assert counts(meta) == (22363, 12101, 198502)
    assert not meta["has_titles"]


def test_ml_100k_recbole(tmp_path):
    meta, ds = prepared(tmp_path, "ml-100k/ml-100k.inter")
    assert meta["sources"][0]["format"] == "recbole"
    assert counts(meta) == (943, 1682, 100000)
    assert meta["num_titles"] == 1682
    assert ds.title(1) == "Toy Story (1995)"
