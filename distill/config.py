"""Typed configuration: dataclass defaults < TOML file < ``--set key=value`` < direct CLI options.

Every command has one frozen dataclass config. This module resolves the layers into an instance,
coercing and checking each value against the field's type annotation, and turns configs back into
plain dictionaries for ``config.json``. Unknown keys are errors that name the key and its source.
No torch here: the CLI imports configs to build ``--help``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

from distill.errors import DistillError

C = TypeVar("C")
MAX_SEED = 2**32 - 1
MAX_COUNT = 2**31 - 1  # sizes and counts: beyond this no tensor dimension or loop makes sense


class ConfigError(DistillError, ValueError):
    """A configuration value or key that cannot be used."""


def resolve(
    cls: type[C],
    *,
    file: str | Path | None = None,
    sets: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
) -> C:
    """Build ``cls`` from its defaults, a TOML file, ``key=value`` strings and direct options.

    Args:
        cls: a (possibly nested) dataclass type.
        file: optional TOML file; nested tables map to nested dataclass fields.
        sets: ``key.sub=value`` strings, values parsed by the field's type.
        options: dotted keys to already-typed values (CLI options the user actually passed).

    Raises:
        ConfigError: unknown key, unparsable value, or a value the dataclass rejects.
    """
    updates: dict[str, tuple[Any, str]] = {}
    if file is not None:
        path = Path(file)
        try:
            table = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        for key, value in _flatten(table):
            updates[key] = (value, f"config file {path}")
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        updates[key.strip()] = (_Raw(raw.strip()), "--set")
    for key, value in (options or {}).items():
        if value is not None:
            updates[key] = (value, "option")
    return _build(cls, updates, prefix="")


def from_dict(cls: type[C], data: Mapping[str, Any], source: str) -> C:
    """Rebuild a config saved by :func:`to_dict` (strict: unknown keys are errors)."""
    return _build(cls, {k: (v, source) for k, v in _flatten(data)}, prefix="")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dictionary of a (nested) dataclass config; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def option(default: Any, help: str = "", *flags: str, multiple: bool = False) -> Any:
    """A config field that is also a command-line option (``--field-name`` unless ``flags`` are given).

    The help text lives beside the field, as peft's configs keep theirs; an empty ``help`` takes the
    wording shared by every command (``cli.SHARED``). Fields declared without it are set through
    ``--config`` or ``--set`` only. A ``multiple`` option (a tuple field) is given once per value.
    """
    return dataclasses.field(default=default, metadata={"help": help, "flags": flags, "multiple": multiple})


def check(
    cfg: Any,
    *,
    required: Mapping[str, str] = {},  # noqa: B006 (read only)
    at_least_one: Sequence[str] = (),
    positive: Sequence[str] = (),
    non_negative: Sequence[str] = (),
    fractions: Sequence[str] = (),
    seeds: Sequence[str] = (),
) -> None:
    """The checks every config's ``__post_init__`` makes, each raising one ``ValueError`` line.

    Args:
        required: field -> the flag that sets it, for fields that must not be empty.
        at_least_one: integer fields that must be in ``1..MAX_COUNT`` (None allowed: "unset").
        positive: number fields that must be > 0.
        non_negative: number fields that must be >= 0.
        fractions: number fields in [0, 1).
        seeds: random seeds, in ``0..2**32 - 1`` (what numpy's and torch's generators all take).
    """
    for name, flag in required.items():
        if not getattr(cfg, name):
            raise ValueError(f"{name} is required ({flag})")
    for names, ok, what in (
        (at_least_one, lambda v: v >= 1, "must be at least 1"),
        (at_least_one, lambda v: v <= MAX_COUNT, f"must be at most {MAX_COUNT}"),
        (positive, lambda v: v > 0, "must be positive"),
        (non_negative, lambda v: v >= 0, "must be >= 0"),
        (fractions, lambda v: 0 <= v < 1, "must be in [0, 1)"),
        (seeds, lambda v: 0 <= v <= MAX_SEED, f"must be in 0..{MAX_SEED}"),
    ):
        for name in names:
            value = getattr(cfg, name)
            if value is not None and not ok(value):
                raise ValueError(f"{name} {what}, got {value}")


def check_folds(cfg: Any) -> None:
    """A cross-fitted run's ``folds`` and ``fold``: both or neither, K >= 2, 0 <= F < K."""
    if (cfg.folds is None) != (cfg.fold is None):
        raise ValueError("cross-fitting takes both --folds K and --fold F (0 <= F < K), or neither")
    if cfg.folds is not None and (not 2 <= cfg.folds <= MAX_COUNT or not 0 <= cfg.fold < cfg.folds):
        raise ValueError(f"need --folds K >= 2 and 0 <= --fold F < K, got K {cfg.folds}, F {cfg.fold}")


def check_resume(cfg: Any) -> None:
    """A training run is either continued (``resume``) or replaced (``overwrite``), not both."""
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume continues the run and --overwrite replaces it: give one of them")


FOLDS_HELP = (
    "Cross-fitting: split users into K folds by a stable hash of their raw id (with --fold).",
    "Cross-fitting: train and early-stop on every fold but this one (0..K-1); it is held out.",
)


class _Raw(str):
    """A string from the command line, still to be parsed by the field's type."""


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _build(cls: type[C], updates: dict[str, tuple[Any, str]], prefix: str, base: Any = None) -> C:
    """``cls`` from the ``updates`` under ``prefix``; fields not updated keep ``base``'s values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    mine = {k[len(prefix) :]: v for k, v in updates.items() if k.startswith(prefix)}
    for key, (_, source) in mine.items():
        head = key.split(".", 1)[0]
        if head not in fields or ("." in key and not dataclasses.is_dataclass(hints[head])):
            known = ", ".join(prefix + name for name in fields)
            raise ConfigError(f"unknown config key '{prefix}{key}' (from {source}); known keys: {known}")
        if "." not in key and dataclasses.is_dataclass(hints[head]):
            raise ConfigError(
                f"config key '{prefix}{key}' (from {source}) is a table: "
                f"set its fields as '{prefix}{key}.NAME'"
            )
    kwargs = {}
    for name, f in fields.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            # A nested config nobody touched keeps the parent's default for it (its default_factory, not
            # typ()); a touched one starts from that default; one without a default is built from typ's.
            sub_base = getattr(base, name) if base is not None else _field_default(f)
            if any(k.startswith(name + ".") for k in mine) or sub_base is None:
                kwargs[name] = _build(typ, updates, prefix=f"{prefix}{name}.", base=sub_base)
            continue
        if name in mine:
            value, source = mine[name]
            kwargs[name] = _coerce(value, typ, f"{prefix}{name}", source)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"incomplete config for {cls.__name__}: {e}") from None
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _number(value: Any, typ: type) -> int | float | None:
    """``value`` as an ``int`` or ``float`` (parsed if it is a raw string), or None if it is not one."""
    if isinstance(value, _Raw):
        try:
            return typ(value)
        except ValueError:
            return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (typ is int and isinstance(value, float))
    ):
        return None
    return typ(value)


def _coerce(value: Any, typ: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``typ``; parse it first if it came as a raw string."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    where = f"config key '{key}' (from {source})"
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, _Raw) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be None")
    if origin is typing.Literal:
        choices = args
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return str(value) if isinstance(value, _Raw) else value
    if origin in (tuple, list):
        inner = args[0] if args else str
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
            value = [_Raw(v) for v in items]  # comma-separated text: each item parsed by its type
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, inner, key, source) for v in value)
    if typ is bool:
        if isinstance(value, _Raw):
            low = value.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
        elif isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ in (int, float):
        number = _number(value, typ)
        if number is None:
            raise ConfigError(
                f"{where}: expected {'an integer' if typ is int else 'a number'}, got {value!r}"
            )
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if typ is str:
        if isinstance(value, str):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {typ}")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """``distill prepare``: raw interactions (or the synthetic generator) → a dataset directory."""

    inputs: tuple[str, ...] = ()
    output: str = option("", "Dataset directory to write.", "--output", "-o")
    format: typing.Literal[
        "auto", "sasrec", "lines", "recbole", "movielens", "csv", "tsv", "parquet", "jsonl"
    ] = option("auto", "Input format; auto guesses from the extension and the first lines.")
    items: str | None = option(
        None, "Item metadata with titles (TSV/CSV with a header, RecBole .item, MovieLens movies.dat)."
    )
    user_col: str | None = option(None, "User column of a CSV/TSV/Parquet/JSON Lines input.")
    item_col: str | None = option(None, "Item column of a CSV/TSV/Parquet/JSON Lines input.")
    time_col: str | None = option(None, "Timestamp column (numbers or ISO dates); file order if none.")
    min_user_interactions: int = option(
        3, "Drop users with fewer interactions (iterated with the item bound)."
    )
    min_item_interactions: int = option(1, "Drop items with fewer interactions (k-core with the user bound).")
    synthetic: bool = option(
        False,
        "Generate the embedded synthetic dataset instead of reading INPUTS: latent interest clusters, "
        "popularity skew, successor items; each title names its item's cluster.",
    )
    num_users: int = option(1000, "Synthetic: number of users.")
    num_items: int = option(500, "Synthetic: number of items.")
    seed: int = option(0, "Synthetic: random seed.")
    overwrite: bool = option(False)

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("an output directory is required (--output DIR)")
        if self.synthetic and self.inputs:
            raise ValueError("give either input files or --synthetic, not both")
        if not self.synthetic and not self.inputs:
            raise ValueError("no input: give one or more INPUT files, or --synthetic")
        if self.min_user_interactions < 3:
            raise ValueError(
                "min_user_interactions must be at least 3 (leave-one-out needs a train, a validation "
                f"and a test item), got {self.min_user_interactions}"
            )
        if self.synthetic and (self.num_users < 1 or self.num_items < 10):
            raise ValueError(
                "synthetic data needs num_users >= 1 and num_items >= 10, "
                f"got {self.num_users}, {self.num_items}"
            )
        check(self, at_least_one=("min_item_interactions", "num_users", "num_items"), seeds=("seed",))


def parse_metric(metric: str) -> tuple[str, int | None]:
    """``"ndcg@10"`` → ``("ndcg", 10)``, ``"mrr"`` → ``("mrr", None)``; anything else is a ValueError.

    Here (no torch) so that configs can check a metric option as :func:`distill.metrics.per_user` reads it.
    """
    name, _, k = metric.partition("@")
    if name == "mrr" and not k:
        return name, None
    if name in ("hr", "ndcg") and k.isdigit() and int(k) > 0:
        return name, int(k)
    raise ValueError(f"unknown metric {metric!r}: metric must be hr@K, ndcg@K or mrr")
