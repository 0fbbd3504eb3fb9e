"""``distill prepare``: every reader on tiny files, numbering, k-core, the synthetic generator, meta.json,
atomic output, and one-line errors that name the file and line."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from distill import prepare, synthetic
from distill.config import PrepareConfig
from distill.data import Dataset
from distill.errors import DistillError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def run(tmp_path: Path, *inputs: Path, **kwargs) -> tuple[dict, Path]:
    out = tmp_path / "out"
    meta = prepare.run(PrepareConfig(inputs=tuple(map(str, inputs)), output=str(out), **kwargs))
    return meta, out


def raw_sequences(out: Path) -> dict[str, list[str]]:
    """Each raw user's raw items, in the order prepare wrote them."""
    seqs = pl.read_parquet(out / "sequences.parquet")
    raw = pl.read_parquet(out / "items.parquet")["raw_item"].to_list()
    return {
        u: [raw[i - 1] for i in items]
        for u, items in zip(seqs["raw_user"], seqs["items"].to_list(), strict=True)
    }


def id_sequences(out: Path) -> list[list[int]]:
    return pl.read_parquet(out / "sequences.parquet")["items"].to_list()


def titles(out: Path) -> dict[str, str | None]:
    items = pl.read_parquet(out / "items.parquet")
    return dict(zip(items["raw_item"], items["title"], strict=True))


# ---------------------------------------------------------------------------------------------- readers


def test_sasrec_pairs(tmp_path):
    path = write(tmp_path / "data.txt", "10 10\n10 2\n9 2\n10 7\n9 10\n9 7\n")
    meta, out = run(tmp_path, path)
    assert meta["sources"][0]["format"] == "sasrec"
    seqs = pl.read_parquet(out / "sequences.parquet")
    assert seqs["raw_user"].to_list() == ["9", "10"]  # integer users keep numeric order
    assert seqs["user"].to_list() == [0, 1]
    assert pl.read_parquet(out / "items.parquet")["raw_item"].to_list() == ["2", "7", "10"]
    assert seqs["items"].to_list() == [[1, 3, 2], [3, 1, 2]]  # file order within a user


def test_one_user_per_line(tmp_path):
    path = write(tmp_path / "data.txt", "1 5 3 9\n2 3 5\n\n2 9\n")
    meta, out = run(tmp_path, path)
    assert meta["sources"][0]["format"] == "lines"
    assert raw_sequences(out) == {"1": ["5", "3", "9"], "2": ["3", "5", "9"]}  # a repeated user continues
    assert id_sequences(out) == [[2, 1, 3], [1, 2, 3]]


RECBOLE_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t20\t4\t300\n1\t10\t3\t100\n1\t30\t5\t200\n"
    "2\t20\t1\t50\n2\t10\t2\t50\n2\t30\t2\t10\n"
)
RECBOLE_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tToy Story\t1995\tAnimation\n20\tHeat\t\tAction\n30\tAlien\t1979\tHorror\n40\tUnused\t2000\tDrama\n"
)


def test_recbole_with_companion_titles(tmp_path):
    inter = write(tmp_path / "toy.inter", RECBOLE_INTER)
    write(tmp_path / "toy.item", RECBOLE_ITEM)
    meta, out = run(tmp_path, inter)
    assert meta["sources"][0]["format"] == "recbole"
    # Sorted by timestamp; user 2's tie at 50 keeps file order (20 before 10).
    assert raw_sequences(out) == {"1": ["10", "30", "20"], "2": ["30", "20", "10"]}
    assert titles(out) == {"10": "Toy Story (1995)", "20": "Heat", "30": "Alien (1979)"}
    assert meta["has_titles"] and meta["num_titles"] == 3
    assert [s.get("role") for s in meta["sources"]] == [None, "items"]


MOVIELENS = (
    "1::30::5::978300760\n1::10::3::978300700\n1::20::4::978300760\n2::10::4::5\n2::20::4::3\n2::30::4::4\n"
)


def test_movielens_ratings_sorted_by_timestamp(tmp_path):
    path = write(tmp_path / "ratings.dat", MOVIELENS)
    movies = write(
        tmp_path / "movies.dat", "10::Café Society (1995)::Drama\n20::Heat (1995)::Action\n", "latin-1"
    )
    meta, out = run(tmp_path, path, items=str(movies))
    assert meta["sources"][0]["format"] == "movielens"
    assert raw_sequences(out) == {"1": ["10", "30", "20"], "2": ["20", "30", "10"]}  # tie 760: file order
    assert titles(out) == {"10": "Café Society (1995)", "20": "Heat (1995)", "30": None}
    assert meta["num_titles"] == 2


def test_movielens_without_timestamp_uses_file_order(tmp_path):
    path = write(tmp_path / "ratings.dat", "1::3::5\n1::1::4\n1::2::4\n")
    _, out = run(tmp_path, path)
    assert raw_sequences(out) == {"1": ["3", "1", "2"]}


def test_csv_string_ids_and_time(tmp_path):
    path = write(
        tmp_path / "log.csv",
        "user_id,item_id,timestamp\nbob,zeta,3\nbob,alpha,1\nann,mid,5\nbob,mid,2\nann,zeta,4\nann,alpha,6\n",
    )
    meta, out = run(tmp_path, path)
    assert meta["sources"][0]["format"] == "csv"
    seqs = pl.read_parquet(out / "sequences.parquet")
    assert seqs["raw_user"].to_list() == ["bob", "ann"]  # string ids: first appearance in the file
    assert pl.read_parquet(out / "items.parquet")["raw_item"].to_list() == ["zeta", "alpha", "mid"]
    assert raw_sequences(out) == {"bob": ["alpha", "mid", "zeta"], "ann": ["zeta", "mid", "alpha"]}
    assert id_sequences(out) == [[2, 3, 1], [1, 3, 2]]


def test_tsv_with_named_columns(tmp_path):
    path = write(tmp_path / "log.tsv", "when\twho\twhat\tscore\n3\tu\ta\t1\n1\tu\tb\t1\n2\tu\tc\t1\n")
    with pytest.raises(DistillError, match="user id; name it with --user-col"):
        run(tmp_path, path)
    meta, out = run(tmp_path, path, user_col="who", item_col="what", time_col="when")
    assert meta["sources"][0]["format"] == "tsv"
    assert raw_sequences(out) == {"u": ["b", "c", "a"]}


def test_csv_iso_dates(tmp_path):
    path = write(
        tmp_path / "log.csv",
        "user,item,date\n1,a,2021-03-01\n1,b,2020-12-31\n1,c,2021-01-15\n2,a,2021-01-01\n2,b,2021-01-02\n2,c,2020-01-01\n",
    )
    _, out = run(tmp_path, path)
    assert raw_sequences(out) == {"1": ["b", "c", "a"], "2": ["c", "a", "b"]}


def test_csv_iso_datetimes(tmp_path):
    path = write(
        tmp_path / "log.csv",
        "user,item,time\n1,a,2021-01-01 10:00:00\n1,b,2021-01-01 09:30:00\n1,c,2021-01-01 09:59:59\n",
    )
    _, out = run(tmp_path, path)
    assert raw_sequences(out) == {"1": ["b", "c", "a"]}


def test_parquet_numeric_timestamps(tmp_path):
    path = tmp_path / "log.parquet"
    pl.DataFrame(
        {"user_id": [1, 1, 1, 2, 2, 2], "item_id": [5, 6, 7, 5, 6, 7], "ts": [3, 2, 1, 1, 2, 3]}
    ).write_parquet(path)
    meta, out = run(tmp_path, path)
    assert meta["sources"][0]["format"] == "parquet"
    assert raw_sequences(out) == {"1": ["7", "6", "5"], "2": ["5", "6", "7"]}


def test_parquet_datetime_column_and_named_columns(tmp_path):
    path = tmp_path / "log.parquet"
    day = dt.datetime(2020, 1, 1)
    pl.DataFrame(
        {
            "customer": ["x", "x", "x"],
            "sku": ["p", "q", "r"],
            "at": [day + dt.timedelta(days=2), day, day + dt.timedelta(hours=1)],
        }
    ).write_parquet(path)
    _, out = run(tmp_path, path, user_col="customer", item_col="sku", time_col="at")
    assert raw_sequences(out) == {"x": ["q", "r", "p"]}


def test_items_tsv_titles_for_sasrec(tmp_path):
    path = write(tmp_path / "data.txt", "1 1\n1 2\n1 3\n")
    items = write(
        tmp_path / "items.tsv", "item_id\ttitle\tgenres\n2\tHeat (1995)\tAction\n1\tAlien (1979)\tHorror\n"
    )
    meta, out = run(tmp_path, path, items=str(items))
    assert titles(out) == {"1": "Alien (1979)", "2": "Heat (1995)", "3": None}
    assert meta["has_titles"] and meta["num_titles"] == 2


def test_several_inputs_are_concatenated(tmp_path):
    a = write(tmp_path / "a.txt", "1 1\n1 2\n")
    b = write(tmp_path / "b.txt", "1 3\n2 1\n2 2\n2 3\n")
    meta, out = run(tmp_path, a, b)
    assert raw_sequences(out) == {"1": ["1", "2", "3"], "2": ["1", "2", "3"]}
    assert len(meta["sources"]) == 2


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("x.inter", "user_id:token\titem_id:token\n", "recbole"),
        ("ratings.dat", "1::2::3::4\n", "movielens"),
        ("x.csv", "user,item\n", "csv"),
        ("x.tsv", "user\titem\n", "tsv"),
        ("x.txt", "user_id\titem_id\n1\t2\n", "tsv"),
        ("x.txt", "1::2::5::100\n", "movielens"),
        ("x.txt", "1 2\n1 3\n2 4\n", "sasrec"),
        ("x.txt", "1\t2\n1\t3\n", "sasrec"),
        ("x.txt", "1 2 3\n2 4 5 6\n", "lines"),
        ("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n", "movielens"),
    ],
)
def test_detect_format(tmp_path, name, text, expected):
    assert prepare.detect_format(write(tmp_path / name, text))[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "1 2 3 4\n2 3 4 5\n",  # histories of 3 items, or columns: no telling
        "196\t242\t881250949\n186\t302\t891717742\n",  # user item time: not a format of its own
        "196\t242\t3\t5\n186\t302\t3\t7\n",  # four columns whose last is no Unix time
    ],
)
def test_lines_all_of_one_width_are_not_guessed(tmp_path, text):
    path = write(tmp_path / "x.txt", text)
    with pytest.raises(DistillError, match="cannot tell the format: each of the first 2 lines has"):
        prepare.detect_format(path)


def test_lines_all_of_one_width_are_read_when_the_format_is_given(tmp_path):
    _, out = run(tmp_path, write(tmp_path / "x.txt", "1 2 3 4\n2 3 4 5\n"), format="lines")
    assert raw_sequences(out) == {"1": ["2", "3", "4"], "2": ["3", "4", "5"]}


def test_movielens_u_data_is_read_as_columns(tmp_path):
    path = write(
        tmp_path / "u.data",
        "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n"
        "196\t51\t2\t881250950\n186\t346\t1\t886397596\n186\t51\t1\t886397597\n",
    )
    meta, out = run(tmp_path, path)
    assert meta["sources"][0]["format"] == "movielens"
    assert raw_sequences(out) == {"196": ["377", "242", "51"], "186": ["346", "51", "302"]}  # by time


def test_detect_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    pl.DataFrame({"user": [1], "item": [2]}).write_parquet(path)
    assert prepare.detect_format(path)[0] == "parquet"


# ------------------------------------------------------------------------------------ numbering, k-core


def test_integer_ids_keep_numeric_order_and_items_are_contiguous(tmp_path):
    # Item 500 is rare and filtered out: ids stay contiguous, 100 keeps its place after 20.
    path = write(tmp_path / "data.txt", "7 100\n7 20\n7 3\n7 500\n8 3\n8 20\n8 100\n")
    meta, out = run(tmp_path, path, min_item_interactions=2)
    items = pl.read_parquet(out / "items.parquet")
    assert items["item"].to_list() == [1, 2, 3]
    assert items["raw_item"].to_list() == ["3", "20", "100"]
    assert id_sequences(out) == [[3, 2, 1], [1, 2, 3]]
    assert meta["num_items"] == 3 and meta["num_interactions"] == 6


def test_mixed_ids_fall_back_to_first_appearance(tmp_path):
    path = write(tmp_path / "data.csv", "user,item\n1,10\n1,x\n1,2\n")
    _, out = run(tmp_path, path)
    assert pl.read_parquet(out / "items.parquet")["raw_item"].to_list() == ["10", "x", "2"]


# With min_item 2 and min_user 3, one pass (items, then users) drops items 5, 6 and then user 4, which
# leaves item 4 with one interaction; the second pass drops item 4 and then user 3, left with two.
KCORE = {"1": [1, 2, 3], "2": [1, 2, 3], "3": [1, 2, 4], "4": [4, 5, 6]}


def test_k_core_is_iterated(tmp_path):
    text = "".join(f"{u} {i}\n" for u, items in KCORE.items() for i in items)
    meta, out = run(tmp_path, write(tmp_path / "data.txt", text), min_item_interactions=2)
    assert raw_sequences(out) == {"1": ["1", "2", "3"], "2": ["1", "2", "3"]}
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (2, 3, 6)

    frame = pl.DataFrame(
        {
            "user": [u for u, items in KCORE.items() for _ in items],
            "item": [i for items in KCORE.values() for i in items],
        }
    )
    one_pass = frame.filter(pl.len().over("item") >= 2).filter(pl.len().over("user") >= 3)
    assert one_pass.height == 9  # so a single pass would not have been enough
    assert prepare.k_core(frame, 3, 2).height == 6


def test_min_user_interactions(tmp_path):
    path = write(tmp_path / "data.txt", "1 1\n1 2\n1 3\n1 4\n2 1\n2 2\n2 3\n")
    meta, out = run(tmp_path, path, min_user_interactions=4)
    assert raw_sequences(out) == {"1": ["1", "2", "3", "4"]}
    assert meta["filters"] == {"min_user_interactions": 4, "min_item_interactions": 1}


def test_everything_filtered_is_an_error(tmp_path):
    with pytest.raises(DistillError, match="no interactions left after filtering"):
        run(tmp_path, write(tmp_path / "data.txt", "1 1\n1 2\n2 3\n"))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_by_seed():
    u1, i1, t1 = synthetic.generate(50, 40, seed=3)
    u2, i2, t2 = synthetic.generate(50, 40, seed=3)
    np.testing.assert_array_equal(u1, u2)
    np.testing.assert_array_equal(i1, i2)
    assert t1 == t2 and len(t1) == 40 and t1[0].endswith(" 1")
    _, i3, _ = synthetic.generate(50, 40, seed=4)
    assert len(i1) != len(i3) or not np.array_equal(i1, i3)
    assert u1.min() == 1 and i1.min() >= 1 and i1.max() <= 40
    assert np.all(np.diff(u1) >= 0)  # users in order


def test_synthetic_prepare_fingerprint_depends_on_seed(tmp_path):
    metas = [
        prepare.run(
            PrepareConfig(synthetic=True, num_users=30, num_items=20, seed=s, output=str(tmp_path / f"o{k}"))
        )
        for k, s in enumerate((1, 1, 2))
    ]
    assert metas[0]["fingerprint"] == metas[1]["fingerprint"] != metas[2]["fingerprint"]
    assert metas[0]["sources"] == [{"synthetic": {"num_users": 30, "num_items": 20, "seed": 1}}]


def test_synthetic_has_sequential_structure():
    """Predicting an item's most frequent successor beats predicting the most popular item by far."""
    users, items, _ = synthetic.generate(400, 100, seed=0)
    same_user = users[1:] == users[:-1]
    prev, nxt = items[:-1][same_user], items[1:][same_user]
    fit = np.arange(len(prev)) % 2 == 0  # learn the bigrams on half of the transitions, test on the rest
    bigram = Counter(zip(prev[fit], nxt[fit], strict=True))
    best_next = {}
    for (a, b), n in bigram.items():
        if n > bigram.get((a, best_next.get(a)), 0):
            best_next[a] = b
    popular = Counter(nxt[fit]).most_common(1)[0][0]
    test_prev, test_next = prev[~fit], nxt[~fit]
    bigram_acc = np.mean([best_next.get(a) == b for a, b in zip(test_prev, test_next, strict=True)])
    popularity_acc = np.mean(test_next == popular)
    assert bigram_acc > 15 / 100  # 15 times chance
    assert bigram_acc > 3 * popularity_acc  # about 4 times with seed 0


# ------------------------------------------------------------------------------------ meta.json, output


def test_meta_json(tmp_path):
    inter = write(tmp_path / "toy.inter", RECBOLE_INTER)
    write(tmp_path / "toy.item", RECBOLE_ITEM)
    meta, out = run(tmp_path, inter)
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["format_version"] == prepare.FORMAT_VERSION
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (2, 3, 6)
    assert meta["has_titles"] is True
    assert len(meta["fingerprint"]) == 16
    inter_source, item_source = meta["sources"]
    assert (out / inter_source["path"]).resolve() == inter.resolve()  # relative to the dataset
    assert inter_source["sha256"] == prepare._sha256(inter) and len(inter_source["sha256"]) == 64
    assert (out / item_source["path"]).resolve() == (tmp_path / "toy.item").resolve()
    assert meta["config"]["inputs"] == [str(inter)]
    assert sorted(p.name for p in out.iterdir()) == ["items.parquet", "meta.json", "sequences.parquet"]


def test_fingerprint_tracks_content(tmp_path):
    a = prepare.run(
        PrepareConfig(inputs=(str(write(tmp_path / "a.txt", "1 1\n1 2\n1 3\n")),), output=str(tmp_path / "a"))
    )
    b = prepare.run(
        PrepareConfig(inputs=(str(write(tmp_path / "b.txt", "5 1\n5 2\n5 3\n")),), output=str(tmp_path / "b"))
    )
    c = prepare.run(
        PrepareConfig(inputs=(str(write(tmp_path / "c.txt", "1 1\n1 3\n1 2\n")),), output=str(tmp_path / "c"))
    )
    assert a["fingerprint"] == b["fingerprint"]  # same vocabulary and sequences, other user ids
    assert a["fingerprint"] != c["fingerprint"]


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp" in p.name or ".old" in p.name]


def test_existing_output_refused_then_replaced(tmp_path):
    path = write(tmp_path / "data.txt", "1 1\n1 2\n1 3\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DistillError, match="already exists.*--overwrite"):
        run(tmp_path, path)
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces a dataset, never a directory distill did not write
    with pytest.raises(DistillError, match="not a dataset written by distill.*refusing"):
        run(tmp_path, path, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    run(tmp_path, path)
    (out / "meta.json").write_text(
        (out / "meta.json").read_text().replace('"num_users": 1', '"num_users": 7')
    )
    run(tmp_path, path, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["items.parquet", "meta.json", "sequences.parquet"]
    assert json.loads((out / "meta.json").read_text())["num_users"] == 1
    assert leftovers(tmp_path) == []


def test_output_that_is_a_file_is_refused(tmp_path):
    path = write(tmp_path / "data.txt", "1 1\n1 2\n1 3\n")
    (tmp_path / "out").write_text("not a dataset")
    with pytest.raises(DistillError, match="exists and is not a directory"):
        run(tmp_path, path, overwrite=True)
    assert (tmp_path / "out").read_text() == "not a dataset"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    path = write(tmp_path / "data.txt", "1 1\n1 2\n1 3\n")
    calls = []
    real = pl.DataFrame.write_parquet

    def failing_write(self, file, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", failing_write)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, path)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []

    # An existing dataset survives a failed --overwrite.
    monkeypatch.setattr(pl.DataFrame, "write_parquet", real)
    meta, out = run(tmp_path, path)
    monkeypatch.setattr(pl.DataFrame, "write_parquet", failing_write)
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, path, overwrite=True)
    assert json.loads((out / "meta.json").read_text()) == meta
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("name", "text", "fmt", "expected"),
    [
        ("data.txt", "1 1\n1 2\n1 2 3\n1 4\n", "sasrec", r"line 3: expected 'user item', got '1 2 3'"),
        ("data.txt", "1 1\n1 x\n1 3\n", "sasrec", r"line 2: item id 'x' is not an integer"),
        ("data.txt", "1 1\nbob 2\n", "sasrec", r"line 2: user id 'bob' is not an integer"),
        ("data.txt", "1 2 3\n7\n", "lines", r"line 2: expected 'user item item"),
        ("data.txt", "1 a b\n", "lines", r"line 1: item id 'a' is not an integer"),
        ("ratings.dat", "1::2::5::100\n1::3\n", "auto", r"line 2: expected 'user::item::rating::timestamp'"),
        ("ratings.dat", "1::2::5::100\n1::3::4::soon\n", "auto", r"line 2: timestamp 'soon' is not a number"),
        ("data.txt", "", "auto", r"is empty"),
        ("data.txt", "", "sasrec", r"data.txt"),
        ("data.txt", "\n  \n", "sasrec", r"no interactions in .*data.txt"),
        ("log.csv", "person,item_id\n1,2\n", "auto", r"cannot tell which column holds the user id"),
        ("log.csv", "user_id,product\n1,2\n", "auto", r"cannot tell which column holds the item id"),
        ("log.csv", "user_id,item_id\n1,2\n1,\n", "auto", r"line 3: missing user or item id"),
        (
            "log.csv",
            "user_id,item_id,timestamp\n1,2,5\n1,3,yesterday\n",
            "auto",
            r"line 3: timestamp in column",
        ),
        ("log.csv", "user_id,item_id\n", "auto", r"no interactions in .*log.csv"),
        ("log.parquet", "not parquet at all", "auto", r"not a readable Parquet file"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, name, text, fmt, expected):
    path = write(tmp_path / name, text)
    with pytest.raises(DistillError, match=expected) as e:
        run(tmp_path, path, format=fmt)
    assert name in str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_missing_input_file(tmp_path):
    with pytest.raises(DistillError, match=r"input file .*nope.txt does not exist"):
        run(tmp_path, tmp_path / "nope.txt")


def test_missing_items_file(tmp_path):
    path = write(tmp_path / "data.txt", "1 1\n1 2\n1 3\n")
    with pytest.raises(DistillError, match=r"items file .*titles.tsv does not exist"):
        run(tmp_path, path, items=str(tmp_path / "titles.tsv"))


def test_items_file_without_title_column(tmp_path):
    path = write(tmp_path / "data.txt", "1 1\n1 2\n1 3\n")
    items = write(tmp_path / "items.tsv", "item_id\tgenres\n1\tDrama\n")
    with pytest.raises(DistillError, match=r"items.tsv: no title column"):
        run(tmp_path, path, items=str(items))


def test_named_column_that_does_not_exist(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id\n1,2\n")
    with pytest.raises(DistillError, match=r"log.csv: no column 'when'"):
        run(tmp_path, path, time_col="when")


def test_dataset_refuses_unknown_format_version(tmp_path):
    _, out = run(tmp_path, write(tmp_path / "data.txt", "1 1\n1 2\n1 3\n"))
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(DistillError, match=r"meta.json: unknown format_version 99"):
        Dataset(out)


def test_an_items_file_that_names_no_item_is_refused(tmp_path):
    path = write(tmp_path / "x.txt", "1 10\n1 11\n1 12\n")
    items = write(tmp_path / "items.tsv", "item_id\ttitle\n99\tHeat\n")
    with pytest.raises(
        DistillError, match="items.tsv: none of its 1 item ids names an item of the interactions"
    ):
        run(tmp_path, path, items=str(items))
    assert not (tmp_path / "out").exists()
