"""Does ``torch.compile`` pay for the student on this CPU? Eager SASRec against the compiled one.

Two copies of one SASRec (the same initial weights) train on the same ML-1M-shaped batches of a prepared
dataset, the two alternating batch by batch in one process so that a busy machine slows them alike. A
step is what ``distill student-train`` does: forward, the chunked full-softmax CE, backward, Adam. The
compiled copy is ``torch.compile(model)`` (inductor, default mode): its forward and backward graphs;
the CE pass is a custom autograd function either way. Random draws in the compiled graph fall back to
eager's generator (``fallback_random``), so both copies draw the same dropout masks. The first
compiled step (compilation) is timed apart; the others are compared, with the largest difference of
the two copies' losses.

    python -m bench.student_compile DATASET_DIR [--steps 8] [--threads 1] [--max-len 200]

Writes ``bench/results/student_compile.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import time
from pathlib import Path

import torch
import torch._inductor.config

from distill.data import Dataset
from student.config import SASRecConfig
from student.losses import ce_loss
from student.sasrec import SASRec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per copy, after the first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch._inductor.config.fallback_random = True  # eager's random draws in the compiled graph too
    torch.manual_seed(0)
    data = Dataset(args.data)
    eager = SASRec(SASRecConfig(num_items=data.num_items, hidden=64, max_len=args.max_len)).train()
    twin = copy.deepcopy(eager)
    copies = {"eager": (eager, eager), "compiled": (torch.compile(twin), twin)}
    optimizers = {
        n: torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.98)) for n, (_, m) in copies.items()
    }
    batches = data.train_batches(args.batch_size, args.max_len, generator=torch.Generator().manual_seed(0))
    batches = [next(batches) for _ in range(args.steps + 1)]

    def step(name: str, batch) -> tuple[float, float]:
        net, model = copies[name]
        torch.manual_seed(len(batch.inputs))  # the same dropout masks for both copies
        started = time.perf_counter()
        loss = ce_loss(model, net(batch.inputs), batch.targets)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()
        return time.perf_counter() - started, loss.item()

    first = {name: step(name, batches[0])[0] for name in copies}
    seconds, gap = dict.fromkeys(copies, 0.0), 0.0
    for batch in batches[1:]:
        losses = {}
        for name in copies:
            took, losses[name] = step(name, batch)
            seconds[name] += took
        gap = max(gap, abs(losses["eager"] - losses["compiled"]))
    after = os.getloadavg()
    per = {name: s / args.steps for name, s in seconds.items()}
    lines = [
        "# The student under torch.compile: eager against compiled, one process",
        "",
        f"- command: `python -m bench.student_compile {args.data} --steps {args.steps} "
        f"--threads {args.threads} --max-len {args.max_len} --batch-size {args.batch_size}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch threads, "
        f"torch {torch.__version__}; "
        f"load average {before[0]:.2f} before, {after[0]:.2f}/{after[2]:.2f} (1/15 min) after",
        f"- data: {data.num_users:,} users, {data.num_items:,} items; SASRec d=64, 2 blocks, dropout 0.2, "
        f"batches of {args.batch_size} x up to {args.max_len}",
        "",
        "| copy | first step s | mean step s (steps 2..) |",
        "|---|---:|---:|",
        *[f"| {name} | {first[name]:.1f} | {per[name]:.3f} |" for name in copies],
        "",
        f"Compiled against eager: **{per['eager'] / per['compiled']:.2f}x** the steps per second; largest "
        f"loss difference over the timed steps {gap:.2g} (the same weights and dropout masks at each step).",
        "",
    ]
    out = ROOT / "bench" / "results" / "student_compile.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
