"""Peak memory and wall time of ``distill evaluate`` and ``distill export-logits --top-k 100`` at 10^4, 10^5
and 10^6 items: the catalogue a block of items at a time against the whole catalogue at once.

For each catalogue size N a dataset of ``--users`` users is written (a ``user item`` file, then
``distill prepare``), a small SASRec is trained on it (d = 32, one epoch, ``--loss sampled --negatives
256``), and every measured command is a fresh ``distill`` process, timed from spawn to exit, its peak
RSS GNU time's maximum resident set size of that process (the whole process: interpreter, torch, model,
data).
Each command runs with ``--item-block 0`` (the whole catalogue at once, the full path), with no option
(the automatic choice: :func:`distill.scoring.item_block`) and with ``--item-block 8192`` (small blocks:
memory should not grow with N). The block runs are checked against the full run: the same metric table,
the same exported items.

Why not ``prepare --synthetic`` for the data: it keeps the items that occur, and 2,000 users of about 20
interactions reach about 37,000 items whatever ``--num-items`` says (its generator held a dense
``users x items`` array, 3.4 GB at 2,000 x 10^6, until 2026-12-02). ``--check-synthetic`` measures
that. Here user u reads a stretch of a shuffled ring of the N items (``max(50, N / users)`` items, the
stretches tiling the ring), so every item occurs and the vocabulary is exactly N.

    python -m bench.catalogue_scale [--sizes 10000 100000 1000000] [--users 2000] [--check-synthetic]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distill.data import Dataset
from distill.scores import read_scores
from distill.scoring import item_block
from pipeline.runs import open_run

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "out" / "catalogue_scale"
THREADS = "2"  # torch threads of every child (the machine's cores); set before torch loads
# (label, --item-block option or None)
MODES = [("full", "0"), ("auto", None), ("blocks of 8,192", "8192")]


def distill_command() -> list[str]:
    """The ``distill`` script of this interpreter's environment, or the CLI module run directly."""
    script = Path(sys.executable).parent / "distill"
    return [str(script)] if script.is_file() else [sys.executable, str(ROOT / "cli.py")]


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd`` to completion: ``(wall s, peak RSS MiB, output)``. Fails loudly on a non-zero exit.

    The peak is GNU time's ``%M`` of the command, not ``ru_maxrss`` of a child of this process: Linux
    carries the parent's high-water RSS into a child across ``fork`` and ``exec``, and this process
    grows (it reads the score directories, ranks in process).
    """
    env = {**os.environ, "OMP_NUM_THREADS": THREADS}
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], capture_output=True, text=True, env=env
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{shlex.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
        peak = int(rss.read().split()[-1]) / 1024  # KiB
    return wall, peak, proc.stdout + proc.stderr


def write_ring(path: Path, num_items: int, users: int, seed: int = 0) -> int:
    """A ``user item`` file: user u reads the ring's items ``u * L .. u * L + L - 1`` (mod N) of a shuffled
    ring of ``num_items`` items, ``L = max(50, ceil(N / users))``, so every item occurs. Returns L."""
    length = max(50, math.ceil(num_items / users))
    ring = np.random.default_rng(seed).permutation(num_items)
    u = np.repeat(np.arange(users), length)
    items = ring[(u * length + np.tile(np.arange(length), users)) % num_items]
    np.savetxt(path, np.stack([u + 1, items + 1], axis=1), fmt="%d")  # SASRec format: integer ids
    return length


def rank_check(run: Path, data: Path) -> tuple[dict[str, int], float]:
    """How many users' test ranks each block mode changes against the full path (all users), and the
    full path's MRR: ``({label: users whose rank differs}, mrr)``. In this process, two threads."""
    torch.set_num_threads(int(THREADS))
    dataset = Dataset(data)
    scorer = open_run(run, dataset, "cpu")
    _, full = scorer.ranks(dataset, "test", 256, block=0)
    differing = {}
    for label, option in MODES[1:]:
        _, ranks = scorer.ranks(dataset, "test", 256, block=None if option is None else int(option))
        differing[label] = int((ranks != full).sum())
    return differing, float((1.0 / (full.double() + 1)).mean())


def compare_rows(a: tuple, b: tuple) -> str:
    """Rows of two exports of the same scorer: identical, or differing only in the order of items
    whose stored scores are equal (ties, which ``topk`` may order either way), or otherwise."""
    (items_a, logits_a, *_), (items_b, logits_b, *_) = a, b
    rows = np.flatnonzero((items_a != items_b).any(axis=1))
    tied = 0
    for r in rows:
        moved = items_a[r] != items_b[r]
        same_set = set(items_a[r].tolist()) == set(items_b[r].tolist())
        tied += same_set and len({*logits_a[r][moved].tolist(), *logits_b[r][moved].tolist()}) == 1
    other = len(rows) - tied
    text = f"{len(items_a) - len(rows):,} of {len(items_a):,} identical"
    text += f", {tied} with tied items in another order" if tied else ""
    return text + (f", **{other} otherwise**" if other else "")


def exported(path: Path, data: Path) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(items, logits, rows, bytes on disk)`` of a score directory."""
    scores = read_scores(path, Dataset(data))
    items, logits, _ = scores.table()
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return items.numpy(), logits.numpy(), scores.rows, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--check-synthetic", action="store_true", help="also time prepare --synthetic")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "catalogue_scale.md")
    args = parser.parse_args()
    distill = distill_command()
    args.work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    started = time.perf_counter()

    synthetic = []
    if args.check_synthetic:
        for n in args.sizes:
            out = args.work / f"synthetic-{n}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [*distill, "prepare", "--synthetic", "--num-users", str(args.users), "--num-items", str(n)]
            wall, peak, _ = timed([*cmd, "-o", str(out)])
            meta = json.loads((out / "meta.json").read_text())
            synthetic.append(
                f"| {n:,} | {meta['num_items']:,} | {meta['num_interactions']:,} | {wall:.1f} | {peak:,.0f} |"
            )
            shutil.rmtree(out)

    setup, rows, checks = [], [], []
    for n in args.sizes:
        here = args.work / str(n)
        shutil.rmtree(here, ignore_errors=True)
        here.mkdir(parents=True)
        length = write_ring(here / "ring.txt", n, args.users)
        data, run = here / "data", here / "sasrec"
        wall, peak, _ = timed([*distill, "prepare", str(here / "ring.txt"), "-o", str(data)])
        meta = json.loads((data / "meta.json").read_text())
        assert meta["num_items"] == n, meta["num_items"]
        train = [*distill, "student-train", "--data", str(data), "-o", str(run), "--hidden", "32",
                 "--max-len", "50", "--epochs", "1", "--loss", "sampled", "--negatives", "256",
                 "--device", "cpu"]  # fmt: skip
        t_wall, t_peak, _ = timed(train)
        setup.append(
            f"| {n:,} | {meta['num_interactions']:,} ({length} per user) | {wall:.1f} | {peak:,.0f} "
            f"| {t_wall:.1f} | {t_peak:,.0f} |"
        )
        scores = {}
        for label, option in MODES:
            block = [] if option is None else ["--item-block", option]
            evaluate = [*distill, "evaluate", "--run", str(run), "--data", str(data), "--device", "cpu",
                        *block]  # fmt: skip
            e_wall, e_peak, _ = timed(evaluate)
            e_block = item_block(256, n, None if option is None else int(option))
            out = here / f"scores-{option}"
            export = [*distill, "export-logits", "--run", str(run), "--data", str(data), "-o", str(out),
                      "--top-k", "100", "--device", "cpu", *block]  # fmt: skip
            x_wall, x_peak, output = timed(export)
            x_block = re.search(r"in blocks of ([\d,]+) items", output)
            scores[label] = exported(out, data)
            rows.append(
                f"| {n:,} | {label} | {'all' if e_block is None else f'{e_block:,}'} | {e_wall:.1f} "
                f"| {e_peak:,.0f} | {'all' if x_block is None else x_block[1]} | {x_wall:.1f} "
                f"| {x_peak:,.0f} | {scores[label][3] / scores[label][2]:.0f} |"
            )
            print(rows[-1], file=sys.stderr)
        differing, mrr = rank_check(run, data)
        setup[-1] += f" {mrr:.5f} |"
        for label, _ in MODES[1:]:
            gap = float(np.abs(scores[label][1] - scores["full"][1]).max())
            checks.append(
                f"| {n:,} | {label} | {args.users - differing[label]:,} of {args.users:,} identical "
                f"| {compare_rows(scores['full'], scores[label])} | {gap:.2g} |"
            )

    command = shlex.join(["python", "-m", "bench.catalogue_scale", *sys.argv[1:]])
    report = [
        "# Catalogue scale: evaluation and top-k export in blocks of items",
        "",
        f"- command: `{command}` (from the repository root; OMP_NUM_THREADS={THREADS} in every child)",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), Python "
        f"{platform.python_version()}, torch {torch.__version__}; load average {load[0]:.2f} before the "
        f"runs, {os.getloadavg()[2]:.2f} over the last 15 minutes after them (other engineers' jobs "
        f"share the machine); {(time.perf_counter() - started) / 60:.1f} min in all",
        f"- data: {args.users:,} users, each a stretch of a shuffled ring of the N items (see the script's "
        "docstring); SASRec d = 32, 2 blocks, max_len 50, one epoch of `--loss sampled --negatives 256`",
        "- each figure: one fresh `distill` process, wall time from spawn to exit and its peak RSS "
        "(whole process); `evaluate` ranks the validation and the test targets of every user (batches "
        "of 256); `export-logits --top-k 100` the last 4 training targets of every user (batches of 16 "
        "windows)",
        "",
        "Setup per size (not measured against each other):",
        "",
        "| items | interactions | prepare s | prepare MiB | student-train s | student-train MiB | test MRR |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *setup,
        "",
        "| items | path | evaluate: items per block | s | peak MiB | export: items per block | s | peak MiB "
        "| bytes per row |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Block runs against the full run (ranks: every user's test target, in this process; rows: the "
        "exported items and their stored scores):",
        "",
        "| items | path | test ranks | exported rows | largest stored-score difference |",
        "|---:|---|---|---|---:|",
        *checks,
    ]
    if synthetic:
        report += [
            "",
            f"`distill prepare --synthetic --num-users {args.users} --num-items N`:",
            "",
            "| --num-items | items in the dataset | interactions | wall s | peak MiB |",
            "|---:|---:|---:|---:|---:|",
            *synthetic,
        ]
    print("\n".join(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(report) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
