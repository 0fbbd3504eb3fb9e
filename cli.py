"""The ``distill`` command line: parse options, build one config, call one ``run(cfg)``.

Nothing here imports torch at module level, so ``distill --help`` stays fast; each command imports
its stage when it runs. Option values override ``--set`` which overrides ``--config`` which
overrides the config dataclass's defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Any

import click

from distill.config import defaults as config_defaults
from distill.errors import DistillError


def _user_errors(fn: Callable) -> Callable:
    """Turn a DistillError (bad input, a mismatched file, a missing checkpoint) into one line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DistillError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def _option(cls: type, key: str, *decls: str, help: str, **kwargs: Any) -> Callable:
    """A click option bound to config field ``key``; its default is shown from the dataclass, not repeated."""
    value = config_defaults(cls).get(key.split(".")[-1]) if "." not in key else None
    if value not in (None, "") and not kwargs.get("is_flag"):
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        help = f"{help}  [default: {shown}]"
    kwargs.setdefault("default", None)  # None = not given: the config file or dataclass default decides
    return click.option(*decls, key.replace(".", "__"), help=help, **kwargs)


def _config_options(fn: Callable) -> Callable:
    fn = click.option(
        "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one config value (repeatable)."
    )(fn)
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), help="TOML file of config values."
    )(fn)


def _resolve(cls: type, config_file: str | None, sets: tuple[str, ...], options: dict[str, Any]) -> Any:
    from distill.config import resolve

    return resolve(cls, file=config_file, sets=sets, options={k.replace("__", "."): v for k, v in options.items()})


def _choices(cls: type, key: str) -> click.Choice:
    return click.Choice(typing.get_args(typing.get_type_hints(cls)[key]))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="distill")
def main() -> None:
    """Distill an LLM-based sequential recommender into a small SASRec student.

    \b
    Pipeline:
      distill prepare        raw interactions -> dataset directory
      distill student-train  SASRec on labels (also the teacher's ID encoder)
      distill evaluate       full-ranking metrics of a saved run
    """


# ---------------------------------------------------------------------------------------------- prepare
from distill.config import PrepareConfig  # noqa: E402  (torch-free)


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@_option(PrepareConfig, "output", "--output", "-o", help="Dataset directory to write.")
@_option(PrepareConfig, "format", "--format", type=_choices(PrepareConfig, "format"),
         help="Input format; auto guesses from the extension and the first lines.")
@_option(PrepareConfig, "items", "--items", help="Item metadata with titles (TSV/CSV with a header, RecBole .item, "
         "MovieLens movies.dat).")
@_option(PrepareConfig, "user_col", "--user-col", help="User column of a CSV/TSV/Parquet input.")
@_option(PrepareConfig, "item_col", "--item-col", help="Item column of a CSV/TSV/Parquet input.")
@_option(PrepareConfig, "time_col", "--time-col", help="Timestamp column (numbers or ISO dates); file order if none.")
@_option(PrepareConfig, "min_user_interactions", "--min-user-interactions", type=int,
         help="Drop users with fewer interactions (iterated with the item bound: k-core).")
@_option(PrepareConfig, "min_item_interactions", "--min-item-interactions", type=int,
         help="Drop items with fewer interactions.")
@_option(PrepareConfig, "synthetic", "--synthetic", is_flag=True,
         help="Generate the embedded synthetic dataset instead of reading INPUTS.")
@_option(PrepareConfig, "num_users", "--num-users", type=int, help="Synthetic: number of users.")
@_option(PrepareConfig, "num_items", "--num-items", type=int, help="Synthetic: number of items.")
@_option(PrepareConfig, "seed", "--seed", type=int, help="Synthetic: random seed.")
@_option(PrepareConfig, "overwrite", "--overwrite", is_flag=True, help="Replace an existing output.")
@_config_options
@_user_errors
def prepare(inputs: tuple[str, ...], config_file: str | None, sets: tuple[str, ...], **options: Any) -> None:
    """Turn raw interactions (or --synthetic data) into a dataset directory.

    INPUTS are interaction files of one format: SASRec `user item` lines, one user per line
    (`user i1 i2 ...`), RecBole `.inter`, MovieLens `ratings.dat`, or CSV/TSV/Parquet.
    """
    from distill import prepare as stage

    if inputs:
        options["inputs"] = inputs
    cfg = _resolve(PrepareConfig, config_file, sets, options)
    meta = stage.run(cfg)
    click.echo(f"wrote {cfg.output}")
    click.echo(stage.summary(meta))


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


if __name__ == "__main__":
    main()
