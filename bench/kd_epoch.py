"""One distilled training epoch with soft labels at every position versus a plain epoch, in one process.

The arms see the same batches of a prepared dataset, the same architecture and optimizer, and
alternate batch by batch so that a busy machine slows them alike: plain full-softmax CE, and CE + KD
(``kl`` at T = 1, where the KD shares the CE's softmax, and at T = 2, where it needs one more) with the
teacher's top-k at every training position. Each step is forward + loss + backward + Adam step, as
``distill student-train`` does it (the teacher's rows are fetched from the memory-mapped score table
inside the step).

The score directory is written here with ``ScoreWriter``: for timing only, its rows are random (k
distinct items per row and descending random logits), not a trained teacher's. The report also gives
the resident memory of reading it (``read_scores``) and of the epoch.

    python -m bench.kd_epoch DATASET_DIR [--k 100] [--batch-size 128] [--max-len 200] [--hidden 64]
        [--threads 2] [--batches N]

Writes ``bench/results/kd_epoch.md``, keeping the ``## Reading`` written by hand at its end (and the score
directory under ``bench/out/``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from bench import write_results
from distill.data import Dataset
from distill.scores import ScoreWriter, read_scores
from student.config import SASRecConfig
from student.losses import BatchScores, ce_kd_loss, ce_loss
from student.sasrec import SASRec

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"plain": None, "kl T=1": 1.0, "kl T=2": 2.0}
# With --precision bfloat16, the plain and T = 1 arms again as student-train --precision bfloat16 runs them
MIXED = {"plain, bfloat16": None, "kl T=1, bfloat16": 1.0}


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=0, help="stop after N batches (0: the whole epoch)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: also time the plain and T = 1 arms in mixed precision")  # fmt: skip
    args = parser.parse_args()
    arms = ARMS | (MIXED if args.precision == "bfloat16" else {})
    torch.set_num_threads(args.threads)
    data = Dataset(args.data)
    k = min(args.k, data.num_items)
    scores_dir = ROOT / "bench" / "out" / f"kd_epoch_scores_k{k}"
    started = time.perf_counter()
    rows = write_random_scores(data, scores_dir, k)
    write_seconds = time.perf_counter() - started
    rss_before = rss_mib()
    started = time.perf_counter()
    teacher = read_scores(scores_dir, data)
    read_seconds = time.perf_counter() - started
    rss_read = rss_mib()

    cfg = SASRecConfig(num_items=data.num_items, max_len=args.max_len, hidden=args.hidden, blocks=2, heads=1)
    models, optimizers = {}, {}
    seconds = dict.fromkeys(arms, 0.0)
    for name in arms:
        torch.manual_seed(0)
        models[name] = SASRec(cfg).train()
        optimizers[name] = torch.optim.Adam(models[name].parameters(), lr=1e-3, betas=(0.9, 0.98))
    shuffle = torch.Generator().manual_seed(0)
    batches = list(data.train_batches(args.batch_size, args.max_len, generator=shuffle))
    if args.batches:
        batches = batches[: args.batches]
    positions = sum(int((b.targets != 0).sum()) for b in batches)
    for batch in batches:
        for name, temperature in arms.items():
            model, optimizer = models[name], optimizers[name]
            mixed = name in MIXED
            dtype = torch.bfloat16 if mixed else torch.float32
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=mixed):
                h = model(batch.inputs)
            if temperature is None:
                loss = ce_loss(model, h, batch.targets, matmul_dtype=dtype)
            else:
                found = teacher.lookup(batch.index)[batch.targets != 0]
                soft = BatchScores(found, teacher.fetch, "kl", 0.5, temperature)
                loss, _ = ce_kd_loss(model, h, batch.targets, soft, matmul_dtype=dtype)
            loss.backward()
            optimizer.step()
            seconds[name] += time.perf_counter() - started
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_end = rss_mib()
    full_bytes = rows * data.num_items * (2 + 4)
    lines = [
        "# A distilled epoch (soft labels at every position) vs a plain epoch",
        "",
        f"- command: `python -m bench.kd_epoch {args.data} --k {args.k} --batch-size {args.batch_size} "
        f"--max-len {args.max_len} --hidden {args.hidden} --threads {args.threads} --batches {args.batches}"
        + (" --precision bfloat16`" if args.precision == "bfloat16" else "`"),
        f"- date: {datetime.date.today()}; {platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}; load average {before[0]:.2f} before, {os.getloadavg()[0]:.1f} at the "
        "end (the arms alternate batch by batch, so the ratios hold better than the seconds on a busy "
        "machine)",
        f"- data: {data.num_users:,} users, {data.num_items:,} items; {len(batches)} batches, "
        f"{positions:,} non-pad training positions; d={args.hidden}, 2 blocks, 1 head, dropout 0.2",
        f"- teacher: RANDOM top-{k} rows at all {rows:,} training positions (for timing only), written with "
        f"ScoreWriter in {write_seconds:.0f} s (0 s: an earlier run's directory, reused); KD = kl, alpha 0.5",
        "",
        "| arm | epoch seconds | vs plain |",
        "|---|---:|---:|",
        *(f"| {name} | {seconds[name]:.1f} | {seconds[name] / seconds['plain']:.2f} |" for name in arms),
        "",
        f"Memory: `read_scores` took {read_seconds:.1f} s; the process's own (anonymous) resident memory "
        f"went from {rss_before[0]:.0f} to {rss_read[0]:.0f} MiB, its mapped file pages from "
        f"{rss_before[1]:.0f} to {rss_read[1]:.0f} MiB: the tables live in memory-mapped temporary files, "
        f"{rows:,} x {k} x (2 + 4) bytes = {rows * k * 6 / 2**20:.0f} MiB of int16 items and float32 "
        f"logits, pages the kernel can evict. After the epochs: {rss_end[0]:.0f} MiB anonymous, "
        f"{rss_end[1]:.0f} MiB mapped; peak resident (both kinds) {rss_peak:.0f} MiB. A full-catalogue "
        f"directory of this dataset ({data.num_items:,} items per row) maps {full_bytes / 2**30:.1f} GiB "
        "the same way: disk, with resident memory bounded by the page cache; each step reads only its "
        "chunk's rows.",
        "",
    ]
    print(write_results(ROOT / "bench" / "results" / "kd_epoch.md", lines))


def write_random_scores(data: Dataset, path: Path, k: int, chunk: int = 100_000) -> int:
    """Random top-``k`` rows at every training position; returns the row count (kept if already there)."""
    samples = data.prefix_samples(None, 1)
    rows = len(samples.targets)
    if (path / "manifest.json").is_file():
        return rows
    rng = np.random.default_rng(0)
    manifest = {"teacher": {"kind": "random"}, "dataset": data.identity(path), "k": k, "positions": "all"}
    with ScoreWriter(path, manifest, overwrite=True) as writer:
        for i in range(0, rows, chunk):
            n = min(chunk, rows - i)
            # k distinct items per row: a random start and step through the catalogue.
            starts = rng.integers(0, data.num_items, (n, 1))
            items = (starts + np.arange(k)[None, :]) % data.num_items + 1
            logits = -np.sort(-3 * rng.standard_normal((n, k)), axis=1).astype(np.float32)
            writer.write(samples.users[i : i + n], samples.position[i : i + n], items, logits)
    return rows


def rss_mib() -> tuple[float, float]:
    """This process's resident memory, MiB: anonymous (its own) and file-backed (mapped pages the kernel
    may evict, such as the score tables)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return tuple(int(fields[key].split()[0]) / 1024 for key in ("RssAnon", "RssFile"))


if __name__ == "__main__":
    main()
