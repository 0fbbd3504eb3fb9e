"""Does dense KD pay? Compression: a wide SASRec teacher into narrow students, paired seeds.

Arms, each over the same paired seeds, the same epoch budget and early-stopping rule: a d=W SASRec on
labels alone, and d=W SASRecs on labels + the teacher's soft labels at every training position (the
whole catalogue by default, or its top k), for each student width W. For each KD arm, alpha and T are
picked on validation NDCG@10 with the first seed from a small grid (the plain student is in it),
then run with the other seeds; likewise the weight of ``--hint-run`` arms (representation
distillation from the teacher's hidden states) with ``--hint-weights``. The teacher's soft labels
come from ``distill export-logits --run TEACHER --all-positions`` (a ``student-train`` run is a
scorer like any teacher). Real commands as subprocesses; per-user paired differences through
``distill compare``. Writes ``bench/results/kd_value_<dataset>.md``. With ``--teacher-run`` any
finished run (an LLM teacher) is the teacher instead, on its own prepared dataset, and the report is
``kd_value_<run name>.md``.

    python -m bench.kd_value [--data ../shared/data/ml-100k/ml-100k.inter] [--teacher-hidden 128]
        [--students 16] [--seeds 0,1,2] [--alphas 0.5] [--temperatures 1,2] [--epochs 40]
        [--top-ks full,100] [--hint-weights 0.1,1]
    python -m bench.kd_value --teacher-run RUN --prepared DATASET_DIR --students 64 --top-ks 100

Runs carry over invocations (and sessions): a finished run is reused, an unfinished one resumed. The
same command with ``--report-only`` trains nothing and reports what has finished so far.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE: list[str] = []  # --max-len and --patience, set from the options
DONE: dict[str, tuple[dict, float]] = {}  # run name -> (metrics, training seconds) of this invocation
COMMON = ["--lr", "0.002", "--device", "cpu"]  # and --max-len, --patience from the options
REPORT_ONLY = False  # --report-only: train and export nothing, report the runs finished so far


def rel(path: Path | str) -> str:
    return str(path).replace(f"{ROOT}/", "")


def command_line(*args: str) -> str:
    """A ``distill`` command as the report lists it: paths from the repo root."""
    return "distill " + shlex.join(rel(a) for a in args)


def distill(*args: str) -> float:
    """Run a ``distill`` command; its whole-process seconds."""
    print(f"$ {command_line(*args)}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, check=True)
    return time.perf_counter() - started


def student(
    out: Path, name: str, hidden: int, seed: int, epochs: int, extra: list[str], log: list[str]
) -> tuple[dict, float] | None:
    """A ``student-train`` run: metrics and training seconds. One an earlier invocation finished is reused,
    one it left unfinished (killed, or the session ended) is resumed: the benchmark carries over sessions.
    None for a run not finished yet under ``--report-only``."""
    run = out / name
    if name in DONE:  # the seed-0 run of a picked grid point
        return DONE[name]
    command = [
        "student-train", "--data", str(out / "data"), "--output", str(run), "--hidden", str(hidden),
        "--epochs", str(epochs), "--seed", str(seed), *COMMON, *SIZE, *extra,
    ]  # fmt: skip
    if not (run / "metrics.json").is_file():  # else an earlier invocation finished it: reused
        if REPORT_ONLY:
            return None
        distill(*command, *(["--resume"] if (run / "last" / "state.pt").is_file() else []))
    log.append(command_line(*command))
    DONE[name] = finished(run)
    return DONE[name]


def add(arm: dict, seed: int, done: tuple[dict, float] | None) -> bool:
    """Record a seed's run in ``arm`` (``done`` is what :func:`student` returned); False if it is not
    finished yet (``--report-only``)."""
    if done is not None:
        arm["runs"][seed], arm["seconds"][seed] = done
    return done is not None


def finished(run: Path) -> tuple[dict, float]:
    """A finished run's metrics and its training time: the sum of its epochs' seconds as its history
    records them, the same figure whether the run went in one go, was resumed, or is reused."""
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics, sum(epoch["seconds"] for epoch in metrics["history"])


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/ml-100k/ml-100k.inter", help="an interaction file")
    parser.add_argument("--teacher-hidden", type=int, default=128)
    parser.add_argument("--students", default="16", help="student widths, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--alphas", default="0.5")
    parser.add_argument("--temperatures", default="1,2")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--top-ks", default="full", help="teacher score directories: full and/or k values")
    parser.add_argument("--hint-weights", default="", help="also --hint-run arms (the teacher's states)")
    parser.add_argument(
        "--also-unpicked",
        action="store_true",
        help="where the plain student wins the validation pick, still run the best other grid point on "
        "every seed, reported as not picked",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train and export nothing: report the runs earlier invocations finished (an arm with some of "
        "its seeds unfinished is reported over the seeds it has)",
    )
    parser.add_argument(
        "--teacher-run",
        help="a finished run of any kind (e.g. an LLM teacher) as the teacher, instead of training a SASRec; "
        "needs --prepared, its dataset",
    )
    parser.add_argument(
        "--prepared", help="with --teacher-run: the prepared dataset directory it was trained on"
    )
    args = parser.parse_args()
    global REPORT_ONLY
    REPORT_ONLY = args.report_only
    seeds = [int(s) for s in args.seeds.split(",")]
    SIZE.extend(["--max-len", str(args.max_len), "--patience", str(args.patience)])
    log: list[str] = []
    started_all = time.perf_counter()
    if args.teacher_run:
        teacher_run = Path(args.teacher_run).resolve()
        name = teacher_run.name
        out = ROOT / "bench" / "out" / f"kd_value_{name}"
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "data").exists():
            (out / "data").symlink_to(Path(args.prepared).resolve())  # run names stay relative to `out`
        if not (out / "teacher").exists():
            (out / "teacher").symlink_to(teacher_run)
        teacher_metrics, teacher_seconds = finished(teacher_run)
        kind = json.loads((teacher_run / "config.json").read_text())["kind"]
        if args.hint_weights and kind != "student":
            parser.error(f"--hint-weights needs a SASRec teacher; {args.teacher_run} is a {kind} run")
    else:
        inter = Path(args.data)
        name = inter.stem
        out = ROOT / "bench" / "out" / f"kd_value_{name}"
        if not (out / "data" / "meta.json").is_file():
            distill("prepare", str(inter.resolve()), "--output", str(out / "data"), "--overwrite")
        log.append(f"distill prepare {args.data} --output {rel(out / 'data')}")
        teacher = student_teacher(out, args.teacher_hidden, args.epochs, log)
        if teacher is None:
            parser.error(f"--report-only: the teacher {rel(out / 'teacher')} has not finished")
        teacher_metrics, teacher_seconds = teacher
    arms: dict[str, dict] = {}
    picks = {}
    exports = {}
    soft_labels = {}  # label -> what its soft labels carry (soft_label_summary)
    for top_k in [None if k == "full" else int(k) for k in args.top_ks.split(",")]:
        label = "full catalogue" if top_k is None else f"top {top_k}"
        scores = out / f"scores-{'full' if top_k is None else top_k}"
        size = ["--full"] if top_k is None else ["--top-k", str(top_k)]
        command = [
            "export-logits", "--run", str(out / "teacher"), "--data", str(out / "data"),
            "--output", str(scores), "--all-positions", *size, "--batch-size", "256", "--device", "cpu",
            "--overwrite",
        ]  # fmt: skip
        exports[label] = 0.0  # seconds; 0: an earlier invocation's directory, reused
        if not (scores / "manifest.json").is_file():
            if REPORT_ONLY:
                del exports[label]  # its KD arms are not reported
                continue
            exports[label] = distill(*command)
        log.append(command_line(*command))
        soft_labels[label] = soft_label_summary(out, scores)
    for width in [int(w) for w in args.students.split(",")]:
        plain = arms[f"d={width} plain"] = {"runs": {}, "seconds": {}, "width": width}
        for seed in seeds:
            add(plain, seed, student(out, f"d{width}-plain-s{seed}", width, seed, args.epochs, [], log))
        if seeds[0] not in plain["runs"]:  # --report-only, before the first plain run finished
            del arms[f"d={width} plain"]
            continue
        variants = {}  # label -> grid points (shown, run-name part, student-train options)
        for label in exports:
            tag = "full" if label == "full catalogue" else label.split()[-1]
            variants[f"KD {label}"] = [
                (f"α {float(a):g} T {float(t):g}", f"kd-{tag}-a{float(a):g}-t{float(t):g}",
                 ["--teacher-scores", str(out / f"scores-{tag}"), "--alpha", a, "--temperature", t])
                for a in args.alphas.split(",") for t in args.temperatures.split(",")
            ]  # fmt: skip
        if args.hint_weights:
            variants["hint"] = [
                (f"weight {float(w):g}", f"hint-w{float(w):g}",
                 ["--hint-run", str(out / "teacher"), "--hint-weight", w])
                for w in args.hint_weights.split(",")
            ]  # fmt: skip
        for label, points in variants.items():
            grid = [("plain", None, [], plain["runs"][seeds[0]]["valid"]["ndcg@10"])]
            for shown, part, extra in points:
                done = student(out, f"d{width}-{part}-s{seeds[0]}", width, seeds[0], args.epochs, extra, log)
                if done is None:
                    break
                grid.append((shown, part, extra, done[0]["valid"]["ndcg@10"]))
            if len(grid) <= len(points):  # --report-only, before the grid finished: nothing picked yet
                continue
            shown, part, extra, _ = max(grid, key=lambda g: g[3])  # the first of equals: plain
            picks[f"d={width}, {label}"] = {"grid": [(g[0], g[3]) for g in grid], "chosen": shown}
            arm_name = f"d={width} {label}"
            if part is None:  # the plain student wins on validation: this arm is the plain arm
                if not args.also_unpicked:
                    continue
                shown, part, extra, _ = max(grid[1:], key=lambda g: g[3])  # measured for the record
                arm_name += f" ({shown}, not picked)"
            arm = arms[arm_name] = {"runs": {}, "seconds": {}, "names": {}, "width": width}
            for seed in seeds:
                run_name = f"d{width}-{part}-s{seed}"
                if add(arm, seed, student(out, run_name, width, seed, args.epochs, extra, log)):
                    arm["names"][seed] = run_name
    compare_lines = []
    for arm_name, arm in arms.items():
        plain_runs = arms[f"d={arm['width']} plain"]["runs"]
        paired_seeds = [s for s in arm.get("names", {}) if s in plain_runs]  # both finished
        if paired_seeds:
            pooled = pooled_difference(out, arm, paired_seeds)
            zero = "excludes" if pooled["low"] > 0 or pooled["high"] < 0 else "contains"
            compare_lines.append(
                f"- **{arm_name}, {len(paired_seeds)} paired seed(s) pooled** (each user's difference "
                f"averaged over the paired seeds, users resampled): {pooled['mean']:+.4f} "
                f"[{pooled['low']:+.4f}, {pooled['high']:+.4f}] ({zero} 0)"
            )
        for seed in paired_seeds:
            run_name = arm["names"][seed]
            runs = [str(out / f"d{arm['width']}-plain-s{seed}"), str(out / run_name)]
            args_ = ["compare", *runs, "--data", str(out / "data"), "--device", "cpu"]
            result = subprocess.run(
                [sys.executable, "-m", "cli", *args_], cwd=ROOT, check=True, capture_output=True, text=True
            )
            log.append("distill " + shlex.join(rel(a) for a in args_))
            paired = result.stdout.strip().splitlines()[-1].split(": ", 1)[1]
            compare_lines.append(f"- {arm_name}, seed {seed}: {paired}")
    write_report(args, name, seeds, teacher_metrics, teacher_seconds, arms, picks, exports, soft_labels,
                 compare_lines, log, time.perf_counter() - started_all, before)  # fmt: skip


def pooled_difference(out: Path, arm: dict, seeds: list[int]) -> dict:
    """Per-user test NDCG@10 of an arm minus its plain student, averaged over the paired seeds (the same
    users in every seed), with ``distill compare``'s bootstrap over users."""
    from distill.data import Dataset
    from distill.metrics import per_user
    from pipeline.compare import paired_difference
    from pipeline.runs import open_run

    data = Dataset(out / "data")

    def values(run: Path):
        return per_user(open_run(run, data, "cpu").ranks(data, "test", 256)[1], "ndcg@10").numpy()

    diffs = [values(out / arm["names"][s]) - values(out / f"d{arm['width']}-plain-s{s}") for s in seeds]
    return paired_difference(sum(diffs) / len(diffs), 2000, 0)


def soft_label_summary(out: Path, scores: Path) -> str:
    """What the teacher's soft labels carry at the training positions: how often the position's own
    target is among the teacher's top items, and how peaked the soft labels (T = 1) are. Kept beside the
    directory (a full-catalogue ML-1M table takes minutes to read) and reused until the table is
    exported again: the key is its manifest and the manifest's modification time, which a re-export
    (even of a retrained teacher at the same path, the same manifest text) changes."""
    import numpy as np
    import torch

    from distill.data import Dataset
    from distill.scores import read_scores

    cache, manifest = out / f"{scores.name}.summary.json", scores / "manifest.json"
    key = [manifest.stat().st_mtime_ns, manifest.read_text()]
    if cache.is_file() and (cached := json.loads(cache.read_text())).get("key") == key:
        return cached["summary"]
    data = Dataset(out / "data")
    table = read_scores(scores, data)
    flat = torch.nonzero(table.row_of >= 0).squeeze(1)  # flat indices of the scored targets
    targets = torch.from_numpy(np.asarray(data.items, dtype=np.int64))[flat]
    rows = table.row_of[flat]
    cuts = [c for c in (1, 10) if c < table.k] + [table.k]
    hits = dict.fromkeys(cuts, 0)
    p_target = entropy = 0.0
    chunk = 65536  # rows at a time: a full-catalogue table never has more in memory
    for start in range(0, len(rows), chunk):
        items, logits = table.fetch(rows[start : start + chunk])  # (m, k), descending
        p = torch.softmax(logits, dim=-1)
        hit = items == targets[start : start + chunk, None]  # (m, k), at most one per row
        rank = torch.where(hit.any(1), hit.float().argmax(1), table.k)
        for c in cuts:
            hits[c] += int((rank < c).sum())
        p_target += float((p * hit).sum())
        entropy += float(-(p * p.clamp_min(1e-30).log()).sum())
    n = len(rows)
    summary = (
        "the position's own target is the teacher's "
        + ", ".join(f"top {c}" for c in cuts)
        + " at "
        + " / ".join(f"{hits[c] / n:.3f}" for c in cuts)
        + f" of the {n:,} training positions; the soft labels (T 1) put {p_target / n:.3f} on it on "
        f"average, with an entropy of {entropy / n:.2f} nats (uniform over {table.k} items: "
        f"{math.log(table.k):.2f})"
    )
    cache.write_text(json.dumps({"key": key, "summary": summary}))
    return summary


def student_teacher(out: Path, hidden: int, epochs: int, log: list[str]) -> tuple[dict, float]:
    """The teacher SASRec (seed 0), trained once."""
    return student(out, "teacher", hidden, 0, epochs, [], log)


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"


def write_report(
    args, name, seeds, teacher, teacher_seconds, arms, picks, exports, soft_labels, compare_lines, log, total,
    before,
) -> None:  # fmt: skip
    """``before``: the load average when the benchmark began."""
    after = os.getloadavg()
    teacher_name = f"`{rel(args.teacher_run)}`" if args.teacher_run else f"d={args.teacher_hidden} SASRec"
    lines = [
        f"# Dense KD on {name}: {teacher_name} teacher → d={args.students} SASRec students",
        "",
        f"- command: `python -m bench.kd_value {shlex.join(sys.argv[1:])}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, 2 CPU cores, load average {before[0]:.2f} "
        f"before, {after[0]:.2f}/{after[2]:.2f} (1/15 min) after; whole benchmark "
        f"{total / 60:.1f} min (runs an earlier invocation finished are reused); a run's time is the sum "
        "of its epochs' training seconds (validation excluded), as its metrics.json records them",
        f"- all students: 2 blocks, max_len {args.max_len}, lr 0.002, at most {args.epochs} epochs, "
        f"patience {args.patience} on "
        "validation NDCG@10, test at the best validation epoch; full ranking over the whole catalogue, "
        "history items masked",
        f"- teacher: {teacher_name}, seed 0: valid NDCG@10 "
        f"{teacher['valid']['ndcg@10']:.4f}, "
        f"test NDCG@10 {teacher['test']['ndcg@10']:.4f}, HR@10 {teacher['test']['hr@10']:.4f} "
        f"({teacher_seconds:.0f} s); soft labels at every training position: "
        + ", ".join(
            f"{label} {f'{seconds:.0f} s' if seconds else '(reused)'}" for label, seconds in exports.items()
        ),
        *(f"- soft labels, {label}: {summary}" for label, summary in soft_labels.items()),
        "",
        f"Picked on validation (seed {seeds[0]}), valid NDCG@10 per grid point (plain: the plain student):",
        "",
    ]
    for label, pick in picks.items():
        grid = ", ".join(f"{shown}: {valid:.4f}" for shown, valid in pick["grid"])
        lines.append(f"- {label}: {grid} → **{pick['chosen']}**")
    lines += [
        "",
        "| arm | test NDCG@10 | test HR@10 | valid NDCG@10 | per-seed test NDCG@10 gain vs plain"
        " | training time per run (epochs) |",
        "|---|---|---|---|---|---|",
    ]
    for arm_name, arm in arms.items():
        runs = arm["runs"]
        done = [s for s in seeds if s in runs]  # all of them, unless --report-only came early
        plain = arms[f"d={arm['width']} plain"]["runs"]
        gains = (
            ", ".join(
                f"{runs[s]['test']['ndcg@10'] - plain[s]['test']['ndcg@10']:+.4f}" for s in done if s in plain
            )
            if "names" in arm
            else "—"
        )
        shown = arm_name if done == seeds else f"{arm_name} (seeds {', '.join(map(str, done))} so far)"
        lines.append(
            f"| {shown} | {mean_std([runs[s]['test']['ndcg@10'] for s in done])} "
            f"| {mean_std([runs[s]['test']['hr@10'] for s in done])} "
            f"| {mean_std([runs[s]['valid']['ndcg@10'] for s in done])} | {gains} "
            f"| {statistics.mean(arm['seconds'].values()):.0f} s "
            f"({statistics.mean(len(runs[s]['history']) for s in done):.1f}) |"
        )
    lines += ["", "Paired per-user test NDCG@10 difference, KD minus plain, bootstrap 95% interval:", ""]
    lines += compare_lines or ["- none: no KD arm beat the plain student on validation"]
    lines += ["", "Commands:", "", "```", *log, "```", ""]
    results = ROOT / "bench" / "results" / f"kd_value_{name}.md"
    results.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
