"""Does dense KD pay? Compression on MovieLens-100K: a d=128 SASRec teacher into d=16 students.

Arms, each over the same paired seeds, the same epoch budget and early-stopping rule: a d=16 SASRec
on labels alone, and d=16 SASRecs on labels + the teacher's soft labels at every training position
(the whole catalogue by default, or its top k). For each KD arm, alpha and T are picked on validation NDCG@10
with seed 0 from a small grid (alpha 0 is the plain student), then run with the other seeds. The
teacher's scores are written by ``sasrec_scores`` below: one forward per user, every position the
student trains on (what ``distill export-logits --run STUDENT_RUN`` does). Real commands as
subprocesses; per-user paired differences through ``distill compare``. Writes
``bench/results/kd_value.md``.

    python bench/kd_value.py [--seeds 0,1,2] [--alphas 0.5] [--temperatures 1,2] [--epochs 40]
        [--top-ks full,100]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.data import Dataset, window  # noqa: E402
from distill.scores import ScoreWriter  # noqa: E402
from student.run import load_run  # noqa: E402

DATA = (ROOT / ".." / "shared" / "data" / "ml-100k" / "ml-100k.inter").resolve()
OUT = ROOT / "bench" / "out" / "kd_value"
RESULTS = ROOT / "bench" / "results" / "kd_value.md"
DONE: dict[str, tuple[dict, float]] = {}  # run name -> (metrics, seconds) of this invocation
COMMON = ["--max-len", "50", "--lr", "0.002", "--patience", "5", "--device", "cpu"]


def distill(*args: str) -> tuple[float, str]:
    shown = "distill " + shlex.join(str(a).replace(f"{ROOT}/", "") for a in args)  # paths from the repo root
    print(f"$ {shown}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, check=True)
    return time.perf_counter() - started, shown


def student(name: str, seed: int, epochs: int, extra: list[str], log: list[str]) -> tuple[dict, float]:
    run = OUT / name
    if name in DONE:  # the seed-0 run of a picked grid point
        return DONE[name]
    if (run / "metrics.json").is_file():  # finished by an earlier invocation: rerunning costs only the report
        DONE[name] = json.loads((run / "metrics.json").read_text()), float("nan")
        return DONE[name]
    seconds, cmd = distill(
        "student-train", "--data", str(OUT / "data"), "--output", str(run), "--hidden", "16",
        "--epochs", str(epochs), "--seed", str(seed), *COMMON, *extra,
    )  # fmt: skip
    log.append(cmd)
    DONE[name] = json.loads((run / "metrics.json").read_text()), seconds
    return DONE[name]


@torch.no_grad()
def sasrec_scores(run: Path, data: Dataset, out: Path, top_k: int | None) -> float:
    """The teacher SASRec's top-k (None: all) scores at every position a student trains on; seconds."""
    started = time.perf_counter()
    model = load_run(run, data)
    max_len = model.config.max_len
    starts, ends = data.history_bounds("train")
    k = data.num_items if top_k is None else top_k
    manifest = {
        "teacher": {"kind": "student", "run": str(run.relative_to(ROOT))},
        "dataset": data.identity(),
        "k": k,
        "positions": f"every training position in the last {max_len}",
        "max_len": max_len,
    }
    with ScoreWriter(out, manifest, overwrite=True) as writer:
        for i in range(0, data.num_users, 64):
            users = np.arange(i, min(i + 64, data.num_users))
            inputs = window(data.items, starts[users], ends[users] - 1, max_len)  # (B, L): train[:-1]
            scores = model.score(model(torch.from_numpy(inputs)))[..., 1:]  # (B, L, N)
            valid = inputs != 0
            b, slot = np.nonzero(valid)
            # the j-th of a user's n input items predicts train position (length - n + j)
            n = valid.sum(1)
            length = (ends - starts)[users]
            positions = length[b] - n[b] + (slot - (max_len - n[b]))
            logits, items = scores[torch.from_numpy(b), torch.from_numpy(slot)].topk(k, dim=-1)
            writer.write(users[b], positions, (items + 1).numpy(), logits.numpy())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--alphas", default="0.5")
    parser.add_argument("--temperatures", default="1,2")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--top-ks", default="full", help="teacher score directories: full and/or k values")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    log: list[str] = []
    started_all = time.perf_counter()
    if not (OUT / "data" / "meta.json").is_file():
        distill("prepare", str(DATA), "--output", str(OUT / "data"))
    log.append(
        f"distill prepare ../shared/data/ml-100k/ml-100k.inter --output {(OUT / 'data').relative_to(ROOT)}"
    )
    data = Dataset(OUT / "data")
    teacher_metrics, teacher_seconds = student_teacher(args.epochs, log)
    arms: dict[str, dict] = {"d=16 plain": {"runs": {}, "seconds": {}}}
    for seed in seeds:
        metrics, seconds = student(f"plain-s{seed}", seed, args.epochs, [], log)
        arms["d=16 plain"]["runs"][seed], arms["d=16 plain"]["seconds"][seed] = metrics, seconds
    picks = {}
    for top_k in [None if k == "full" else int(k) for k in args.top_ks.split(",")]:
        label = "full catalogue" if top_k is None else f"top {top_k}"
        scores = OUT / f"scores-{'full' if top_k is None else top_k}"
        export_seconds = sasrec_scores(OUT / "teacher", data, scores, top_k) if not scores.is_dir() else 0.0
        teacher_args = ["--teacher-scores", str(scores)]
        grid = [(0.0, None, arms["d=16 plain"]["runs"][seeds[0]]["valid"]["ndcg@10"])]
        for alpha in args.alphas.split(","):
            for t in args.temperatures.split(","):
                name = f"kd-{label.split()[-1]}-a{alpha}-t{t}-s{seeds[0]}"
                extra = [*teacher_args, "--alpha", alpha, "--temperature", t]
                metrics, _ = student(name, seeds[0], args.epochs, extra, log)
                grid.append((float(alpha), float(t), metrics["valid"]["ndcg@10"]))
        alpha, t, _ = max(grid, key=lambda g: g[2])
        picks[label] = {"alpha": alpha, "temperature": t, "grid": grid, "export_seconds": export_seconds}
        if alpha == 0:
            continue  # the plain student wins on validation: the KD arm is the plain arm
        arm = arms[f"d=16 KD {label}"] = {"runs": {}, "seconds": {}, "names": {}}
        for seed in seeds:
            name = f"kd-{label.split()[-1]}-a{alpha:g}-t{t:g}-s{seed}"
            extra = [*teacher_args, "--alpha", f"{alpha:g}", "--temperature", f"{t:g}"]
            arm["runs"][seed], arm["seconds"][seed] = student(name, seed, args.epochs, extra, log)
            arm["names"][seed] = name
    compare_lines = []
    for name, arm in arms.items():
        for seed in arm.get("names", {}):
            runs = [str(OUT / f"plain-s{seed}"), str(OUT / arm["names"][seed])]
            args_ = ["compare", *runs, "--data", str(OUT / "data"), "--device", "cpu"]
            result = subprocess.run(
                [sys.executable, "-m", "cli", *args_], cwd=ROOT, check=True, capture_output=True, text=True
            )
            shown = "distill " + shlex.join(a.replace(f"{ROOT}/", "") for a in args_)
            log.append(shown)
            paired = result.stdout.strip().splitlines()[-1].split(": ", 1)[1]
            compare_lines.append(f"- {name}, seed {seed}: {paired}")
    write_report(args, seeds, teacher_metrics, teacher_seconds, arms, picks, compare_lines, log,
                 time.perf_counter() - started_all)  # fmt: skip


def student_teacher(epochs: int, log: list[str]) -> tuple[dict, float]:
    if (OUT / "teacher" / "metrics.json").is_file():
        return json.loads((OUT / "teacher" / "metrics.json").read_text()), float("nan")
    seconds, cmd = distill(
        "student-train", "--data", str(OUT / "data"), "--output", str(OUT / "teacher"), "--hidden", "128",
        "--epochs", str(epochs), "--seed", "0", *COMMON,
    )  # fmt: skip
    log.append(cmd)
    return json.loads((OUT / "teacher" / "metrics.json").read_text()), seconds


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"


def write_report(args, seeds, teacher, teacher_seconds, arms, picks, compare_lines, log, total) -> None:
    plain = arms["d=16 plain"]["runs"]
    lines = [
        "# Dense KD on MovieLens-100K: d=128 SASRec teacher → d=16 SASRec students",
        "",
        f"- command: `python bench/kd_value.py --seeds {args.seeds} --alphas {args.alphas} "
        f"--temperatures {args.temperatures} --epochs {args.epochs} --top-ks {args.top_ks}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, 2 CPU cores shared with other jobs "
        f"(wall times are inflated and noisy); whole benchmark {total / 60:.1f} min",
        f"- all students: 2 blocks, max_len 50, lr 0.002, at most {args.epochs} epochs, patience 5 on "
        "validation NDCG@10, test at the best validation epoch; full ranking over all 1,682 items, history "
        "items masked",
        f"- teacher: d=128 SASRec, seed 0: valid NDCG@10 {teacher['valid']['ndcg@10']:.4f}, test NDCG@10 "
        f"{teacher['test']['ndcg@10']:.4f}, HR@10 {teacher['test']['hr@10']:.4f} ({teacher_seconds:.0f} s)",
        "",
        "Picked on validation (seed 0), valid NDCG@10 per grid point (alpha 0 = the plain student):",
        "",
    ]
    for label, pick in picks.items():
        grid = ", ".join(
            f"α {a:g}" + ("" if t is None else f" T {t:g}") + f": {v:.4f}" for a, t, v in pick["grid"]
        )
        chosen = f"α {pick['alpha']:g}" + (
            "" if pick["temperature"] is None else f", T {pick['temperature']:g}"
        )
        lines.append(f"- {label} (export {pick['export_seconds']:.0f} s): {grid} → **{chosen}**")
    lines += [
        "",
        "| arm | test NDCG@10 | test HR@10 | valid NDCG@10 | per-seed test NDCG@10 gain vs plain"
        " | wall per run |",
        "|---|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        runs = arm["runs"]
        gains = (
            ", ".join(f"{runs[s]['test']['ndcg@10'] - plain[s]['test']['ndcg@10']:+.4f}" for s in seeds)
            if name != "d=16 plain"
            else "—"
        )
        lines.append(
            f"| {name} | {mean_std([runs[s]['test']['ndcg@10'] for s in seeds])} "
            f"| {mean_std([runs[s]['test']['hr@10'] for s in seeds])} "
            f"| {mean_std([runs[s]['valid']['ndcg@10'] for s in seeds])} | {gains} "
            f"| {statistics.mean(arm['seconds'].values()):.0f} s |"
        )
    lines += ["", "Paired per-user test NDCG@10 difference, KD minus plain, bootstrap 95% interval:", ""]
    lines += compare_lines or ["- none: no KD arm beat the plain student on validation"]
    lines += ["", "Commands:", "", "```", *log, "```", ""]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
