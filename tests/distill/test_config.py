"""Config layering (defaults < TOML < --set < options), --set parsing by type, and strictness."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from distill.config import ConfigError, PrepareConfig, from_dict, resolve, to_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    r: int = 8
    lora_alpha: float = 16.0


@dataclasses.dataclass(frozen=True)
class Toy:
    name: str = "toy"
    steps: int = 10
    lr: float = 1e-3
    flag: bool = False
    dims: tuple[int, ...] = (1, 2)
    targets: tuple[str, ...] = ("q_proj",)
    limit: int | None = None
    note: str | None = None
    mode: Literal["a", "b"] = "a"
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(r=4))

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


def write_toml(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_only():
    assert resolve(Toy) == Toy()


def test_nested_default_factory_is_kept():
    cfg = resolve(Toy)
    assert cfg.inner == Inner(r=4)
    # Touching one nested field keeps the parent's default for the others.
    assert resolve(Toy, sets=["inner.lora_alpha=2"]).inner == Inner(r=4, lora_alpha=2.0)


def test_layering_order(tmp_path):
    path = write_toml(tmp_path, 'name = "file"\nsteps = 20\nlr = 0.5\n[inner]\nr = 2\n')
    cfg = resolve(Toy, file=path)
    assert (cfg.name, cfg.steps, cfg.lr, cfg.inner.r) == ("file", 20, 0.5, 2)

    cfg = resolve(Toy, file=path, sets=["steps=30", "inner.r=3"])
    assert (cfg.name, cfg.steps, cfg.lr, cfg.inner.r) == ("file", 30, 0.5, 3)

    cfg = resolve(Toy, file=path, sets=["steps=30"], options={"steps": 40, "name": None, "inner.r": 5})
    assert (cfg.name, cfg.steps, cfg.lr, cfg.inner.r) == ("file", 40, 0.5, 5)  # None = option not given


@pytest.mark.parametrize(
    ("item", "field", "expected"),
    [
        ("steps=7", "steps", 7),
        ("lr=2.5e-4", "lr", 2.5e-4),
        ("lr=3", "lr", 3.0),
        ("flag=true", "flag", True),
        ("flag=On", "flag", True),
        ("flag=0", "flag", False),
        ("flag=no", "flag", False),
        ("dims=3,4,5", "dims", (3, 4, 5)),
        ("dims=6", "dims", (6,)),
        ("targets=q_proj, v_proj", "targets", ("q_proj", "v_proj")),
        ("limit=12", "limit", 12),
        ("limit=none", "limit", None),
        ("note=hello world", "note", "hello world"),
        ("note=null", "note", None),
        ("mode=b", "mode", "b"),
        ("name = spaced ", "name", "spaced"),
        ("inner.r=16", "inner", Inner(r=16)),
    ],
)
def test_set_coerces_by_type(item, field, expected):
    value = getattr(resolve(Toy, sets=[item]), field)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("steps=seven", "steps"),
        ("steps=1.5", "steps"),
        ("lr=fast", "lr"),
        ("flag=maybe", "flag"),
        ("dims=1,x", "dims"),
        ("limit=many", "limit"),
        ("mode=c", "mode"),
    ],
)
def test_set_bad_value(item, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        resolve(Toy, sets=[item])


@pytest.mark.parametrize("item", ["bogus=1", "inner.bogus=1", "name.sub=1"])
def test_unknown_key_names_it(item):
    key = item.split("=")[0]
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        resolve(Toy, sets=[item])


def test_unknown_key_in_file_names_file(tmp_path):
    path = write_toml(tmp_path, "stepz = 3\n")
    with pytest.raises(ConfigError, match="stepz") as e:
        resolve(Toy, file=path)
    assert str(path) in str(e.value)


def test_scalar_for_a_table_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'inner'"):
        resolve(Toy, sets=["inner=3"])
    with pytest.raises(ConfigError, match="'inner'"):
        resolve(Toy, file=write_toml(tmp_path, "inner = 3\n"))


def test_set_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        resolve(Toy, sets=["steps"])


def test_toml_types_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="'steps'"):
        resolve(Toy, file=write_toml(tmp_path, 'steps = "ten"\n'))
    with pytest.raises(ConfigError, match="'flag'"):
        resolve(Toy, file=write_toml(tmp_path, "flag = 1\n"))
    cfg = resolve(Toy, file=write_toml(tmp_path, "lr = 1\ndims = [7, 8]\n"))
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.dims == (7, 8)


def test_bad_or_missing_toml(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(Toy, file=write_toml(tmp_path, "steps = = 3\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(Toy, file=tmp_path / "missing.toml")


def test_post_init_value_error_becomes_config_error():
    with pytest.raises(ConfigError, match="steps must be >= 0"):
        resolve(Toy, sets=["steps=-1"])


def test_to_dict_from_dict_round_trip():
    cfg = resolve(Toy, sets=["dims=9,8", "limit=3", "mode=b", "inner.lora_alpha=0.5", "flag=true"])
    data = to_dict(cfg)
    assert data["dims"] == [9, 8] and data["inner"] == {"r": 4, "lora_alpha": 0.5}
    assert from_dict(Toy, data, "saved") == cfg
    prep = PrepareConfig(inputs=("a.txt", "b.txt"), output="out", items="t.tsv", min_item_interactions=2)
    assert from_dict(PrepareConfig, to_dict(prep), "saved") == prep


def test_from_dict_is_strict():
    with pytest.raises(ConfigError, match="unknown config key 'extra' \\(from run/config.json\\)"):
        from_dict(Toy, {**to_dict(Toy()), "extra": 1}, "run/config.json")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"synthetic": True}, "output directory is required"),
        ({"output": "o"}, "no input"),
        ({"output": "o", "synthetic": True, "inputs": ("a",)}, "not both"),
        ({"output": "o", "inputs": ("a",), "min_user_interactions": 2}, "min_user_interactions"),
        ({"output": "o", "inputs": ("a",), "min_item_interactions": 0}, "min_item_interactions"),
        ({"output": "o", "synthetic": True, "num_items": 5}, "num_items >= 10"),
        ({"output": "o", "synthetic": True, "num_users": 0}, "num_users >= 1"),
    ],
)
def test_prepare_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrepareConfig(**kwargs)
    sets = [f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in kwargs.items()]
    with pytest.raises(ConfigError, match=message):
        resolve(PrepareConfig, sets=sets)


def test_prepare_config_format_choices():
    assert resolve(PrepareConfig, sets=["synthetic=true", "output=o", "format=tsv"]).format == "tsv"
    with pytest.raises(ConfigError, match="'format'.*expected one of auto"):
        resolve(PrepareConfig, sets=["synthetic=true", "output=o", "format=xlsx"])
