"""Training speed of SASRec with full-softmax CE versus BCE with one sampled negative.

Random sequences shaped like ML-1M (6040 users, 3416 items, lengths around a mean of 163, at most 200,
left-padded), batch 128, d = 64, 2 blocks, 1 head, dropout 0.2, Adam, on 2 CPU threads. Each timed
step is forward + loss + backward + optimizer step. The loss variants take turns step by step in one
process, so a busy machine slows them alike; the median step time gives the implied epoch time.

    python -m bench.sasrec_loss_speed [--steps 10] [--chunk-sizes 256 1024 4096] [--naive] [--threads 2]

Prints its table; ``bench/results/sasrec_loss_speed.md`` holds a run of it (chunk sizes 64 to 4096) with
the machine and its load.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from student.config import SASRecConfig
from student.losses import CPU_CHUNK_SIZE, bce_loss, ce_loss, sample_negatives
from student.sasrec import SASRec

USERS, ITEMS, MAX_LEN, BATCH = 6040, 3416, 200, 128

LossFn = Callable[[SASRec, torch.Tensor, torch.Tensor], torch.Tensor]


def ml1m_like(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(inputs, targets)`` for every user, both ``(USERS, MAX_LEN)``.

    Sequence lengths (items including the last target) are uniform on 126..200, mean 163: the shape of
    a batch, not a model of ML-1M's interactions.
    """
    lengths = torch.randint(126, MAX_LEN + 1, (USERS,), generator=generator)  # (U,)
    items = torch.randint(1, ITEMS + 1, (USERS, MAX_LEN + 1), generator=generator)  # (U, L + 1)
    items[torch.arange(MAX_LEN + 1) < (MAX_LEN + 1 - lengths).unsqueeze(1)] = 0
    inputs, targets = items[:, :-1].clone(), items[:, 1:].clone()
    targets[inputs == 0] = 0  # the first item is never a target: nothing comes before it
    return inputs, targets


def naive_ce(model: SASRec, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reference: autograd through F.cross_entropy on the whole (N, num_items) logit matrix."""
    mask = targets != 0
    return F.cross_entropy(h[mask] @ model.item_embeddings()[1:].T, targets[mask] - 1)


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 2 warm-up)")
    parser.add_argument(
        "--chunk-sizes", type=int, nargs="+", default=[CPU_CHUNK_SIZE], help="ce_loss chunk sizes to time"
    )
    parser.add_argument("--naive", action="store_true", help="also time autograd F.cross_entropy")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    inputs, targets = ml1m_like(generator)
    batches = [(inputs[i : i + BATCH], targets[i : i + BATCH]) for i in range(0, USERS, BATCH)]
    positions = int((targets != 0).sum()) / USERS

    variants: dict[str, LossFn] = {
        f"ce (chunk {c})": (lambda m, h, t, c=c: ce_loss(m, h, t, chunk_size=c)) for c in args.chunk_sizes
    }
    if args.naive:
        variants["ce (naive autograd)"] = naive_ce
    variants["bce (1 negative)"] = lambda m, h, t: bce_loss(m, h, t, sample_negatives(t, ITEMS, 1, generator))

    config = SASRecConfig(num_items=ITEMS, max_len=MAX_LEN, hidden=64, blocks=2, heads=1, dropout=0.2)
    runs = {}
    for name in variants:
        torch.manual_seed(0)
        model = SASRec(config).train()
        runs[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
    times: dict[str, list[float]] = {name: [] for name in variants}

    for step in range(args.steps + 2):
        batch_inputs, batch_targets = batches[step % len(batches)]
        for name, loss_fn in variants.items():
            model, optimizer = runs[name]
            started = time.perf_counter()
            loss = loss_fn(model, model(batch_inputs), batch_targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= 2:
                times[name].append(time.perf_counter() - started)

    steps_per_epoch = math.ceil(USERS / BATCH)
    after = os.getloadavg()
    print(
        f"ML-1M-like: {USERS} users, {ITEMS} items, {positions:.0f} target positions/user, batch {BATCH}, "
        f"{steps_per_epoch} steps/epoch, {torch.get_num_threads()} threads, {args.steps} timed steps; "
        f"load average {before[0]:.2f} before, {after[0]:.2f}/{after[2]:.2f} (1/15 min) after"
    )
    header = ("variant", "median s/step", "min s/step", "steps/s", "epoch s", "vs bce")
    print("{:<22} {:>13} {:>10} {:>8} {:>8} {:>7}".format(*header))
    bce_median = statistics.median(times["bce (1 negative)"])
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"{name:<22} {median:>13.3f} {min(samples):>10.3f} {1 / median:>8.2f} "
            f"{median * steps_per_epoch:>8.1f} {median / bce_median:>7.2f}"
        )


if __name__ == "__main__":
    main()
