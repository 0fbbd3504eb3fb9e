"""Benchmarks of the distill pipeline; each module runs from the repository root as ``python -m bench.NAME``.

Their results, with the commands that produced them, are in ``bench/results/``.
"""

from __future__ import annotations

from pathlib import Path

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
