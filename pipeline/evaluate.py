"""``distill evaluate``: full-ranking metrics of a saved run, whatever model it holds (on a large
catalogue a block of items at a time: :func:`distill.metrics.block_ranks`, the same metrics)."""

from __future__ import annotations

from distill.data import Dataset
from pipeline.config import EvaluateConfig
from pipeline.runs import open_runs


def run(cfg: EvaluateConfig) -> dict[str, dict[str, float]]:
    """Metrics of ``cfg.runs`` on the requested splits: ``{split: {metric: value}}``."""
    data = Dataset(cfg.data)
    scorer = open_runs(cfg.runs, data, cfg.device, cfg.weights, cfg.batch_size)
    splits = ["valid", "test"] if cfg.split == "both" else [cfg.split]
    return {split: scorer.evaluate(data, split, cfg.batch_size, block=cfg.item_block) for split in splits}
