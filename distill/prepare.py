"""``distill prepare``: raw interactions → a dataset directory that every later stage reads.

The directory holds ``sequences.parquet`` (user, raw_user, items: list[int32], chronological),
``items.parquet`` (item, raw_item, title) and ``meta.json``. Item ids are contiguous from 1 (0 is
padding); when the raw ids are integers their order is kept, so ``ml-1m.txt``'s item 7 stays item 7.
Everything is done with polars expressions: there is no Python loop over interactions.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from distill import synthetic
from distill.config import PrepareConfig, to_dict
from distill.errors import DistillError
from distill.io import first_line, log, record_path
from distill.outputs import claim

# Column names read without --user-col / --item-col / --time-col, in order of preference (Amazon 2023
# files hold both parent_asin, the product, and asin, its variant: the product is the item).
USER_COLUMNS = ("user_id", "userid", "user", "uid", "visitorid", "reviewerid", "customer_id")
ITEM_COLUMNS = (
    "item_id", "itemid", "item", "iid", "movieid", "movie_id", "parent_asin", "asin", "product_id",
    "business_id", "book_id", "track_id", "song_id", "video_id", "article_id", "news_id", "poi_id",
)  # fmt: skip
TIME_COLUMNS = (
    "timestamp", "time", "ts", "datetime", "date", "unixreviewtime", "unix_time", "unixtime", "time_stamp",
    "event_time", "created_at", "date_time",
)  # fmt: skip

FORMAT_VERSION = 1  # of a dataset directory; distill.data reads it
JSON_ROWS = 10_000  # rows of a JSON Lines file its column names are read from


def run(cfg: PrepareConfig) -> dict:
    """Read, filter and number the interactions, then write the dataset directory atomically.

    Returns:
        The ``meta.json`` content (also written to the directory).
    """
    out = Path(cfg.output)
    claim(out, kind="dataset", overwrite=cfg.overwrite, what="output directory")

    titles = None
    if cfg.synthetic:
        users, items, names = synthetic.generate(cfg.num_users, cfg.num_items, cfg.seed)
        frame = pl.DataFrame({"user": users.astype(str), "item": items.astype(str)})
        raw_items = [str(i) for i in range(1, len(names) + 1)]
        titles = pl.DataFrame({"raw_item": raw_items, "title": names})
        frame = frame.with_columns(time=pl.lit(None, pl.Float64)).with_row_index("row")
        sources = [{"synthetic": {"num_users": cfg.num_users, "num_items": cfg.num_items, "seed": cfg.seed}}]
    else:
        paths = [Path(p) for p in cfg.inputs]
        for path in paths:
            if path.is_dir():
                raise DistillError(f"input {path} is a directory; give the interaction file(s) inside it")
            if not path.is_file():
                raise DistillError(f"input file {path} does not exist")
        fmt = cfg.format
        if fmt == "auto":
            fmt, why = detect_format(paths[0])
            if not why.startswith("the extension"):  # a guess from the content: say what it rests on
                log(f"{paths[0]}: read as --format {fmt} ({why}); set --format to choose another")
            for other in paths[1:]:
                if (guess := detect_format(other)[0]) != fmt:
                    raise DistillError(
                        f"the inputs are of different formats: {paths[0]} reads as {fmt}, {other} as "
                        f"{guess}; prepare reads files of one format"
                    )
        frames = [read_interactions(p, fmt, cfg) for p in paths]
        frame = pl.concat(frames, how="vertical_relaxed").with_row_index("row")
        if frame.height == 0:
            raise DistillError(f"no interactions in {', '.join(map(str, paths))}")
        sources = [{"path": record_path(out, p), "format": fmt, "sha256": _sha256(p)} for p in paths]
        items_file = Path(cfg.items) if cfg.items else _companion_items_file(paths[0], fmt)
        if items_file is not None:
            titles = read_titles(items_file, cfg.item_col)
            sources.append(
                {"path": record_path(out, items_file), "role": "items", "sha256": _sha256(items_file)}
            )

    read = frame
    frame = k_core(frame, cfg.min_user_interactions, cfg.min_item_interactions)
    if frame.height == 0:
        raise DistillError(
            f"no interactions left after filtering (min_user_interactions={cfg.min_user_interactions}, "
            f"min_item_interactions={cfg.min_item_interactions})"
        )
    if frame.height < read.height:
        log(
            f"filtered to users with at least {cfg.min_user_interactions} and items with at least "
            f"{cfg.min_item_interactions} interactions: kept {_count(frame, read, 'user')} users, "
            f"{_count(frame, read, 'item')} items, {frame.height:,} of {read.height:,} interactions"
        )
    trainable = frame.group_by("user").len()["len"].max()
    if trainable < 4:
        log(
            "warning: no user has more than 3 interactions: leave-one-out keeps each user's last two for "
            "validation and test, which leaves nothing to train on (students refuse this data)"
        )
    sequences, items = number_and_group(frame, titles)
    if titles is not None and titles.height and not cfg.synthetic and items["title"].is_not_null().sum() == 0:
        raise DistillError(
            f"{items_file}: none of its {titles.height:,} item ids names an item of the interactions "
            f"(its ids: {_first_ids(titles['raw_item'])}, ...; the interactions': "
            f"{_first_ids(items['raw_item'])}, ...); is it this data's "
            "items file?"
        )
    return write(out, cfg, sequences, items, sources)


def write(
    out: Path, cfg: PrepareConfig, sequences: pl.DataFrame, items: pl.DataFrame, sources: list[dict]
) -> dict:
    """Write the dataset directory of numbered ``sequences`` and ``items`` (as :func:`number_and_group`
    returns them) atomically, with its ``meta.json``; returns the meta."""
    meta = _meta(cfg, sequences, items, sources)
    _write_atomically(out, sequences, items, meta, cfg.overwrite)
    return meta


def detect_format(path: Path) -> tuple[str, str]:
    """``(format, why)``: a guess from the extension, then from the first lines, and what it rests on
    (for the line ``prepare`` prints)."""
    suffix = path.suffix.lower()
    by_suffix = {
        ".inter": "recbole",
        ".dat": "movielens",
        ".csv": "csv",
        ".parquet": "parquet",
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".json": "jsonl",
    }
    if suffix in by_suffix:
        return by_suffix[suffix], f"the extension {suffix}"
    with open(path, "rb") as f:
        raw = f.readlines(1 << 16)
    _refuse_binary(path, b"".join(raw))
    head = [line.decode("utf-8", "replace") for line in raw][:200]
    lines = [ln for ln in head if ln.strip()]
    if not lines:
        raise DistillError(f"{path} is empty")
    if suffix == ".tsv":
        return "tsv", "the extension .tsv"
    if lines[0].lstrip("\ufeff \t").startswith("{"):
        return "jsonl", "a JSON object on the first line"
    if "\t" in lines[0] and not lines[0].split("\t")[0].strip().isdigit():
        return "tsv", "a tab-separated header line"
    if "::" in lines[0]:
        return "movielens", "'::' separators"
    widths = [len(ln.split()) for ln in lines]
    pairs = sum(w == 2 for w in widths)
    if pairs == len(widths):
        return "sasrec", f"the first {len(widths)} lines are 'user item' pairs"
    if pairs >= 0.9 * len(widths):
        odd = next(i for i, w in enumerate(widths) if w != 2)
        raise DistillError(
            f"{path}: cannot tell the format: {pairs} of the first {len(widths)} lines are 'user item' "
            f"pairs but line {head.index(lines[odd]) + 1} has {widths[odd]} fields; set --format sasrec "
            "(and fix that line) or --format lines"
        )
    if len(widths) > 1 and min(widths) == max(widths):  # every line as wide: columns, not histories
        tokens = [ln.split() for ln in lines]
        numbers = all(t.lstrip("+-").isdigit() for row in tokens for t in row[:2])
        unix = all(_is_unix_time(row[-1]) for row in tokens)
        if widths[0] == 4 and numbers and unix:
            return (
                "movielens",
                f"the first {len(widths)} lines are 'user item rating timestamp' (MovieLens u.data)",
            )
        raise DistillError(
            f"{path}: cannot tell the format: each of the first {len(widths)} lines has {widths[0]} fields, "
            "which may be columns (user, item, rating, time) or one user's items per line; set --format "
            "lines for the latter, --format movielens for 'user item rating timestamp', or give columns a "
            "header line (--format csv/tsv)"
        )
    return "lines", f"lines of {min(widths)} to {max(widths)} fields: 'user item item ...'"


def _first_ids(ids: pl.Series) -> str:
    """The first three ids of a column, as a message shows them."""
    return ", ".join(_shown(str(i)) for i in ids.head(3).to_list())


def _is_unix_time(token: str) -> bool:
    """Whether ``token`` reads as seconds since 1970, from 1973 to 2100 (ratings and item ids do not)."""
    try:
        return 1e8 <= float(token) <= 4.2e9
    except ValueError:
        return False


def _refuse_binary(path: Path, head: bytes) -> None:
    """A file with NUL bytes in its first 64 KiB is not text (compressed, an archive, a spreadsheet),
    unless it is UTF-16 text (a spreadsheet's "Unicode text"), which is refused as such; text that is
    not UTF-8 is refused too."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DistillError(f"{path} is UTF-16 text; save it as UTF-8")
    at = head.find(b"\0", 0, 1 << 16)
    if at >= 0:
        raise DistillError(
            f"{path} is not a text file (a NUL byte at byte {at}); decompress it, or give --format "
            "parquet for a Parquet file"
        )


def read_interactions(path: Path, fmt: str, cfg: PrepareConfig) -> pl.DataFrame:
    """One file as a frame of string ``user``, ``item`` and float ``time`` (null without timestamps)."""
    if fmt != "parquet":
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        _refuse_binary(path, head)
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 3:  # not a character cut by the 64 KiB
                raise DistillError(
                    f"{path} is not UTF-8 text (byte {e.start} is 0x{head[e.start]:02x}); save it as UTF-8"
                ) from None
    if fmt in ("sasrec", "lines", "movielens"):
        return _read_token_lines(path, fmt)
    if fmt == "parquet":
        try:
            lf = pl.scan_parquet(path)
            columns = lf.collect_schema().names()
        except Exception as e:  # polars raises several types for a file that is not Parquet
            raise DistillError(f"{path} is not a readable Parquet file: {first_line(e)}") from None
    elif fmt == "jsonl":
        with open(path, "rb") as f:
            start = f.read(1 << 12)
        if start.startswith(b"\xef\xbb\xbf"):
            raise DistillError(
                f"{path} starts with a byte-order mark, which JSON Lines does not allow; remove it"
            )
        if not start.strip():
            raise DistillError(f"{path} is empty")
        if start.lstrip().startswith(b"["):
            raise DistillError(f"{path} is a JSON array; prepare reads JSON Lines, one object per line")
        try:
            columns = pl.scan_ndjson(path, infer_schema_length=JSON_ROWS).collect_schema().names()
        except Exception as e:
            raise DistillError(f"{path} is not readable as JSON Lines: {first_line(e)}") from None
    else:
        separator = "," if fmt == "csv" else "\t"
        quote_char = '"' if fmt == "csv" else None
        lf = pl.scan_csv(path, separator=separator, infer_schema=False, quote_char=quote_char)
        try:
            columns = lf.collect_schema().names()
        except Exception as e:
            raise DistillError(f"{path} is not a readable {fmt.upper()} file: {first_line(e)}") from None
        # RecBole headers carry their type ('user_id:token'); the name is before the colon.
        lf = lf.rename({c: c.split(":")[0] for c in columns})
        columns = [c.split(":")[0] for c in columns]
    user = _pick_column(path, columns, cfg.user_col, USER_COLUMNS, "user", "--user-col")
    item = _pick_column(path, columns, cfg.item_col, ITEM_COLUMNS, "item", "--item-col")
    time = _pick_column(path, columns, cfg.time_col, TIME_COLUMNS, "time", "--time-col", required=False)
    if fmt == "jsonl":  # the columns read as text (a later row may give them another JSON type)
        strings = {c: pl.String for c in (user, item, time) if c is not None}
        lf = pl.scan_ndjson(path, infer_schema_length=JSON_ROWS, schema_overrides=strings)
    if time is None:
        timeish = [c for c in columns if c not in (user, item) and _TIMEISH.search(c.lower())]
        log(
            f"warning: {path}: no time column: each user's interactions are taken in file order"
            + (f"; is '{timeish[0]}' the time? give --time-col {timeish[0]}" if timeish else "")
        )
    lf = lf.select(
        user=pl.col(user).cast(pl.String),
        item=pl.col(item).cast(pl.String),
        time=_time_expr(pl.col(time), lf.collect_schema()[time]) if time else pl.lit(None, pl.Float64),
    ).with_row_index("lineno", offset=1 if fmt in ("parquet", "jsonl") else 2)  # after a header line
    try:
        frame = lf.collect()
    except Exception as e:
        raise DistillError(f"{path}: {first_line(e)}") from None
    bad = frame.filter(pl.col("user").is_null() | pl.col("item").is_null() | (pl.col("item") == ""))
    if bad.height:
        raise DistillError(f"{path}, {_row(fmt)} {bad['lineno'][0]}: missing user or item id")
    if time is not None:
        bad = frame.filter(pl.col("time").is_null())
        if bad.height:
            raise DistillError(
                f"{path}, {_row(fmt)} {bad['lineno'][0]}: timestamp in column '{time}' is missing or not a "
                "number or date"
            )
    return frame.drop("lineno")


def _time_expr(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Numbers as they are; dates and datetimes (typed, or ISO strings) as seconds since the epoch."""
    if dtype == pl.Date or dtype == pl.Datetime:  # typed Parquet columns
        return col.dt.epoch("s").cast(pl.Float64)
    as_number = col.cast(pl.Float64, strict=False)
    if dtype != pl.String:
        return as_number
    # Date parsing is slow per value, so only the strings that are not numbers go through it.
    not_numbers = pl.when(as_number.is_null()).then(col)
    as_date = not_numbers.str.to_datetime(strict=False, time_zone="UTC").dt.epoch("s").cast(pl.Float64)
    return pl.coalesce(as_number, as_date)


def _read_token_lines(path: Path, fmt: str) -> pl.DataFrame:
    """Whitespace formats (``user item`` / ``user i1 i2 …``) and MovieLens ``u::i::r::t``, integer ids."""
    lf = pl.scan_csv(
        path,
        has_header=False,
        separator="\x1f",
        quote_char=None,
        new_columns=["line"],
        schema_overrides={"line": pl.String},
    ).with_row_index("lineno", offset=1)
    tokens = pl.col("line").str.extract_all(r"\S+")
    if fmt == "movielens":  # ratings.dat's 'u::i::r::t', or u.data's whitespace-separated columns
        line = pl.col("line").str.strip_chars()
        tokens = pl.when(line.str.contains("::", literal=True)).then(line.str.split("::")).otherwise(tokens)
    try:
        frame = lf.with_columns(tokens=tokens).filter(pl.col("tokens").list.len() > 0).collect()
    except Exception as e:
        raise DistillError(f"{path}: cannot read: {first_line(e)}") from None
    width = frame["tokens"].list.len()
    wrong = {
        "sasrec": (width != 2, "expected 'user item'"),
        "lines": (width < 2, "expected 'user item item …'"),
        "movielens": (
            (width < 3) | (width > 4),
            "expected 'user::item::rating::timestamp' or 'user item rating timestamp'",
        ),
    }[fmt]
    bad = frame.filter(wrong[0])
    if bad.height:
        raise DistillError(f"{path}, line {bad['lineno'][0]}: {wrong[1]}, got {_shown(bad['line'][0])}")

    if fmt == "lines":
        frame = frame.select(
            "lineno", user=pl.col("tokens").list.first(), item=pl.col("tokens").list.slice(1)
        ).explode("item")
        time = pl.lit(None, pl.Float64)
    else:
        frame = frame.select(
            "lineno",
            user=pl.col("tokens").list.get(0),
            item=pl.col("tokens").list.get(1),
            time_raw=pl.col("tokens").list.get(3, null_on_oob=True),
        )
        time = pl.col("time_raw").cast(pl.Float64, strict=False)
    for column in ("user", "item"):
        # Digits of any length: a 26-digit id is an integer too (numbered in order of appearance, as it
        # does not fit in 64 bits).
        bad = frame.filter(~pl.col(column).str.contains(r"^[+-]?[0-9]+$"))
        if bad.height:
            raise DistillError(
                f"{path}, line {bad['lineno'][0]}: {column} id {_shown(bad[column][0])} is not an integer "
                f"({fmt} format)"
            )
    if fmt == "movielens":
        bad = frame.filter(pl.col("time_raw").is_not_null() & time.is_null())
        if bad.height:
            raise DistillError(
                f"{path}, line {bad['lineno'][0]}: timestamp {bad['time_raw'][0]!r} is not a number"
            )
    return frame.select("user", "item", time=time)


_TIMEISH = re.compile(r"time|date|_at$|^ts_|_ts$")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _row(fmt: str) -> str:
    """What an error calls a record of a file of ``fmt``."""
    return "row" if fmt == "parquet" else "line"


def _count(kept: pl.DataFrame, read: pl.DataFrame, column: str) -> str:
    return f"{kept[column].n_unique():,} of {read[column].n_unique():,}"


def _pick_column(
    path: Path,
    columns: list[str],
    given: str | None,
    known: tuple[str, ...],
    what: str,
    flag: str,
    required: bool = True,
) -> str | None:
    """The column ``given`` (its RecBole type, ``name:token``, dropped), else the first name of ``known``
    (any case) among ``columns``; None when there is none and it is not ``required``."""
    if given is not None:
        for name in (given, given.split(":")[0]):
            if name in columns:
                return name
        raise DistillError(f"{path}: no column '{given}' (columns: {_columns(columns)})")
    lower = {c.lower(): c for c in reversed(columns)}
    found = next((lower[name] for name in known if name in lower), None)
    if found is None and required:
        values = [c for c in columns if _NUMBER.fullmatch(c.strip())]
        if values:  # a header of numbers is the first row of a file without one
            raise DistillError(
                f"{path}: cannot tell which column holds the {what} id, and its first line looks like "
                f"values, not a header ({_columns(columns)}); add a first line naming the columns (e.g. "
                f"user_id,item_id,timestamp) or name them with {flag}"
            )
        raise DistillError(
            f"{path}: cannot tell which column holds the {what} id; name it with {flag} "
            f"(columns: {_columns(columns)})"
        )
    return found


def _companion_items_file(path: Path, fmt: str) -> Path | None:
    """RecBole's ``X.item`` beside ``X.inter``: titles come along without being asked for."""
    if fmt == "recbole":
        candidate = path.with_suffix(".item")
        return candidate if candidate.is_file() else None
    return None


def read_titles(path: Path, item_col: str | None = None) -> pl.DataFrame:
    """Item titles from a RecBole ``.item``, MovieLens ``movies.dat`` or a CSV/TSV with a header, whose
    id column is ``item_col`` when it has one (the interactions' ``--item-col``), else a known item
    column name, ``id``, or its first column.

    Returns:
        A frame of string ``raw_item`` and ``title``.
    """
    if not path.is_file():
        raise DistillError(f"items file {path} does not exist")
    raw = path.read_bytes()
    _refuse_binary(path, raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # MovieLens movies.dat is Latin-1
    if not text.strip():
        raise DistillError(f"items file {path} is empty")
    first = text.split("\n", 1)[0]
    if "::" in first:
        rows = pl.Series("line", text.splitlines()).str.split("::")
        frame = pl.DataFrame(
            {"raw_item": rows.list.get(0, null_on_oob=True), "title": rows.list.get(1, null_on_oob=True)}
        )
        return frame.filter(pl.col("raw_item").is_not_null() & (pl.col("raw_item") != ""))
    separator = "\t" if "\t" in first else ","
    try:
        frame = pl.read_csv(
            io.StringIO(text),
            separator=separator,
            infer_schema=False,
            quote_char='"' if separator == "," else None,
        )
    except Exception as e:
        raise DistillError(f"items file {path} is not readable: {first_line(e)}") from None
    frame = frame.rename({c: c.split(":")[0] for c in frame.columns})
    columns = frame.columns
    lower = {c.lower(): c for c in reversed(columns)}
    named = (item_col or "").split(":")[0]
    id_col = (
        named
        if named in columns
        else next((lower[name] for name in (*ITEM_COLUMNS, "id") if name in lower), columns[0])
    )
    title_col = next((c for c in columns if "title" in c.lower()), None)
    if title_col is None:
        title_col = next((c for c in columns if "name" in c.lower()), None)
    if title_col is None:
        raise DistillError(f"items file {path}: no title column (columns: {_columns(columns)})")
    title = pl.col(title_col).str.strip_chars()
    if "release_year" in columns:  # RecBole's MovieLens files keep the year apart
        year = pl.col("release_year").str.strip_chars()
        has_year = year.is_not_null() & (year != "")
        title = pl.when(has_year).then(pl.format("{} ({})", title, year)).otherwise(title)
    return frame.select(raw_item=pl.col(id_col).str.strip_chars(), title=title)


def k_core(frame: pl.DataFrame, min_user: int, min_item: int) -> pl.DataFrame:
    """Iteratively drop users and items with too few interactions until both bounds hold."""
    while True:
        before = frame.height
        if min_item > 1:
            frame = frame.filter(pl.len().over("item") >= min_item)
        frame = frame.filter(pl.len().over("user") >= min_user)
        if frame.height == before:
            return frame


def number_and_group(frame: pl.DataFrame, titles: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Contiguous ids (integer raw ids keep their order, others their first appearance) and sequences.

    Each user's items are sorted by time, ties and missing times by file order.
    """
    users = _vocabulary(frame, "user")
    items = _vocabulary(frame, "item")
    frame = (
        frame.join(users, left_on="user", right_on="raw_user")
        .join(items, left_on="item", right_on="raw_item")
        .sort(["uid", "time", "row"], nulls_last=True)
    )
    sequences = (
        frame.group_by("uid", maintain_order=True)
        .agg(pl.col("iid").cast(pl.Int32).alias("items"), pl.col("user").first().alias("raw_user"))
        .select(pl.col("uid").cast(pl.Int32).alias("user"), "raw_user", "items")
    )
    items = items.select(pl.col("iid").cast(pl.Int32).alias("item"), "raw_item")
    if titles is not None:
        titles = titles.unique("raw_item", keep="first")
        items = items.join(titles, on="raw_item", how="left", maintain_order="left")
    else:
        items = items.with_columns(title=pl.lit(None, pl.String))
    return sequences, items


def _vocabulary(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    first_seen = frame.group_by(column).agg(pl.col("row").min())
    as_int = first_seen[column].cast(pl.Int64, strict=False)
    key = as_int if as_int.null_count() == 0 else first_seen["row"]
    vocab = first_seen.with_columns(_key=key).sort("_key")
    new_id = "uid" if column == "user" else "iid"
    start = 0 if column == "user" else 1  # item 0 is padding
    return vocab.select(
        pl.col(column).alias(f"raw_{column}"), pl.int_range(start, start + vocab.height).alias(new_id)
    )


def fingerprint(sequences: pl.DataFrame, items: pl.DataFrame) -> str:
    """A short hash of the item vocabulary and the sequences: stages check they read the same data."""
    h = hashlib.sha256()
    h.update("\n".join(items["raw_item"].to_list()).encode())
    flat = sequences["items"].explode().to_numpy().astype(np.int32)
    lengths = sequences["items"].list.len().to_numpy().astype(np.int64)
    h.update(flat.tobytes())
    h.update(lengths.tobytes())
    return h.hexdigest()[:16]


def _meta(cfg: PrepareConfig, sequences: pl.DataFrame, items: pl.DataFrame, sources: list[dict]) -> dict:
    lengths = sequences["items"].list.len()
    num_users, num_items, num_interactions = sequences.height, items.height, int(lengths.sum())
    num_titles = int(items["title"].is_not_null().sum())
    return {
        "format_version": FORMAT_VERSION,
        "num_users": num_users,
        "num_items": num_items,
        "num_interactions": num_interactions,
        "mean_length": round(float(lengths.mean()), 3),
        "median_length": float(lengths.median()),
        "density": num_interactions / (num_users * num_items),
        "has_titles": num_titles > 0,
        "num_titles": num_titles,
        "fingerprint": fingerprint(sequences, items),
        "split": "leave-one-out: train items[:-2], valid target items[-2], test target items[-1]",
        "filters": {
            "min_user_interactions": cfg.min_user_interactions,
            "min_item_interactions": cfg.min_item_interactions,
        },
        "sources": sources,
        "config": to_dict(cfg),
    }


def _write_atomically(
    out: Path, sequences: pl.DataFrame, items: pl.DataFrame, meta: dict, overwrite: bool
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        sequences.write_parquet(tmp / "sequences.parquet")
        items.write_parquet(tmp / "items.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            claim(out, kind="dataset", overwrite=overwrite, what="output directory")  # still ours?
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary(meta: dict) -> str:
    """The lines ``distill prepare`` prints."""
    return (
        f"users {meta['num_users']:,}  items {meta['num_items']:,}  "
        f"interactions {meta['num_interactions']:,}\n"
        f"length mean {meta['mean_length']:.1f}  median {meta['median_length']:.0f}  "
        f"density {meta['density']:.4%}  titles {meta['num_titles']:,}/{meta['num_items']:,}\n"
        f"fingerprint {meta['fingerprint']}"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shown(value: str, limit: int = 60) -> str:
    """A value from the input as a message shows it: quoted, escaped, at most ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _columns(columns: list[str], limit: int = 8) -> str:
    """Column names as a message lists them: escaped, at most ``limit``."""
    shown = ", ".join(_shown(c, 40) for c in columns[:limit])
    return shown + (f" and {len(columns) - limit} more" if len(columns) > limit else "")
