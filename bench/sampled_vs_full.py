"""Does the sampled softmax keep full CE's ranking quality on a real catalogue, for less time?

Two arms over the same paired seeds, each a SASRec student (``--hidden 64 --max-len 50 --lr 0.001
--length-group 8``, the same epoch cap and early stopping on validation NDCG@10): the full-catalogue
cross-entropy (``--loss ce``) and the sampled softmax (``--loss sampled --negatives N``: the batch's own
targets plus N uniform draws a batch, logQ-corrected). Each run's test NDCG@10 is at its best
validation epoch; the sampled student of each seed is set against the full one by ``distill compare``
(per-user paired differences, bootstrap over users), and pooled over the seeds. Each arm's cost is its
training seconds (the epochs' own time, validation excluded) and the time to its best epoch, so "at
equal wall time" is read off the table: where the sampled arm reaches its best in less training time
than the full arm, it had no more time than full CE. With ``--kd`` two more arms distil a d=128 SASRec
(the same recipe, seed 0) from its top 100 at every training position (``--kd kl --alpha 0.5
--temperature 1``, fixed beforehand): into the full-CE student (the exact normaliser) and into the
sampled one (the normaliser estimated from the same draws), so the estimator is set against the exact
KD on real data. Real commands as subprocesses, two at a time with ``--jobs 2`` (one torch thread each
on two cores); the plain arms first. Writes ``bench/results/sampled_vs_full_<dataset>.md``.

    python -m bench.sampled_vs_full --data ../shared/data/beauty/Beauty.txt [--seeds 0,1,2]
        [--negatives 256] [--item-updates rows|dense] [--epochs 200] [--patience 10] [--kd] [--jobs 2]
        [--report-only]

A sampled arm other than the default (256 draws, item rows) is named for where it departs
(``sampled-n2048``, ``sampled-dense``) and reported in ``sampled_vs_full_<dataset>-n2048.md`` and so on;
the full-CE runs are shared.

Runs carry over invocations: a finished run is reused, an unfinished one resumed (``--resume``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import write_results
from bench.teachers_of_runs import (
    ROOT,
    Job,
    command_line,
    distill_output,
    finished,
    load,
    machine,
    paired_runs,
    rel,
    run_all,
    times,
)

# (first, second): second minus first, where both ran
# (first, second) with "sampled" standing for this invocation's sampled arm
PAIRS = [("full", "sampled"), ("full+kd", "sampled+kd"), ("full", "full+kd"), ("sampled", "sampled+kd")]
KD = ["--kd", "kl", "--alpha", "0.5", "--temperature", "1"]
SIZE = ["--hidden", "64", "--max-len", "50", "--lr", "0.001", "--length-group", "8"]


def best_seconds(metrics: dict) -> float:
    """Training seconds up to and including the best epoch."""
    return sum(e["seconds"] for e in metrics["history"] if e["epoch"] <= metrics["best_epoch"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/beauty/Beauty.txt", help="an interaction file")
    parser.add_argument("--seeds", default="0,1,2", help="paired seeds, comma-separated")
    parser.add_argument("--negatives", type=int, default=256, help="uniform draws a batch")
    parser.add_argument(
        "--item-updates", choices=["rows", "dense"], default="rows", help="of the sampled arm"
    )
    parser.add_argument("--epochs", type=int, default=200, help="epoch cap of every run")
    parser.add_argument("--patience", type=int, default=10, help="on validation NDCG@10")
    parser.add_argument(
        "--kd", action="store_true", help="also KD from a d=128 SASRec's top 100, with either loss"
    )
    parser.add_argument("--jobs", type=int, default=1, help="commands run at once")
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    load_before, started = load(), time.perf_counter()
    inter = Path(args.data)
    name = inter.stem.lower()
    out = ROOT / "bench" / "out" / f"sampled_vs_full_{name}"
    data = out / "data"
    source = os.path.relpath(inter.resolve(), ROOT)  # the commands run from the repository root
    prepare = ["prepare", source, "--output", str(data), "--overwrite"]
    out.mkdir(parents=True, exist_ok=True)
    if not (data / "meta.json").is_file():
        if args.report_only:
            parser.error(f"--report-only: {rel(data)} has not been prepared")
        subprocess.run([sys.executable, "-m", "cli", *prepare], cwd=ROOT, check=True)

    sampled = ["--loss", "sampled", "--negatives", str(args.negatives), "--item-updates", args.item_updates]
    # the sampled arm's name says where it departs from the default (256 draws, item rows)
    tag = "sampled" + (f"-n{args.negatives}" if args.negatives != 256 else "")
    tag += "-dense" if args.item_updates == "dense" else ""
    arms = {
        "full": ("full-catalogue CE (`--loss ce`)", ["--loss", "ce"]),
        tag: (f"sampled softmax (`{' '.join(sampled)}`, uniform draws)", sampled),
    }
    teacher_jobs, needs = [], ()
    if args.kd:
        teacher, scores = out / "teacher", out / "scores"
        wide = ["--hidden", "128", *SIZE[2:]]  # SIZE with d = 128
        command = ["student-train", "--data", str(data), "--output", str(teacher), *wide,
                   "--epochs", str(args.epochs), "--patience", str(args.patience), "--seed", "0",
                   "--device", "cpu"]  # fmt: skip
        teacher_jobs.append(Job("teacher", command, teacher / "metrics.json", resume=teacher))
        command = ["export-logits", "--run", str(teacher), "--data", str(data), "--output", str(scores),
                   "--all-positions", "--top-k", "100", "--device", "cpu", "--overwrite"]  # fmt: skip
        teacher_jobs.append(Job("scores", command, scores / "manifest.json", ("teacher",)))
        kd = ["--teacher-scores", str(scores), *KD]
        arms["full+kd"] = (
            "full CE with KD from the teacher's top 100 (exact normaliser)",
            ["--loss", "ce", *kd],
        )
        arms[f"{tag}+kd"] = (
            "sampled softmax with KD, the normaliser estimated from the draws",
            [*sampled, *kd],
        )
        needs = ("scores",)

    def student(arm: str, seed: int) -> Job:
        run = out / f"{arm}-s{seed}"
        command = ["student-train", "--data", str(data), "--output", str(run), *SIZE,
                   "--epochs", str(args.epochs), "--patience", str(args.patience), "--seed", str(seed),
                   "--device", "cpu", *arms[arm][1]]  # fmt: skip
        return Job(f"{arm}-s{seed}", command, run / "metrics.json", needs if "kd" in arm else (), resume=run)

    # the plain arms seed by seed (the comparison asked for), then the teacher and the KD arms, arm by arm
    plain, distilled = [a for a in arms if "kd" not in a], [a for a in arms if "kd" in a]
    jobs = [student(a, s) for s in seeds for a in plain] + teacher_jobs
    jobs += [student(a, s) for a in distilled for s in seeds]  # exact KD first: what the estimator meets
    run_all(jobs, out, args.jobs, args.report_only)

    results = {arm: {s: finished(out / f"{arm}-s{s}") for s in seeds} for arm in arms}
    rows = []
    for arm in arms:
        for seed in seeds:
            m = results[arm][seed]
            if m is None:
                rows.append(f"| {arm} | {seed} | — | — | — | — | — | (not finished) |")
                continue
            t = times(out, f"{arm}-s{seed}")
            epochs = len(m["history"])
            rows.append(
                f"| {arm} | {seed} | {m['valid']['ndcg@10']:.4f} | {m['test']['ndcg@10']:.4f} "
                f"| {m['best_epoch']} / {epochs} | {m['seconds'] / epochs:.1f} | {best_seconds(m):.0f} "
                f"| {m['seconds']:.0f}" + ("" if t is None else f" ({t['wall']:.0f} / {t['cpu']:.0f})") + " |"
            )
    means = []
    for arm in arms:
        done = [m for m in results[arm].values() if m is not None]
        if done:
            test = [m["test"]["ndcg@10"] for m in done]
            spread = f" ± {statistics.stdev(test):.4f}" if len(test) > 1 else ""
            means.append(
                f"| {arm} | {len(done)} | {statistics.mean(test):.4f}{spread} "
                f"| {statistics.mean(best_seconds(m) for m in done):.0f} "
                f"| {statistics.mean(m['seconds'] for m in done):.0f} |"
            )
    compares = []
    for first, second in PAIRS:
        first, second = first.replace("sampled", tag), second.replace("sampled", tag)
        if first not in arms or second not in arms:
            continue
        paired = [s for s in seeds if results[first][s] is not None and results[second][s] is not None]
        for seed in paired:
            compare = ["compare", str(out / f"{first}-s{seed}"), str(out / f"{second}-s{seed}"),
                       "--data", str(data), "--device", "cpu"]  # fmt: skip
            line = distill_output(compare).strip().splitlines()[-1].split(": ", 1)[1]
            compares.append(f"| {second} − {first} | {seed} | {line} | `{command_line(compare)}` |")
        if len(paired) > 1:
            d = paired_runs(data, [(out / f"{first}-s{s}", out / f"{second}-s{s}") for s in paired])
            zero = "excludes" if d["low"] > 0 or d["high"] < 0 else "contains"
            compares.append(
                f"| {second} − {first} | pooled {paired} "
                f"| {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] ({zero} 0) | |"
            )

    teacher_line = []
    if args.kd and (m := finished(out / "teacher")) is not None:
        teacher_line = [
            f"- teacher: d=128, test NDCG@10 {m['test']['ndcg@10']:.4f} (valid {m['valid']['ndcg@10']:.4f}, "
            f"best epoch {m['best_epoch']} of {len(m['history'])}, {m['seconds']:.0f} s training)"
        ]
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    command = f"python -m bench.sampled_vs_full {' '.join(sys.argv[1:])}".strip()
    path = ROOT / "bench" / "results" / f"sampled_vs_full_{name}{tag.removeprefix('sampled')}.md"
    lines = [
        f"# Sampled softmax against full CE on {inter.name}",
        "",
        f"- command: `{command}` (from the repository root); this report: {now}, "
        f"{(time.perf_counter() - started) / 60:.1f} min in this invocation",
        f"- machine: {machine()}; load average (1, 5, 15 min) {load_before} before, {load()} after; "
        f"runs {args.jobs} at a time, so each shares the machine",
        f"- data: `{command_line(prepare)}`",
        f"- every run: `student-train {' '.join(SIZE)} --epochs {args.epochs} --patience {args.patience}` "
        "and its loss; test at the best validation epoch (NDCG@10, full ranking, seen items masked)",
        *[f"- {arm}: {what}" for arm, (what, _) in arms.items()],
        *teacher_line,
        "- s/epoch, to best s, train s: the epochs' own seconds (validation excluded); in brackets the "
        "whole processes' wall / CPU seconds over their invocations",
        "",
        "| arm | seed | valid NDCG@10 | test NDCG@10 | best / epochs run | s/epoch | to best s | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "| arm | seeds | mean test NDCG@10 | mean s to best | mean train s |",
        "|---|---:|---:|---:|---:|",
        *means,
        "",
        "Paired differences, test NDCG@10 per user (`distill compare`: bootstrap over users, 95%):",
        "",
        "| arms | seed | difference | command |",
        "|---|---|---|---|",
        *compares,
    ]
    write_results(path, lines)
    print(rel(path))


if __name__ == "__main__":
    main()
