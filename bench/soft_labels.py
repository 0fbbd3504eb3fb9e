"""What a score directory's soft labels say beyond the label: the teacher's fit at the positions it teaches.

A teacher's soft labels at training positions are in-sample when the teacher trained on those
positions: a teacher that has fit them puts most of its mass on the very target the student already
sees as its label, and the rest of the row (the "dark knowledge") is small. This reads a score
directory and reports, over the rows a student reads (each user's last ``--max-len`` training
targets, or every row), how the teacher ranks each row's own target there, seen items masked as
evaluation masks them: HR@10 and NDCG@10 (from the stored top k; a target outside it counts as a
miss), the share of rows whose target is the teacher's first item, the teacher's mean probability of
the target (T = 1, from the stored scores and the tail; a target outside the top k counts 0, so with
k below the catalogue it is a lower bound) and the mass it puts elsewhere, and the entropy of the
rows over the top k and the tail as one bucket (at most log(k + 1); the full rows' entropy needs a
``--full`` directory). Set beside the same teacher's validation
NDCG@10 (``distill evaluate``), the gap between the two is how much of the teacher's ranking at
training positions is memory of them rather than knowledge it would pass on.

    python -m bench.soft_labels SCORES --data DATASET_DIR [--max-len 50] [--name NAME]

Writes ``bench/results/soft_labels_<NAME>.md`` (NAME defaults to the score directory's parent and
name), keeping a ``## Reading`` written by hand.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench import write_results
from bench.teachers_of_runs import rel
from distill.data import Dataset
from distill.scores import read_scores

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1 << 16  # rows read at a time


def fit_at_training_positions(scores_dir: Path, data: Dataset, max_len: int | None) -> dict[str, float]:
    """The teacher's ranking of each read row's own target (seen items masked) and its soft labels'
    shape; averages over rows."""
    scores = read_scores(scores_dir, data)
    _, ends = data.history_bounds("train")
    # the flat target indices a student reads: each user's last train_lengths training targets
    lengths = data.train_lengths(max_len if max_len is not None else len(data.items))
    flat = torch.from_numpy(np.concatenate([np.arange(e - n, e) for e, n in zip(ends, lengths, strict=True)]))
    rows = scores.row_of[flat]
    taught = rows >= 0
    flat, rows = flat[taught], rows[taught]
    user_of = torch.from_numpy(np.searchsorted(data.offsets, flat.numpy(), side="right") - 1)
    sums = dict.fromkeys(("hr10", "ndcg10", "top1", "p_target", "entropy"), 0.0)
    for lo in range(0, len(rows), CHUNK):
        chunk, where, users = rows[lo : lo + CHUNK], flat[lo : lo + CHUNK], user_of[lo : lo + CHUNK]
        items, logits = scores.fetch(chunk)  # (m, k)
        target = torch.from_numpy(data.items[where.numpy()])  # (m,)
        log_p = torch.log_softmax(logits.double(), dim=1)
        if scores.has_tail:  # the top k hold 1 - exp(tail) of the mass
            tail = scores.fetch_tail(chunk).double()
            log_p = log_p + torch.log1p(-tail.exp().clamp(max=1 - 1e-12))[:, None]
            bucket = tail.exp()
        else:
            bucket = torch.zeros(len(chunk), dtype=torch.float64)
        p = log_p.exp()
        entropy = -(p * log_p).nan_to_num().sum(1) - (bucket * bucket.clamp(min=1e-300).log())
        hit = items == target[:, None]
        p_target = (p * hit).sum(1)
        seen = _seen_before(data, users.numpy(), where.numpy(), items.numpy())
        rank = (~torch.from_numpy(seen) & ~hit).long().cumsum(1)  # unseen non-targets ahead of each slot
        found = hit.any(1)
        target_rank = torch.where(found, (rank * hit).sum(1), torch.full_like(found, 10**9, dtype=torch.long))
        sums["hr10"] += float((target_rank < 10).sum())
        sums["ndcg10"] += float(
            torch.where(target_rank < 10, 1 / torch.log2(target_rank.double() + 2), 0).sum()
        )
        sums["top1"] += float((target_rank == 0).sum())
        sums["p_target"] += float(p_target.sum())
        sums["entropy"] += float(entropy.sum())
    n = max(len(rows), 1)
    out = {key: value / n for key, value in sums.items()}
    out["rows"] = len(rows)
    out["k"] = scores.k
    out["mass_elsewhere"] = 1 - out["p_target"]
    return out


def _seen_before(data: Dataset, users: np.ndarray, where: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``(m, k)``: whether each row's item appears in its user's sequence before the row's target."""
    seen = np.zeros(items.shape, dtype=bool)
    for u in np.unique(users):
        at = np.nonzero(users == u)[0]
        sequence = data.items[data.offsets[u] : data.offsets[u + 1]]
        first = np.full(data.num_items + 1, np.iinfo(np.int64).max)
        np.minimum.at(first, sequence, np.arange(len(sequence)))
        seen[at] = first[items[at]] < (where[at] - data.offsets[u])[:, None]
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", help="a score directory (export-logits --all-positions)")
    parser.add_argument("--data", required=True, help="the prepared dataset it scores")
    parser.add_argument("--max-len", type=int, help="only each user's last N training targets (a student's)")
    parser.add_argument("--name", help="results file suffix")
    args = parser.parse_args()
    started = time.perf_counter()
    data = Dataset(args.data)
    fit = fit_at_training_positions(Path(args.scores), data, args.max_len)
    name = args.name or f"{Path(args.scores).resolve().parent.name}_{Path(args.scores).name}"
    reads = "every row" if args.max_len is None else f"each user's last {args.max_len} training targets"
    scores_dir, data_dir = (rel(Path(a).resolve()) for a in (args.scores, args.data))
    command = f"python -m bench.soft_labels {scores_dir} --data {data_dir}"
    command += "" if args.max_len is None else f" --max-len {args.max_len}"
    command += "" if args.name is None else f" --name {args.name}"
    top_k = fit["k"] < data.num_items
    bound, above = (" (at least)", " (at most)") if top_k else ("", "")  # a target outside the top k: 0
    ceiling = math.log(fit["k"] + 1 if top_k else fit["k"])  # k items and the bucket
    lines = [
        f"# Soft labels at the positions they teach: {scores_dir}",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
        f"{platform.machine()}, torch {torch.__version__}; {time.perf_counter() - started:.0f} s at a load "
        f"average of {os.getloadavg()[0]:.2f} (its time is not a benchmark figure)",
        f"- rows: {fit['rows']:,} ({reads}), top {fit['k']} each; the target's rank with the user's "
        "earlier items masked, as evaluation masks seen items",
        "",
        "| HR@10 | NDCG@10 | target first | p(target) | mass elsewhere | entropy, top k + bucket (nats) |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {fit['hr10']:.4f} | {fit['ndcg10']:.4f} | {fit['top1']:.4f} | {fit['p_target']:.4f}{bound} "
        f"| {fit['mass_elsewhere']:.4f}{above} | {fit['entropy']:.3f} (at most {ceiling:.2f}) |",
    ]
    print(write_results(ROOT / "bench" / "results" / f"soft_labels_{name}.md", lines))


if __name__ == "__main__":
    main()
