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

    python bench/fusion_weight.py [--runs bench/out/dense100k/SmolLM2-135M-Instruct.Q4_1]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.data import Dataset  # noqa: E402
from distill.metrics import full_ranks, per_user  # noqa: E402
from pipeline.compare import paired_difference  # noqa: E402
from teacher.model import Teacher, load_teacher  # noqa: E402

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


def ndcg(split: dict[str, torch.Tensor], weight: float) -> np.ndarray:
    """Per-user NDCG@10 of ``SASRec + weight · teacher``."""
    ranks = full_ranks(split["base"] + weight * split["own"], split["targets"], split["seen"])
    return per_user(ranks, "ndcg@10").numpy()


def main() -> None:
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
        f"- command: `{shlex.join(['python', 'bench/fusion_weight.py', *sys.argv[1:]])}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, 2 CPU cores",
        f"- runs: every finished dense teacher run under `{args.runs}` (from `bench/dense_teachers.py`); "
        "λ = 0 is their SASRec, λ = 1 a fused teacher as trained; for an unfused teacher λ > 0 is late "
        "fusion. Valid and test over all users, full ranking, history masked.",
        "",
        "| run | valid NDCG@10 by λ (" + ", ".join(f"{w:g}" for w in GRID) + ") | picked λ | test NDCG@10 "
        "(SASRec) | ×SASRec | paired Δ [95% CI] | test NDCG@10 by λ, for the record |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for run in runs:
        teacher = load_teacher(run, data, "cpu")
        valid = parts(teacher, data, "valid", args.batch_size)
        test = parts(teacher, data, "test", args.batch_size)
        valid_ndcg = {w: float(ndcg(valid, w).mean()) for w in GRID}
        picked = max(GRID, key=lambda w: valid_ndcg[w])  # the first of equals: the smaller weight
        sasrec, chosen = ndcg(test, 0.0), ndcg(test, picked)
        diff = paired_difference(chosen - sasrec, 2000, 0)
        lines.append(
            f"| {run.name} | {' '.join(f'{valid_ndcg[w]:.4f}' for w in GRID)} | {picked:g} "
            f"| {chosen.mean():.4f} ({sasrec.mean():.4f}) | {chosen.mean() / sasrec.mean():.3f} "
            f"| {diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}] "
            f"| {' '.join(f'{ndcg(test, w).mean():.4f}' for w in GRID)} |"
        )
        print(lines[-1], flush=True)
    lines += ["", f"Whole benchmark: {(time.perf_counter() - started) / 60:.1f} min.", ""]
    out = ROOT / "bench" / "results" / f"fusion_weight_{runs_dir.name.split('.')[0]}.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
