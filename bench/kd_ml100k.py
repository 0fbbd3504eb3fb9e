"""Does distillation help? SASRec on labels alone vs SASRec on labels + a teacher's soft labels (ML-100K).

Takes the MoE-LoRA teacher that ``bench/teachers_ml100k.py`` trained (SmolLM2-135M), exports its
top-k scores for each user's last training targets, then trains the same SASRec with and without
them: one student on labels only, and one per (KD loss, alpha). Every student has the same
architecture, seed and budget; each selects its epoch on validation NDCG@10, and the KD setting to
recommend is picked on validation too. Real commands as subprocesses; writes
``bench/results/kd_ml100k.md``.

    python -m bench.kd_ml100k [--positions 4] [--alphas 0.2,0.5] [--kds kl,rank]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "ml100k"
RESULTS = ROOT / "bench" / "results" / "kd_ml100k.md"
# The student of bench/teachers_ml100k.py (the teacher's ID encoder), trained again here so every row
# runs the same code.
STUDENT = ["--max-len", "50", "--epochs", "200", "--patience", "10", "--lr", "0.002", "--device", "cpu"]


def distill(*args: str) -> tuple[float, str]:
    shown = "distill " + shlex.join(str(a).replace(f"{ROOT}/", "") for a in args)  # paths from the repo root
    print(f"$ {shown}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, check=True)
    return time.perf_counter() - started, shown


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", default="4", help="last training targets per user the teacher scores")
    parser.add_argument("--top-k", default="100")
    parser.add_argument("--alphas", default="0.2,0.5")
    parser.add_argument("--kds", default="kl,rank")
    parser.add_argument("--temperature", default="1.0")
    args = parser.parse_args()
    data, teacher, scores = OUT / "data", OUT / "moe-lora", OUT / "scores"
    if not (teacher / "metrics.json").is_file():
        print("skipped: run `python -m bench.teachers_ml100k` first (it trains the teacher this distils)")
        return
    commands = []
    seconds, cmd = distill(
        "export-logits",
        "--run",
        str(teacher),
        "--data",
        str(data),
        "--output",
        str(scores),
        "--positions",
        args.positions,
        "--top-k",
        args.top_k,
        "--device",
        "cpu",
        "--overwrite",
    )
    commands.append(cmd)
    export_seconds = seconds

    rows = []
    runs = [("labels only", "—", "—", [])]
    for kd in args.kds.split(","):
        for alpha in args.alphas.split(","):
            extra = ["--teacher-scores", str(scores), "--kd", kd, "--alpha", alpha]
            runs.append((f"labels + {kd}", kd, alpha, [*extra, "--temperature", args.temperature]))
    for i, (name, kd, alpha, extra) in enumerate(runs):
        run = OUT / "kd" / f"student-{i}"
        shutil.rmtree(run, ignore_errors=True)
        seconds, cmd = distill("student-train", "--data", str(data), "--output", str(run), *STUDENT, *extra)
        commands.append(cmd)
        metrics = json.loads((run / "metrics.json").read_text())
        rows.append((name, kd, alpha, metrics, seconds))

    kd_rows = [r for r in rows if r[1] != "—"]
    chosen = max(kd_rows, key=lambda r: r[3]["valid"]["ndcg@10"]) if kd_rows else None
    baseline = rows[0][3]
    teacher_metrics = json.loads((teacher / "metrics.json").read_text())
    after = os.getloadavg()
    lines = [
        "# Distillation on MovieLens-100K: SASRec with and without the MoE-LoRA teacher's soft labels",
        "",
        f"{datetime.date.today()}, 2 CPU cores, load average {before[0]:.2f} before, {after[0]:.2f}/"
        f"{after[2]:.2f} (1/15 min) after. Teacher: `bench/out/ml100k/moe-lora` (SmolLM2-135M, "
        f"test NDCG@10 {teacher_metrics['test']['ndcg@10']:.4f}), top {args.top_k} items at each user's "
        f"last {args.positions} training targets (export {export_seconds / 60:.1f} min). "
        f"Students: d=64, 2 blocks, max_len 50, lr 0.002, seed 0, epoch picked on validation NDCG@10, "
        f"T = {args.temperature}. Full ranking over all 1,682 items, history items masked.",
        "",
        "| student | kd | alpha | valid NDCG@10 | test NDCG@10 | test HR@10 | best epoch | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, kd, alpha, metrics, seconds in rows:
        mark = " (picked on valid)" if chosen is not None and metrics is chosen[3] else ""
        lines.append(
            f"| {name}{mark} | {kd} | {alpha} | {metrics['valid']['ndcg@10']:.4f} | "
            f"{metrics['test']['ndcg@10']:.4f} | {metrics['test']['hr@10']:.4f} | {metrics['best_epoch']} | "
            f"{seconds / 60:.1f} min |"
        )
    if chosen is not None:
        gain = chosen[3]["test"]["ndcg@10"] / baseline["test"]["ndcg@10"] - 1
        lines += [
            "",
            f"KD setting picked on validation: {chosen[1]}, alpha {chosen[2]}: test NDCG@10 "
            f"{chosen[3]['test']['ndcg@10']:.4f} vs {baseline['test']['ndcg@10']:.4f} on labels only "
            f"({gain:+.1%}).",
        ]
        if teacher_metrics["test"]["ndcg@10"] < baseline["test"]["ndcg@10"]:
            lines += [
                "",
                "This teacher ranks worse than the student trained on labels alone, so its soft labels pull "
                "the student toward a weaker ranking: a stronger teacher (more training, a larger backbone) "
                "is the precondition for a gain.",
            ]
    lines += ["", "Commands:", "", "```", *commands, "```", ""]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
