"""Dropout masks from numpy's SFC64 against torch's ``random_``: the mask alone and a whole SASRec step.

``student.sasrec.dropout`` takes its random bits from numpy's SFC64 generator, seeded by one draw from
torch's generator; before, it filled them with torch's own ``random_``. This times both in one process:
the bits of one attention-weight mask (the largest of a step), then whole training steps (forward, CE,
backward, Adam) of two identical SASRecs on the same batches of a prepared dataset, one per mask source,
alternating step by step so that a busy machine slows both alike.

    python -m bench.dropout_masks DATASET_DIR [--batches 24] [--threads 2] [--max-len 200]

Writes ``bench/results/dropout_masks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import student.sasrec
from distill.data import Dataset
from student.config import SASRecConfig
from student.losses import ce_loss
from student.sasrec import SASRec

ROOT = Path(__file__).resolve().parents[1]
NUMPY_DROPOUT = student.sasrec.dropout


def torch_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """The previous :func:`student.sasrec.dropout`: the same masks' arithmetic, torch's ``random_`` bits."""
    if not training or p == 0.0:
        return x
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    lanes = words.view(torch.int16)[:n].view(x.shape)
    mask = (lanes >= round(p * 65536) - 32768).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * mask


def bits_ms(source: str, n: int, repeats: int = 30) -> float:
    """Median milliseconds to draw the random words of an ``n``-element mask."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        if source == "torch":
            torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        else:
            seed = int(torch.randint(2**62, (), dtype=torch.int64))
            torch.from_numpy(np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int64))
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    data = Dataset(args.data)
    n = args.batch_size * args.max_len * args.max_len  # one block's attention weights, one head
    bits = {source: bits_ms(source, n) for source in ("torch", "numpy")}

    cfg = SASRecConfig(num_items=data.num_items, max_len=args.max_len, hidden=64, blocks=2, heads=1)
    sources = {"torch": torch_dropout, "numpy": NUMPY_DROPOUT}
    models, optimizers, seconds = {}, {}, {name: [] for name in sources}
    for name in sources:
        torch.manual_seed(0)
        models[name] = SASRec(cfg).train()
        optimizers[name] = torch.optim.Adam(models[name].parameters(), lr=1e-3, betas=(0.9, 0.98))
    batches = list(
        data.train_batches(args.batch_size, args.max_len, generator=torch.Generator().manual_seed(0))
    )
    batches = batches[: args.batches + 2]
    for i, batch in enumerate(batches):
        for name, fn in sources.items():
            student.sasrec.dropout = fn
            started = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            ce_loss(models[name], models[name](batch.inputs), batch.targets).backward()
            optimizers[name].step()
            if i >= 2:  # the first two steps warm the allocator and the kernels
                seconds[name].append(time.perf_counter() - started)
    student.sasrec.dropout = NUMPY_DROPOUT
    load_after = os.getloadavg()
    step = {name: statistics.median(s) for name, s in seconds.items()}
    command = f"python -m bench.dropout_masks {os.path.relpath(args.data, ROOT)} --batches {args.batches} " \
        f"--threads {args.threads} --max-len {args.max_len}"  # fmt: skip
    lines = [
        "# Dropout masks: numpy's SFC64 bits against torch's `random_`",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, {args.threads} torch threads, "
        f"torch {torch.__version__}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} "
        f"(1 min) / {load_after[2]:.2f} (15 min) after",
        f"- data: {args.data} ({data.num_users:,} users, {data.num_items:,} items); d=64, 2 blocks, 1 head, "
        f"dropout 0.2, batch {args.batch_size}, max_len {args.max_len}; {len(seconds['numpy'])} steps each, "
        "alternating",
        "",
        "| mask bits from | one attention mask's bits, ms | whole training step, ms (median) |",
        "|---|---:|---:|",
        *(f"| {name} | {bits[name]:.2f} | {1000 * step[name]:.0f} |" for name in sources),
        "",
        f"Bits {bits['torch'] / bits['numpy']:.2f}x faster; the step {step['torch'] / step['numpy']:.3f}x "
        f"({1000 * (step['torch'] - step['numpy']):+.0f} ms). Mask of {n:,} elements "
        f"({args.batch_size} x {args.max_len} x {args.max_len}).",
    ]
    out = ROOT / "bench" / "results" / "dropout_masks.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
