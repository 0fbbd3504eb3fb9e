"""Wall time and peak memory of ``distill prepare`` on the shared datasets, as a user runs it.

Each run is a fresh ``distill prepare`` process (interpreter start, imports, reading, writing), timed
from spawn to exit; peak RSS is that process's ``ru_maxrss`` from ``os.wait4``. Every dataset runs
``--repeats`` times and the table shows the median wall and CPU time and the largest peak RSS. The table is
printed and written to ``bench/results/prepare.md`` with the command, date and machine.

    python -m bench.prepare [--data ../shared/data] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
IMPORTS = [sys.executable, "-c", "import distill.prepare"]  # the fixed cost under every prepare row

# (label, inputs, extra options), paths relative to the data directory
CASES = [
    ("ml-1m", ["ml-1m/ml-1m.txt"], []),
    ("ml-1m + titles", ["ml-1m/ml-1m.txt"], ["--items", "ml-1m/items.tsv"]),
    ("beauty", ["beauty/Beauty.txt"], []),
    ("ml-100k (RecBole, timestamps, titles)", ["ml-100k/ml-100k.inter"], []),
]


def distill_command() -> list[str]:
    """The ``distill`` script of this interpreter's environment, or the CLI module run directly."""
    script = Path(sys.executable).parent / "distill"
    return [str(script)] if script.is_file() else [sys.executable, str(ROOT / "cli.py")]


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """Run ``cmd`` to completion; ``(wall s, CPU s, peak RSS MiB)``. Fails loudly on a non-zero exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{output.decode(errors='replace')}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux reports KiB


def row(label: str, interactions: str, runs: list[tuple[float, float, float]]) -> str:
    """A table row: median wall and CPU seconds, largest peak RSS."""
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    peak = max(r[2] for r in runs)
    return f"| {label} | {interactions} | {wall:.2f} | {cpu:.2f} | {peak:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="shared data directory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "prepare.md")
    args = parser.parse_args()
    data = args.data.resolve()
    distill = distill_command()

    load = os.getloadavg()
    table = [
        "| dataset | interactions | median wall s | median CPU s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
        row("`distill --help` (start-up)", "", [timed([*distill, "--help"]) for _ in range(args.repeats)]),
        row("imports of prepare only (polars, numpy)", "", [timed(IMPORTS) for _ in range(args.repeats)]),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        out = Path(tmp) / "out"
        for label, inputs, extra in CASES:
            paths = [data / p for p in inputs]
            if not all(p.is_file() for p in paths):
                print(f"skipping {label}: {paths[0]} not found", file=sys.stderr)
                continue
            options = [str(data / e) if e.endswith((".tsv", ".item", ".dat")) else e for e in extra]
            runs = []
            for _ in range(args.repeats):
                shutil.rmtree(out, ignore_errors=True)
                runs.append(timed([*distill, "prepare", *map(str, paths), *options, "-o", str(out)]))
            interactions = json.loads((out / "meta.json").read_text())["num_interactions"]
            table.append(row(label, f"{interactions:,}", runs))

    command = shlex.join(["python", "-m", "bench.prepare", *sys.argv[1:]])
    after = os.getloadavg()
    header = [
        "# `distill prepare` benchmark",
        "",
        f"- command: `{command}` (from the repository root)",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"polars {version('polars')}; load average {load[0]:.2f} before the runs, "
        f"{after[0]:.2f}/{after[2]:.2f} (1/15 min) after",
        f"- each row: {args.repeats} fresh processes; a dataset row is a whole `distill prepare` (start-up, "
        "read, filter, number, write); median wall time, median CPU time (user + system: less sensitive "
        "to a busy machine), largest peak RSS",
        "",
    ]
    print("\n".join(table))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join([*header, *table]) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
