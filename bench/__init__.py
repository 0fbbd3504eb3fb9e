"""Benchmarks of the distill pipeline; each module runs from the repository root as ``python -m bench.NAME``.

Their results, with the commands that produced them, are in ``bench/results/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.memory import keep_freed_memory

READING = "\n## Reading\n"


def write_results(path: Path, lines: list[str]) -> str:
    """Write a results file from its generated ``lines``, keeping the ``## Reading`` section written by hand
    at the end of the file it replaces, if any; returns the text written."""
    text = "\n".join(lines).rstrip("\n") + "\n"
    if path.is_file() and READING in (old := path.read_text()):
        text += READING + old.split(READING, 1)[1].rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def malloc_option(parser: argparse.ArgumentParser) -> None:
    """``--malloc distill|glibc``: time with the C allocator's thresholds every distill command sets
    (:func:`distill.memory.keep_freed_memory`, the default) or with glibc's own."""
    parser.add_argument(
        "--malloc",
        choices=("distill", "glibc"),
        default="distill",
        help="the C allocator's thresholds: distill's (as every distill command sets them) or glibc's own",
    )


def set_malloc(args: argparse.Namespace) -> None:
    """Apply :func:`malloc_option`'s choice to this process."""
    if args.malloc == "distill":
        keep_freed_memory()
