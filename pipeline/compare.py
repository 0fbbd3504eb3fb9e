"""``distill compare``: runs side by side on one split, and whether a difference is more than noise.

Every run ranks the same users' held-out targets (full ranking, history masked). For each run after
the first, the per-user difference of the metric against the first run is averaged, and the users are
resampled with replacement (a paired bootstrap, seeded) to give a 95% percentile interval of that mean:
an interval that contains 0 means the runs are not told apart on this split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.data import Dataset
from distill.errors import DistillError
from distill.metrics import MASKING_NOTE, RankingMetrics, format_table, per_user
from pipeline.config import CompareConfig
from pipeline.runs import group_runs, open_runs

BLOCK = 500  # bootstrap resamples drawn at a time: BLOCK x users indices in memory


def run(cfg: CompareConfig) -> dict:
    """``{"metrics": {run: {metric: value}}, "paired": {run: {"mean", "low", "high", "wins", "losses"}}}``,
    the paired entries against ``cfg.runs[0]``."""
    data = Dataset(cfg.data)
    weights = _weights(cfg)
    metrics, values, users = {}, {}, None
    for run_dir in cfg.runs:
        scorer = open_runs(run_dir.split(","), data, cfg.device, weights[run_dir], cfg.batch_size)
        who, ranks = scorer.ranks(data, cfg.split, cfg.batch_size, cfg.item_block)
        summary = RankingMetrics()
        summary.update(ranks)  # the metrics from the same ranks: each run scores once
        metrics[run_dir] = summary.compute()
        if users is not None and not np.array_equal(who.numpy(), users):
            raise DistillError(f"{run_dir} ranked other users than {cfg.runs[0]}")
        users = who.numpy()
        values[run_dir] = per_user(ranks, cfg.metric).numpy()
    base = values[cfg.runs[0]]
    paired = {
        run_dir: paired_difference(values[run_dir] - base, cfg.samples, cfg.seed) for run_dir in cfg.runs[1:]
    }
    return {"metrics": metrics, "paired": paired}


def _weights(cfg: CompareConfig) -> dict[str, str]:
    """Each compared set's ``--weights``, checked before any is scored: ``fit`` weighs the sets that have
    several members (a single run or a cross-fit alone is compared as it is); a set given twice (the
    same runs, in any order or spelling) is refused, its results would overwrite the other's."""
    seen, weights = {}, {}
    for run_dir in cfg.runs:
        runs = run_dir.split(",")
        key = frozenset(Path(r).resolve() if r.strip() else r for r in runs)  # open_runs names an empty one
        if key in seen:
            same = "is given twice" if seen[key] == run_dir else f"and {seen[key]} are the same runs"
            raise DistillError(f"{run_dir} {same}: compare each set once")
        seen[key] = run_dir
        singles, folds = group_runs(runs) if all(r.strip() for r in runs) else (runs, {})
        weights[run_dir] = cfg.weights if len(singles) + len(folds) > 1 else "equal"
    if cfg.weights == "fit" and "fit" not in weights.values():
        raise DistillError("--weights fit weighs the members of an ensemble; no compared set has several")
    return weights


def paired_difference(diffs: np.ndarray, samples: int, seed: int) -> dict[str, float]:
    """Mean of per-user differences ``(U,)`` with a bootstrap 95% percentile interval, and how many
    users gained or lost."""
    rng = np.random.default_rng(seed)
    n = len(diffs)
    if n == 0:
        raise DistillError("no users to compare")
    means = np.empty(samples)
    for start in range(0, samples, BLOCK):
        count = min(BLOCK, samples - start)
        means[start : start + count] = diffs[rng.integers(0, n, (count, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "mean": float(diffs.mean()),
        "low": float(low),
        "high": float(high),
        "wins": int((diffs > 0).sum()),
        "losses": int((diffs < 0).sum()),
        "users": n,
    }


def report(cfg: CompareConfig, results: dict) -> str:
    """The text ``distill compare`` prints: the metric table, then one paired line per run."""
    names = {run_dir: f"[{i}] {run_dir}" for i, run_dir in enumerate(cfg.runs)}
    table = format_table({names[r]: m for r, m in results["metrics"].items()}, label="run")
    lines = [f"{cfg.split} metrics ({MASKING_NOTE}):", table, ""]
    lines.append(
        f"paired per-user {cfg.metric} difference vs [0], mean and bootstrap 95% interval "
        f"({cfg.samples:,} resamples, seed {cfg.seed}):"
    )
    for run_dir, d in results["paired"].items():
        verdict = "contains 0: not told apart" if d["low"] <= 0 <= d["high"] else "excludes 0"
        lines.append(
            f"{names[run_dir]}: {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] ({verdict}); "
            f"{d['wins']} users better, {d['losses']} worse of {d['users']}"
        )
    return "\n".join(lines)
