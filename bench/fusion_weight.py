"""Is the fused teachers' level with SASRec a matter of how much teacher goes into the score? (issue 9)

A fused teacher scores ``teacher's dot product + SASRec's score``; both teachers' item vectors end in
SASRec's own ``d`` columns (``[h ; s] · [p(e) ; e]`` for MoE-LoRA, ``[h ; 1 ; s] · [W ; b ; e]`` for
E4SRec), so the two parts split exactly. For an unfused teacher, SASRec's part comes from the SASRec run
it reads. This bench scores each finished teacher run of ``bench/dense_teachers.py`` once on the
validation and test targets, then ranks ``SASRec + λ · teacher`` for a grid of λ:

- λ = 0 is the SASRec, λ = 1 the fused teacher as trained;
- for an unfused teacher, ``λ · teacher`` added after training is late fusion (stacking with one weight):
  the teacher learned every label itself, not the residual of a SASRec that has fitted the training
  windows, and λ is fitted on held-out targets.

λ is picked on validation NDCG@10 (all users) and the pick is tested with the per-user paired difference
against the SASRec and a bootstrap 95% interval. Test NDCG@10 of every λ is printed for the record, never
used to pick. Writes ``bench/results/fusion_weight_<backbone>.md``.

    python -m bench.fusion_weight [--runs bench/out/dense100k/SmolLM2-135M-Instruct.Q4_1]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from distill.data import Dataset
from distill.metrics import full_ranks, per_user
from pipeline.compare import paired_difference
from teacher.model import Teacher, load_teacher

ROOT = Path(__file__).resolve().parents[1]
GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


def parts(teacher: Teacher, data: Dataset, split: str, batch_size: int) -> dict[str, torch.Tensor]:
    """The teacher's own scores and its SASRec's after each user's ``split`` history, with what ranking
    needs (targets, seen items)."""
    sasrec = teacher.model.sasrec
    d = sasrec.config.hidden
    own, base, targets, seen = [], [], [], []
    with torch.no_grad():
        for batch in data.eval_batches(split, batch_size, teacher.context):
            queries, items = teacher.queries(batch.inputs)
            query = queries[:, -1]
            if teacher.model.fuse_sasrec:  # the last d columns are SASRec's state and item embeddings
                own.append(query[:, :-d] @ items[:, :-d].T)
                base.append(query[:, -d:] @ items[:, -d:].T)
            else:
                own.append(query @ items.T)
                base.append(sasrec(batch.inputs)[:, -1] @ sasrec.item_embeddings().T)
            targets.append(batch.targets)
            seen.append(batch.seen)
    width = max(s.shape[1] for s in seen)
    seen = [torch.nn.functional.pad(s, (0, width - s.shape[1])) for s in seen]  # 0 is padding
    return {
        "own": torch.cat(own),
        "base": torch.cat(base),
        "targets": torch.cat(targets),
        "seen": torch.cat(seen),
    }


def per_weight(run: Path, data: Dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user NDCG@10 of ``SASRec + λ · teacher`` for every λ of :data:`GRID`, on validation and test:
    two ``(len(GRID), users)`` arrays, cached under ``bench/out/fusion_weight/`` (scoring is the slow
    part: a rerun after more arms scores only the new runs)."""
    cache = ROOT / "bench" / "out" / "fusion_weight" / run.parent.name / f"{run.name}.npz"
    if cache.is_file() and cache.stat().st_mtime > (run / "metrics.json").stat().st_mtime:
        saved = np.load(cache)
        if tuple(saved["grid"]) == GRID:
            return saved["valid"], saved["test"]
    teacher = load_teacher(run, data, "cpu")
    splits = {split: parts(teacher, data, split, batch_size) for split in ("valid", "test")}
    valid, test = (np.stack([ndcg(splits[split], w) for w in GRID]) for split in ("valid", "test"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, grid=np.array(GRID), valid=valid, test=test)
    return valid, test


def ndcg(split: dict[str, torch.Tensor], weight: float) -> np.ndarray:
    """Per-user NDCG@10 of ``SASRec + weight · teacher``."""
    ranks = full_ranks(split["base"] + weight * split["own"], split["targets"], split["seen"])
    return per_user(ranks, "ndcg@10").numpy()


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="bench/out/dense100k/SmolLM2-135M-Instruct.Q4_1")
    parser.add_argument("--data", default="bench/out/dense100k/data")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs_dir = ROOT / args.runs
    data = Dataset(ROOT / args.data)
    runs = sorted(p for p in runs_dir.iterdir() if (p / "metrics.json").is_file() and "last" not in p.name)
    started = time.perf_counter()
    lines = [
        "# How much teacher goes into the score: SASRec + λ · teacher, λ picked on validation "
        f"({runs_dir.name})",
        "",
        f"- command: `{shlex.join(['python', '-m', 'bench.fusion_weight', *sys.argv[1:]])}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, 2 CPU cores",  # + the load, at the end
        f"- runs: every finished dense teacher run under `{args.runs}` (from `bench/dense_teachers.py`); "
        "λ = 0 is their SASRec, λ = 1 a fused teacher as trained; for an unfused teacher λ > 0 is late "
        "fusion. Valid and test over all users, full ranking, history masked.",
        "",
        "| run | valid NDCG@10 by λ (" + ", ".join(f"{w:g}" for w in GRID) + ") | picked λ | test NDCG@10 "
        "(SASRec) | ×SASRec | paired Δ [95% CI] | test NDCG@10 by λ, for the record |",
        "|---|---|---:|---|---:|---|---|",
    ]
    arms: dict[str, list[np.ndarray]] = {}  # arm (run name less its seed) -> per-seed paired differences
    for run in runs:
        valid, test = per_weight(run, data, args.batch_size)  # (len(GRID), users) NDCG@10 each
        valid_ndcg = valid.mean(1)
        picked = int(np.argmax(valid_ndcg))  # the first of equals: the smaller weight
        sasrec, chosen = test[0], test[picked]
        diff = paired_difference(chosen - sasrec, 2000, 0)
        arms.setdefault(run.name.rsplit("-s", 1)[0], []).append(chosen - sasrec)
        lines.append(
            f"| {run.name} | {' '.join(f'{v:.4f}' for v in valid_ndcg)} | {GRID[picked]:g} "
            f"| {chosen.mean():.4f} ({sasrec.mean():.4f}) | {chosen.mean() / sasrec.mean():.3f} "
            f"| {diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}] "
            f"| {' '.join(f'{v:.4f}' for v in test.mean(1))} |"
        )
        print(lines[-1], flush=True)
    lines += ["", "Over seeds (each user's difference averaged over the seeds, users resampled):", ""]
    for arm, diffs in arms.items():
        pooled = paired_difference(sum(diffs) / len(diffs), 2000, 0)
        lines.append(
            f"- {arm}, {len(diffs)} seed(s): paired Δ {pooled['mean']:+.4f} "
            f"[{pooled['low']:+.4f}, {pooled['high']:+.4f}]"
        )
    lines += ["", f"Whole benchmark: {(time.perf_counter() - started) / 60:.1f} min.", ""]
    after = os.getloadavg()
    date_line = next(i for i, line in enumerate(lines) if line.startswith("- date: "))
    lines[date_line] += (
        f"; load average {before[0]:.2f} before, {after[0]:.2f}/{after[2]:.2f} (1/15 min) after"
    )
    out = ROOT / "bench" / "results" / f"fusion_weight_{runs_dir.name.split('.')[0]}.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
