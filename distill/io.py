"""Files and messages every command shares: JSON written whole, JSON read with a one-line error, log
lines and progress on the main process. No torch here: preparing data and ``--help`` stay light.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import DistillError


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` job, or the only process: the one that writes logs and checkpoints.

    A ``RANK`` variable outside a multi-process job (``WORLD_SIZE`` unset or 1) does not count. A process
    group exists only once torch is loaded, so a process that never imported it is asked nothing of it.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("WORLD_SIZE", "1")) == 1 or int(os.environ.get("RANK", "0")) == 0


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file so a reader never sees half of it (rank 0 only)."""
    if not is_main_process():
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def first_line(e: BaseException) -> str:
    """An exception's message as one line: its first line, or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def write_failure(e: BaseException, path: str | Path) -> str:
    """Why writing ``path`` failed, in words: the OS's reason, and the space left on its disk (a full
    disk shows as other errors too: torch and safetensors report it in their own words)."""
    reason = getattr(e, "strerror", None) or first_line(e)[:200]
    path = Path(path).absolute()
    try:
        free = shutil.disk_usage(next(p for p in (path, *path.parents) if p.is_dir())).free
    except OSError:
        return reason
    full = "; is the disk full?" if free < 100 * 2**20 else ""
    return f"{reason} ({free / 2**20:.1f} MiB free there{full})"


def read_json(path: Path, what: str, fields: Mapping[str, Field] | None = None) -> dict[str, Any]:
    """A JSON object from ``path`` whose ``fields`` (when given) pass :func:`check_fields`; a missing
    file, bad JSON, another JSON value or a field of the wrong kind is a one-line DistillError."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DistillError(f"{what}: {path} does not exist") from None
    except IsADirectoryError:
        raise DistillError(f"{what}: {path} is a directory, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DistillError(f"{what}: {path} is not valid JSON ({e})") from None
    except OSError as e:
        raise DistillError(f"{what}: cannot read {path} ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise DistillError(f"{what}: {path} is not a JSON object (it holds a {type(data).__name__})")
    if fields:
        check_fields(data, path, fields)
    return data


@dataclass(frozen=True)
class Field:
    """What a field of a file distill reads must hold: ``what`` in words, ``ok`` the test; ``fields``
    for a nested object (checked in turn when ``ok`` passes)."""

    what: str
    ok: Callable[[Any], bool]
    fields: Mapping[str, Field] | None = None
    required: bool = True


def whole(low: int = 0, high: int | None = None) -> Field:
    """An integer (not a boolean) in ``low..high``."""
    span = f"at least {low}" if high is None else f"in {low}..{high}"
    return Field(
        f"an integer {span}",
        lambda v: type(v) is int and v >= low and (high is None or v <= high),
    )


TEXT = Field("a string", lambda v: isinstance(v, str))


def table(fields: Mapping[str, Field] | None = None, required: bool = True) -> Field:
    """A nested JSON object, its own ``fields`` checked."""
    return Field("an object", lambda v: isinstance(v, dict), fields, required)


def optional(field: Field) -> Field:
    """``field``, or absent (``null`` counts as absent)."""
    return Field(field.what, field.ok, field.fields, required=False)


def check_fields(
    data: Mapping[str, Any], where: str | Path, fields: Mapping[str, Field], prefix: str = ""
) -> None:
    """Refuse the first of ``fields`` that ``data`` lacks or holds a value of the wrong kind in, naming
    the file (``where``), the field (dotted when nested) and what it must hold."""
    for key, field in fields.items():
        name = f"{prefix}{key}"
        value = data.get(key)
        if value is None:
            if field.required:
                raise DistillError(
                    f"{where}: no field {name!r} ({field.what}); the file is damaged or not distill's"
                )
            continue
        if not field.ok(value):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise DistillError(f"{where}: field {name!r} must be {field.what}, not {shown}")
        if field.fields:
            check_fields(value, where, field.fields, f"{name}.")


def record_path(run_dir: str | Path, path: str | Path) -> str:
    """How a file written in ``run_dir`` records ``path``: relative to ``run_dir``, so that moving or
    copying a tree that holds both keeps the link."""
    return os.path.relpath(Path(path).resolve(), Path(run_dir).resolve())


def recorded_path(run_dir: str | Path, value: Any, what: str) -> Path:
    """The path a file in ``run_dir`` recorded with :func:`record_path`. Older runs recorded absolute
    paths: those are followed as they are, with a note that the run breaks when its parts move."""
    if not isinstance(value, str) or not value:
        raise DistillError(f"{Path(run_dir) / 'config.json'}: {what} is not a path (got {value!r})")
    path = Path(value)
    if path.is_absolute():
        log(
            f"note: {run_dir} records {what} as the absolute path {value} (written by an older distill); "
            "it breaks when that moves: run the stage again to record it relative to the run"
        )
        return path
    return Path(run_dir) / path


def log(message: str) -> None:
    """One line on stderr from the main process, without breaking a progress bar."""
    if is_main_process():
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


# Without a terminal, a progress line goes to the log at most this often (seconds).
HEARTBEAT_SECONDS = 60.0


def progress(total: int, desc: str, enabled: bool = True):
    """Progress of a loop on the main process: a tqdm bar on a terminal, otherwise a log line at most
    every :data:`HEARTBEAT_SECONDS` (a long export in a log file still says where it is)."""
    from tqdm.auto import tqdm

    if not (enabled and is_main_process()):
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    return _Heartbeat(total, desc)


class _Heartbeat:
    """The part of tqdm's interface the loops use (``update``, ``set_postfix``, ``n``), as log lines."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n = total, desc, 0
        self._postfix = ""
        self._started = self._last = time.perf_counter()

    def __enter__(self) -> _Heartbeat:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def set_postfix(self, **values: object) -> None:
        self._postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last < HEARTBEAT_SECONDS or self.n >= self.total:
            return
        self._last = now
        rate = self.n / (now - self._started)
        eta = (self.total - self.n) / rate if rate > 0 else math.inf
        line = f"{self.desc}: {self.n:,}/{self.total:,} ({self.n / self.total:.0%}), {rate:.1f}/s, "
        log(line + f"{eta / 60:.1f} min left" + (f"; {self._postfix}" if self._postfix else ""))
