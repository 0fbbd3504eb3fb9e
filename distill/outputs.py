"""What a writing command may replace, and what a killed writer left behind.

Every command that writes (``prepare``, ``student-train``, ``teacher-train``, ``export-logits``,
``pipeline``) asks :func:`claim` before it touches its output. ``--overwrite`` replaces only a
directory that distill recognisably wrote, and only one of the kind the command writes:

- a dataset: ``meta.json`` with a ``format_version`` and a ``fingerprint``;
- a score directory: ``manifest.json`` with a ``format_version`` and its ``shards``;
- a run: ``config.json`` with one of the run kinds of :data:`RUN_KINDS`;
- a directory of outputs (``distill pipeline``'s): the part directories its writer names in a
  ``layout``, each of its kind above or empty, at least one not empty. The writer replaces its parts
  (and files it recognises as its own) only, so it also writes into a directory of other files that
  holds no part: those files stay.

Anything else (a regular file, a directory of someone's files, a run where a dataset is expected) is
refused with one line naming the path and why; nothing is deleted. Writers build their output under
``.NAME.tmp-PID`` and rename it into place; what a killed writer left (``.NAME.tmp-PID``,
``.NAME.old-PID`` of a process that no longer runs) is removed by the next writer of ``NAME``, and an
``.NAME.old-PID`` whose ``NAME`` is gone (killed between the two renames of a replacement) is put back.

Outputs written over time (a run, the pipeline's parts) cannot be renamed into place whole: what
``--overwrite`` replaces there is :func:`set_aside` (renamed to ``.NAME.aside-PID``) and kept until the
command ends (:func:`replacing`): deleted when it succeeds, put back in place of what it wrote when it
fails, unless what it wrote is a run with a checkpoint to resume. When the command was killed, the next
writer of ``NAME`` does the same (:func:`clean_stale`; readers leave it alone); the pipeline, which
does not resume, puts all its parts back (``clean_stale(..., put_back_all=True)``). No torch here.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from distill.errors import DistillError

# The ``kind`` of a run's config.json: a student-train run, and the teacher-train run of each teacher.
STUDENT = "student"
TEACHER_KINDS = {"moe-lora": "teacher-moe-lora", "e4srec": "teacher-e4srec"}
RUN_KINDS = (STUDENT, *TEACHER_KINDS.values())

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old|aside)-(?P<pid>\d+)$")

# What this process's --overwrite moved aside and has not settled: (the output, where it waits; None:
# there was none, and a failed command deletes what it wrote there).
_SET_ASIDE: list[tuple[Path, Path | None]] = []


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def kind_of(path: str | Path, layout: Mapping[str, str] | None = None) -> str | None:
    """``"dataset"``, ``"scores"``, ``"run"``, ``"runs"`` (a directory of runs) for a directory distill
    wrote, or ``"outputs"`` for one laid out as ``layout`` (a writer's part directories and their kinds,
    e.g. the pipeline's stages) with at least one part distill wrote; else None."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return None
    meta = _json_object(path / "meta.json")
    if meta is not None and "format_version" in meta and "fingerprint" in meta:
        return "dataset"
    manifest = _json_object(path / "manifest.json")
    if manifest is not None and "format_version" in manifest and "shards" in manifest:
        return "scores"
    config = _json_object(path / "config.json")
    if config is not None and config.get("kind") in RUN_KINDS:
        return "run"
    entries = [p for p in path.iterdir() if not _TEMP.match(p.name)]
    if entries and all(kind_of(p) == "run" for p in entries):
        return "runs"
    if layout is not None:
        parts = _parts(path, layout)
        if any(kind == layout[name] for name, kind in parts.items()) and _parts_ours(path, parts, layout):
            return "outputs"
    return None


def _parts(path: Path, layout: Mapping[str, str]) -> dict[str, str | None]:
    """The kind of each part directory (or file) of ``layout`` present in ``path``."""
    return {name: kind_of(path / name) for name in layout if (path / name).exists()}


def _parts_ours(path: Path, parts: dict[str, str | None], layout: Mapping[str, str]) -> bool:
    """Whether every part present is a directory distill wrote, of that part's kind, or empty."""
    return all(kind == layout[name] or _is_empty_dir(path / name) for name, kind in parts.items())


_NAMES = {
    "dataset": "dataset",
    "scores": "score directory",
    "run": "run",
    "runs": "directory of runs",
    "outputs": "directory of distill's outputs",
}
_RECOGNISED_BY = {
    "dataset": "meta.json with a format_version and a fingerprint",
    "scores": "manifest.json with a format_version and shards",
    "run": "config.json with a run kind",
    "runs": "run directories only",
}


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(p for p in path.iterdir() if not _TEMP.match(p.name))


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_stale(directory: str | Path, name: str | None = None, *, put_back_all: bool = False) -> None:
    """Settle the ``.NAME.tmp-PID``, ``.NAME.old-PID`` and ``.NAME.aside-PID`` entries of ``directory``
    (all names, or only ``name``) whose process no longer runs: a temporary one is removed; an old copy
    is renamed back when its ``NAME`` is missing, else removed; an output ``--overwrite`` set aside is put
    back unless its ``NAME`` became a run with a checkpoint to resume (then it is removed), or always
    with ``put_back_all``."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in sorted(directory.iterdir()):
        match = _TEMP.match(entry.name)
        if match is None or (name is not None and match["name"] != name) or _alive(int(match["pid"])):
            continue
        target = directory / match["name"]
        present = target.exists() or target.is_symlink()
        if match["what"] == "aside" and (put_back_all or not holds_checkpoint(target)):
            if present:
                _delete(target)
            entry.rename(target)
        elif match["what"] == "old" and not present:
            entry.rename(target)
        else:
            _delete(entry)


def holds_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a run with a checkpoint that ``--resume`` continues (``RUN/last/state.pt``)."""
    path = Path(path)
    return (path / "last" / "state.pt").is_file()


def _writable_ancestor(path: Path) -> None:
    """Refuse early (one line) when the nearest existing ancestor of ``path`` cannot be written."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise DistillError(f"cannot create {path}: {parent} is not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise DistillError(f"cannot write {path}: permission denied on {parent}")
            return


def claim(
    path: str | Path,
    *,
    kind: str,
    overwrite: bool,
    what: str,
    hint: str = "use --overwrite to replace it",
    layout: Mapping[str, str] | None = None,
) -> bool:
    """Check that a command that writes a ``kind`` output may write ``path``; clean what a killed
    writer of it left behind.

    Args:
        kind: ``"dataset"``, ``"scores"``, ``"run"`` or ``"outputs"`` (laid out as ``layout``).
        overwrite: whether the user asked to replace an existing output.
        what: how messages name the path ("output directory", "score directory", ...).
        hint: what the message for an existing output suggests.
        layout: for ``"outputs"``: the writer's part directories and the kind of each.

    Returns:
        True when a non-empty output exists and will be replaced.

    Raises:
        DistillError: (one line) the path is a file, exists without ``overwrite``, is not a ``kind``
            distill wrote, or cannot be written.
    """
    path = Path(path)
    clean_stale(path.parent, path.name)
    if path.is_symlink() and not path.exists():
        raise DistillError(f"{what} {path} is a broken symbolic link; refusing to replace it")
    if path.exists() and not path.is_dir():
        raise DistillError(f"{what} {path} exists and is not a directory; refusing to replace a file")
    _writable_ancestor(path)
    if not path.exists() or _is_empty_dir(path):
        return False
    if not overwrite:
        raise DistillError(f"{what} {path} already exists ({hint})")
    found = kind_of(path, layout)
    if kind == "outputs" and found is None and _parts_ours(path, _parts(path, layout), layout):
        return True  # no part to replace, and the user's other files stay
    if found != kind:
        recognised_by = _RECOGNISED_BY.get(kind) or f"directories ({', '.join(layout)}) that distill wrote"
        why = f"it is a {_NAMES[found]}" if found else f"no {recognised_by}"
        raise DistillError(
            f"{what} {path} is not a {what if kind == 'outputs' else _NAMES[kind]} written by distill "
            f"({why}); refusing to replace it"
        )
    foreign = _foreign(path, kind, layout)
    if foreign:
        shown = ", ".join(str(f.relative_to(path)) for f in foreign[:3]) + (
            ", ..." if len(foreign) > 3 else ""
        )
        raise DistillError(
            f"{what} {path} also holds {len(foreign)} file(s) distill did not write ({shown}); "
            "refusing to replace it: move them out first"
        )
    return True


# What each kind of output holds when distill wrote it (a score directory: its manifest and the shards
# the manifest names): anything else in it is someone's, and --overwrite does not delete it.
_ENTRIES = {
    "dataset": {"meta.json", "sequences.parquet", "items.parquet"},
    "run": {"config.json", "metrics.json", "best", "last", "tb", "sasrec", "item_text.safetensors"},
}


def _foreign(path: Path, kind: str, layout: Mapping[str, str] | None = None) -> list[Path]:
    """The entries of output ``path`` (of ``kind``) that distill does not write there."""
    entries = sorted(p for p in path.iterdir() if not _TEMP.match(p.name))
    if kind == "runs":
        return [f for p in entries for f in (_foreign(p, "run") if kind_of(p) == "run" else [p])]
    if kind == "outputs":  # only the parts are replaced: files beside them stay
        return [f for p in entries if p.name in layout and p.is_dir() for f in _foreign(p, layout[p.name])]
    if kind == "scores":  # format 1 names its shard files; format 2 its shards, each a file per column
        manifest = _json_object(path / "manifest.json") or {}
        shards = [str(s) for s in manifest.get("shards") or []]
        columns = manifest.get("columns") if isinstance(manifest.get("columns"), dict) else {}
        own = {"manifest.json", *shards, *(f"{s}.{c}.npy" for s in shards for c in columns)}
    else:
        own = _ENTRIES[kind]
    return [p for p in entries if p.name not in own]


def remove_dir(path: Path) -> None:
    """Remove a directory distill wrote: renamed aside first (``.NAME.old-PID``, which the next writer
    cleans if this process is killed), then deleted."""
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    path.rename(old)
    shutil.rmtree(old, ignore_errors=True)


def check_outside(output: str | Path, inputs: Iterable[tuple[str, str | Path | None]]) -> None:
    """Refuse (one line) an input (``(option, path)`` pairs) that lies inside ``output``, which
    ``--overwrite`` is about to replace."""
    inside = Path(output).resolve()
    for option, path in inputs:
        if path and Path(path).resolve().is_relative_to(inside):
            raise DistillError(
                f"{option} {path} lies inside {output}, which --overwrite replaces: copy it elsewhere first"
            )


def set_aside_of(path: Path) -> Path | None:
    """Where an ``--overwrite`` of ``path`` (alive or killed) set the old output aside, if it did."""
    if not path.parent.is_dir():
        return None
    return next(
        (
            entry
            for entry in sorted(path.parent.iterdir())
            if (match := _TEMP.match(entry.name)) and match["what"] == "aside" and match["name"] == path.name
        ),
        None,
    )


def set_aside(path: Path) -> None:
    """Move an output that ``--overwrite`` replaces out of the way (``.NAME.aside-PID``) until the
    command in :func:`replacing` ends; a kill leaves it to the next writer of ``NAME``
    (:func:`clean_stale`). A ``path`` that does not exist is only noted: a failed command deletes what
    it wrote there."""
    aside = None
    if path.exists() or path.is_symlink():
        aside = path.with_name(f".{path.name}.aside-{os.getpid()}")
        path.rename(aside)
    _SET_ASIDE.append((path, aside))


def replacing(*, resumable: bool) -> Callable[[Callable], Callable]:
    """Settle what a writing command sets aside (:func:`set_aside`): delete it when the command returns;
    when it raises (an error, a bug, Ctrl-C), put it back in place of what the command wrote there,
    unless the command is ``resumable`` and wrote a run holding a checkpoint to ``--resume`` (the old
    output is then dropped, as on success)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark = len(_SET_ASIDE)
            failed = True
            try:
                result = fn(*args, **kwargs)
                failed = False
                return result
            finally:
                while len(_SET_ASIDE) > mark:
                    path, aside = _SET_ASIDE.pop()
                    if failed and not (resumable and holds_checkpoint(path)):
                        if path.exists() or path.is_symlink():
                            _delete(path)
                        if aside is not None and (aside.exists() or aside.is_symlink()):
                            aside.rename(path)
                    elif aside is not None:
                        _delete(aside)

        return wrapper

    return decorate
