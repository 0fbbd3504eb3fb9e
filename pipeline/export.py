"""``distill export-logits``: run a scorer over the training sequences, keep its top-k scores per position.

Any scorer is a teacher: either LLM teacher, or a ``student-train`` run (SASRec: self-distillation, or a
wide SASRec into a narrow one). A row is the scorer's prediction for one training target given the
items before it: the ``top_k`` highest-scoring items (padding excluded) and their scores,
descending, with the log of the probability the full row leaves outside them (the tail; see
:mod:`distill.scores`).

Dense by default: every scorer scores all positions of a window in one pass (SASRec at every column
of its input, a teacher at every history slot), and windows tile each training sequence from its end,
so a user's rows cost one forward per window. ``per_prefix`` instead runs one forward per row (the
history up to the target, scored at its end): the anchors' way, kept to measure against.

With ``top_k`` on a large catalogue a batch's scores are never held whole: each batch is scored a block
of items at a time, only at the positions that get a row, and a running top-k is kept
(:func:`distill.scoring.top_k_in_blocks`): memory ``positions x (k + block)`` instead of
``windows x width x items`` (:func:`export_block` says when). The rows are the same either way.

Rows are written in user order through :class:`distill.scores.ScoreWriter`, so the score directory
appears only when complete. Under ``torchrun`` each rank scores a contiguous block of the windows and
writes its own shards into the same directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.data import Dataset
from distill.dist import block, setup_device
from distill.io import log, progress, record_path
from distill.scores import ScoreWriter, refuse_existing
from distill.scoring import BLOCK_VALUES, Scorer, top_k_in_blocks
from pipeline.config import ExportConfig
from pipeline.runs import describe, open_runs


@torch.no_grad()
def run(cfg: ExportConfig) -> dict:
    """Score the selected training positions and write the score directory; returns its manifest."""
    data = Dataset(cfg.data)
    refuse_existing(Path(cfg.output), cfg.overwrite)  # before the minutes it takes to load a teacher
    device = setup_device(cfg.device)
    scorer = open_runs(cfg.runs, data, device, cfg.weights)
    k = data.num_items if cfg.top_k is None else min(cfg.top_k, data.num_items)
    windows = data.train_windows(
        scorer.width, scorer.context, last=cfg.positions, stride=1 if cfg.per_prefix else None
    )
    manifest = {
        "teacher": describe(scorer.source, lambda path: record_path(cfg.output, path)),
        "dataset": data.identity(cfg.output),
        "k": k,
        "positions": "all" if cfg.positions is None else f"last {cfg.positions} per user",
        "scoring": "per-prefix" if cfg.per_prefix else "dense",
        "width": scorer.width,
    }
    rows = int((windows.position >= 0).sum())
    size = export_block(cfg, scorer, data.num_items)
    log(
        f"scoring {rows:,} training positions in {len(windows.users):,} windows with {', '.join(cfg.runs)}, "
        f"keeping the top {k:,} items"
        + ("" if size is None else f" (the catalogue in blocks of {size:,} items)")
    )
    mine = block(len(windows.users))  # this rank's windows (all of them in a single process)
    with ScoreWriter(cfg.output, manifest, overwrite=cfg.overwrite) as writer:
        with progress(total=mine.stop - mine.start, desc="export") as bar:
            for i in range(mine.start, mine.stop, cfg.batch_size):
                batch = slice(i, min(i + cfg.batch_size, mine.stop))
                scored = torch.from_numpy(windows.position[batch] >= 0)  # (B, w)
                users = torch.from_numpy(windows.users[batch])
                history = torch.from_numpy(windows.histories[batch])
                if size is None:
                    scores = scorer.dense(history, users)  # (B, w, N + 1)
                    rows = scores[scored.to(scores.device)][:, 1:]  # (M, N): column 0 is padding
                    logits, items = rows.topk(k, dim=-1)  # (M, k) descending
                    items = items + 1
                    normalisers = rows.float().logsumexp(dim=-1)  # (M,): the tails (distill.scores)
                else:
                    opened = scorer.blocks.dense(history, users, scored, size)  # the M scored positions
                    # (M, k) descending and the (M,) normalisers, in one walk over the catalogue
                    logits, items, normalisers = top_k_in_blocks(opened, data.num_items, k, size)
                mask = scored.numpy()
                writer.write(
                    np.broadcast_to(windows.users[batch][:, None], mask.shape)[mask],
                    windows.position[batch][mask],
                    items.cpu().numpy(),
                    logits.cpu().numpy(),
                    normalisers.cpu().numpy(),
                )
                bar.update(batch.stop - batch.start)
    return {**manifest, "rows": writer.rows}


def export_block(cfg: ExportConfig, scorer: Scorer, num_items: int) -> int | None:
    """Items per block for this export, or None for the whole catalogue at once (the full path).

    ``--full`` is the full path by definition (it keeps every score). Otherwise ``--item-block`` decides
    when given (0: the full path), else :meth:`~distill.scoring.Scorer.item_block` on what the full path
    would hold, ``batch_size x width x (N + 1)`` scores; the blocks are then sized for what the block
    path holds, the scored positions only (at most ``min(width, positions)`` per window, one per
    prefix), to :data:`~distill.scoring.BLOCK_VALUES` scores at a time.
    """
    full_rows = cfg.batch_size * scorer.width
    if cfg.top_k is None or scorer.item_block(full_rows, num_items, cfg.item_block) is None:
        return None
    if cfg.item_block is not None:
        return cfg.item_block
    per_window = 1 if cfg.per_prefix else min(scorer.width, cfg.positions or scorer.width)
    return min(num_items, max(1, BLOCK_VALUES // (cfg.batch_size * per_window)))
