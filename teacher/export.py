"""``distill export-logits``: run a trained teacher over the training prefixes, keep its top-k scores.

Each row is the teacher's prediction for one training target given the items before it (its last
``max_len``, as in training): the ``top_k`` highest-scoring items (padding excluded) and their raw
scores, descending. Rows are written in user order through :class:`distill.scores.ScoreWriter`, so
the score directory appears only when complete. Under ``torchrun`` each rank scores a contiguous
block of the prefixes and writes its own shards into the same directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distill.data import Dataset
from distill.dist import block, setup_device
from distill.scores import ScoreWriter, refuse_existing
from distill.training import log, progress, read_json
from teacher.config import ExportConfig
from teacher.model import load_teacher


@torch.no_grad()
def run(cfg: ExportConfig) -> dict:
    """Score every selected training prefix and write the score directory; returns its manifest."""
    data = Dataset(cfg.data)
    refuse_existing(Path(cfg.output), cfg.overwrite)  # before the minutes it takes to load a teacher
    device = setup_device(cfg.device)
    teacher = load_teacher(cfg.run, data, device)
    run_config = read_json(Path(cfg.run) / "config.json", "teacher run")
    k = data.num_items if cfg.top_k is None else min(cfg.top_k, data.num_items)
    samples = data.prefix_samples(cfg.positions, teacher.max_len)
    manifest = {
        "teacher": {"kind": run_config["kind"], "run": str(Path(cfg.run).resolve())},
        "dataset": data.identity(),
        "k": k,
        "positions": "all" if cfg.positions is None else f"last {cfg.positions} per user",
        "max_len": teacher.max_len,
    }
    log(f"scoring {len(samples.targets):,} training prefixes with {cfg.run}, keeping the top {k:,} items")
    mine = block(len(samples.targets))  # this rank's rows (all of them in a single process)
    with ScoreWriter(cfg.output, manifest, overwrite=cfg.overwrite) as writer:
        with progress(total=mine.stop - mine.start, desc="export") as bar:
            for i in range(mine.start, mine.stop, cfg.batch_size):
                rows = slice(i, min(i + cfg.batch_size, mine.stop))
                scores = teacher(torch.from_numpy(samples.histories[rows]))  # (B, N + 1)
                logits, items = scores[:, 1:].topk(k, dim=-1)  # (B, k) descending; column 0 is padding
                writer.write(
                    samples.users[rows],
                    samples.positions[rows],
                    (items + 1).cpu().numpy(),
                    logits.cpu().numpy(),
                )
                bar.update(len(items))
    return {**manifest, "rows": writer.rows}
