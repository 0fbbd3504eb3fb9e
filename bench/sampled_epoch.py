"""Cost of a student epoch as the catalogue grows: the sampled softmax (its item table updated by rows or
densely) against the full-catalogue CE at 10^4, 10^5 and 10^6 items, the same users and the same
interactions at every size.

The interactions are ``prepare --synthetic``'s for ``--users`` users over 10^4 items (planted
clusters and successors, about 20 items a user); at a catalogue of N items every item id is mapped to
a random distinct id in ``1..N`` and the items that no user read stay in the catalogue (cold items, as
in a real catalogue: the model still holds and scores them). So the sizes differ in the catalogue only:
the sequences, batches and positions are the same, and any growth in an epoch's cost is the
catalogue's.

A ``## Reading`` section written by hand at the end of the results file is kept when it is regenerated.
Each training is a fresh ``distill student-train`` process (``OMP_NUM_THREADS`` = the cores); an epoch's
time is the trainer's own ``seconds`` (the pass over the batches: forward, loss, backward, optimizer
step; no evaluation, no start-up), its memory GNU time's peak RSS of the whole process.

    python -m bench.sampled_epoch [--sizes 10000 100000 1000000] [--users 2000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from bench import write_results
from bench.catalogue_scale import THREADS, distill_command, timed
from distill import prepare, synthetic
from distill.config import PrepareConfig

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "out" / "sampled_epoch"
BASE_ITEMS = 10_000


def write_dataset(out: Path, num_items: int, users: int, seed: int = 0) -> dict:
    """The synthetic interactions of ``users`` users over 10^4 items, their item ids spread over a
    catalogue of ``num_items`` (every id of ``1..num_items`` is an item, read or not). Returns the meta."""
    user_ids, items, _ = synthetic.generate(users, BASE_ITEMS, seed)
    ids = np.random.default_rng(seed).choice(num_items, size=BASE_ITEMS, replace=False) + 1
    spread = np.concatenate([[0], ids])  # item i -> spread[i]
    items = spread[items]  # the same sequences, ids anywhere in the catalogue
    frame = pl.DataFrame({"user": user_ids, "item": items})
    sequences = (
        frame.group_by("user", maintain_order=True)
        .agg(pl.col("item").cast(pl.Int32).alias("items"))
        .select(
            (pl.col("user") - 1).cast(pl.Int32).alias("user"),
            pl.col("user").cast(pl.String).alias("raw_user"),
            "items",
        )
    )
    catalogue = pl.DataFrame(
        {
            "item": np.arange(1, num_items + 1, dtype=np.int32),
            "raw_item": np.arange(1, num_items + 1).astype(str),
            "title": pl.Series([None] * num_items, dtype=pl.String),
        }
    )
    cfg = PrepareConfig(output=str(out), synthetic=True, num_users=users, num_items=num_items, seed=seed)
    source = {
        "synthetic": {"num_users": users, "num_items": BASE_ITEMS, "seed": seed, "spread_over": num_items}
    }
    return prepare.write(out, cfg, sequences, catalogue, [source])


def epochs_of(run: Path) -> list[float]:
    """Each epoch's training seconds, as the run recorded them."""
    history = json.loads((run / "metrics.json").read_text())["history"]
    return [record["seconds"] for record in history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3, help="sampled epochs per size (the first warms up)")
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--full-up-to", type=int, default=1_000_000, help="largest catalogue for full CE")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "sampled_epoch.md")
    args = parser.parse_args()
    distill = distill_command()
    args.work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    started = time.perf_counter()

    rows, commands = [], []
    for n in args.sizes:
        data = args.work / f"data-{n}"
        shutil.rmtree(data, ignore_errors=True)
        meta = write_dataset(data, n, args.users)
        sampled = ["--loss", "sampled", "--negatives", str(args.negatives)]
        arms = [
            ("sampled, rows", [*sampled, "--item-updates", "rows"], args.epochs),
            ("sampled, dense", [*sampled, "--item-updates", "dense"], args.epochs),
        ]
        if n <= args.full_up_to:
            arms.append(("full CE", ["--loss", "ce"], 1))
        for label, loss, epochs in arms:
            run = args.work / f"run-{n}-{label.replace(', ', '-').replace(' ', '-')}"
            shutil.rmtree(run, ignore_errors=True)
            cmd = [*distill, "student-train", "--data", str(data), "-o", str(run), "--max-len", "50",
                   "--epochs", str(epochs), "--eval-every", str(epochs), "--device", "cpu",
                   *loss]  # fmt: skip
            wall, peak, _ = timed(cmd)
            seconds = epochs_of(run)
            steady = seconds[1:] or seconds  # the first epoch pays for warming up
            rows.append(
                f"| {n:,} | {meta['num_interactions']:,} | {label} | {len(seconds)} "
                f"| {' / '.join(f'{s:.2f}' for s in seconds)} | {min(steady):.2f} | {peak:,.0f} "
                f"| {wall:.1f} |"
            )
            commands.append(shlex.join(["distill", *cmd[len(distill) :]]).replace(str(ROOT) + "/", ""))
            print(rows[-1], file=sys.stderr)
            shutil.rmtree(run)
        shutil.rmtree(data)

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    after = os.getloadavg()
    lines = [
        "# Student epoch cost as the catalogue grows: sampled softmax against full CE",
        "",
        f"- command: `{shlex.join(['python', '-m', 'bench.sampled_epoch', *sys.argv[1:]])}` "
        "(from the repository root)",
        f"- date: {now}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}; OMP_NUM_THREADS={THREADS} in every child; load average "
        f"{load[0]:.2f} before, {after[2]:.2f} over the last 15 minutes after; "
        f"{(time.perf_counter() - started) / 60:.1f} min in all",
        f"- data: {args.users:,} users of `prepare --synthetic` over {BASE_ITEMS:,} items, their ids spread "
        "over the catalogue (cold items stay in it); SASRec defaults (d = 64, 2 blocks, batch 128), "
        f"--max-len 50; sampled: `--loss sampled --negatives {args.negatives}` (uniform draws), its item "
        "table updated by rows (`--item-updates rows`: Adam on the rows a batch reads, the steps a row "
        "missed replayed before it is read and at the epoch's end) "
        "or densely (`--item-updates dense`, the default: Adam on every row)",
        "- epoch s: the trainer's own time for each pass over the batches (no evaluation, no start-up); "
        "steady: the fastest after the first; peak MiB: GNU time's maximum RSS of the whole process",
        "",
        "| items | interactions | loss | epochs | epoch s | steady epoch s | peak MiB | process s |",
        "|---:|---:|---|---:|---|---:|---:|---:|",
        *rows,
        "",
        "Commands (per size):",
        "",
        *[f"    {c}" for c in commands],
        "",
    ]
    write_results(args.output, lines)
    print(args.output)


if __name__ == "__main__":
    main()
