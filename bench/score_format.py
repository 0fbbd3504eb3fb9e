"""Score directories, format 1 (parquet, raw float32 scores) against format 2 (``.npy``: int32 ids,
float16 scores relative to the row's top, a float32 tail): bytes per row, and the peak resident memory
and time of ``export-logits`` and of one distilled ``student-train`` epoch.

Format 1 is what distill wrote before format 2, produced by that code itself: the tree of
``--old-commit`` is extracted (``git archive``, read only) under the output directory and its
``cli.py`` run with this interpreter. Every command runs as its own process; its peak resident set
(``ru_maxrss``: anonymous memory plus the file pages it has mapped and touched) is read from
``wait4``, and the peak of its anonymous part sampled from ``/proc``.

    python -m bench.score_format --name ml-100k --inter ../shared/data/ml-100k/ml-100k.inter
    python -m bench.score_format --name synthetic            # prepare --synthetic (1,000 users, 500 items)

Steps: prepare the data, train a d=64 SASRec for ``--teacher-epochs`` (the teacher), export its top
``--k`` and its full distributions at every training position with both codes, then one distilled epoch
(kl, alpha 0.5, T = 1, a d=64 student) on each directory, and a plain epoch for reference. The float16
scores are also checked against the float32 ones of format 1 (the same teacher, the same rows): the KL
between the two top-k distributions (with the tail's bucket) per row, against the distilled run's KD.

Writes ``bench/results/score_format_NAME.md``; everything else under ``bench/out/score_format/NAME``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--inter", help="raw interactions for `distill prepare` (default: --synthetic)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--old-commit", default="13f6e84", help="the last commit that wrote format 1")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    out = ROOT / "bench" / "out" / "score_format" / args.name
    out.mkdir(parents=True, exist_ok=True)
    old = out / f"distill-{args.old_commit}"
    if not old.is_dir():
        old.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.old_commit], cwd=ROOT, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    runs: list[dict] = []

    def cli(label: str, code: Path, *command: str, keep: bool = True) -> dict:
        """Run ``distill COMMAND`` from the tree ``code`` as its own process: seconds and peak RSS."""
        log = out / f"{label}.log"
        started = time.perf_counter()
        with open(log, "w") as sink:
            process = subprocess.Popen(
                [sys.executable, "cli.py", *command], cwd=code, stdout=sink, stderr=subprocess.STDOUT, env=env
            )
            anonymous, done = 0.0, 0
            while not done:  # the anonymous part's peak, sampled (ru_maxrss has both kinds)
                anonymous = max(anonymous, rss_anon_mib(process.pid))
                done, status, usage = os.wait4(process.pid, os.WNOHANG)
                time.sleep(0.05)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{label} failed: see {log}")
        peak = usage.ru_maxrss / 1024
        run = {
            "label": label,
            "seconds": seconds,
            "peak_mib": peak,
            "anon_mib": anonymous,
            "command": command,
        }
        if keep:
            runs.append(run)
        return run

    data, teacher = out / "data", out / "teacher"
    if not (data / "meta.json").is_file():
        source = [args.inter] if args.inter else ["--synthetic"]
        cli("prepare", ROOT, "prepare", *source, "-o", str(data), keep=False)
    if not (teacher / "metrics.json").is_file():
        cli("teacher", ROOT, "student-train", "--data", str(data), "-o", str(teacher), "--hidden", "64",
            "--epochs", str(args.teacher_epochs), "--device", "cpu", "--overwrite", keep=False)  # fmt: skip
    dirs = {}
    for version, code in (("v1", old), ("v2", ROOT)):
        for what, extra in ((f"top-{args.k}", ["--top-k", str(args.k)]), ("full", ["--full"])):
            path = out / f"scores-{version}-{what}"
            dirs[version, what] = path
            cli(f"export {version} {what}", code, "export-logits", "--run", str(teacher), "--data", str(data),
                "-o", str(path), "--all-positions", *extra, "--device", "cpu", "--overwrite")  # fmt: skip
    student = ["--data", str(data), "--hidden", "64", "--epochs", "1", "--device", "cpu", "--overwrite"]
    cli("epoch plain", ROOT, "student-train", *student, "-o", str(out / "student-plain"))
    for (version, what), path in dirs.items():
        code = old if version == "v1" else ROOT
        kd = ["--teacher-scores", str(path), "--kd", "kl", "--alpha", "0.5", "--temperature", "1"]
        cli(
            f"epoch {version} {what}",
            code,
            "student-train",
            *student,
            "-o",
            str(out / f"student-{version}-{what}"),
            *kd,
        )
    kd = ["--teacher-scores", str(dirs["v1", f"top-{args.k}"]), "--kd", "kl", "--alpha", "0.5"]
    cli(
        "epoch v1 top-k read by v2", ROOT, "student-train", *student, "-o", str(out / "student-v1-by-v2"), *kd
    )
    precision = float16_precision(data, dirs["v1", f"top-{args.k}"], dirs["v2", f"top-{args.k}"])
    kd = json.loads((out / f"student-v2-top-{args.k}" / "metrics.json").read_text())["history"][0]["kd_loss"]
    report(args, out, runs, dirs, precision, kd, before)


def rss_anon_mib(pid: int) -> float:
    """A process's anonymous resident memory (its own, not mapped files), MiB; 0 once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return 0.0
    return int(fields.get("RssAnon", "0 kB").split()[0]) / 1024


def float16_precision(data_dir: Path, v1: Path, v2: Path) -> dict[str, float]:
    """The same teacher rows with float32 (format 1) and float16 (format 2) scores, each completed by
    format 2's tail: KL(p32 ‖ p16) on the k items and the bucket, per row, and the largest error of a
    stored score relative to the row's top."""
    import torch

    from distill.data import Dataset
    from distill.scores import read_scores

    data = Dataset(data_dir)
    one, two = read_scores(v1, data), read_scores(v2, data)
    flat = torch.nonzero(one.row_of >= 0).squeeze(1)
    items32, logits32 = one.fetch(one.row_of[flat])
    items16, logits16 = two.fetch(two.row_of[flat])
    assert torch.equal(items32, items16)
    tail = two.fetch_tail(two.row_of[flat]).double()
    kept = torch.log(-torch.expm1(tail))[:, None]
    log_p32 = torch.log_softmax(logits32.double(), -1) + kept
    log_p16 = torch.log_softmax(logits16.double(), -1) + kept  # the bucket is the same in both
    kl = (log_p32.exp() * (log_p32 - log_p16)).sum(-1)
    error = (logits16.double() - (logits32 - logits32[:, :1]).double()).abs()
    return {
        "rows": len(flat),
        "kl_mean": kl.mean().item(),
        "kl_max": kl.max().item(),
        "score_error_max": error.max().item(),
        "log_p_error_mean": (log_p32 - log_p16).abs().mean().item(),
        "tail_mass_mean": tail.exp().mean().item(),
    }


def peaks(run: dict) -> str:
    return f"{run['peak_mib']:.0f} ({run['anon_mib']:.0f})"


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def report(
    args,
    out: Path,
    runs: list[dict],
    dirs: dict,
    precision: dict,
    kd: float,
    before: tuple[float, float, float],
) -> None:
    """``before``: the load average when the benchmark began."""
    import torch

    from distill.data import Dataset

    data = Dataset(out / "data")
    rows = precision["rows"]
    by_label = {run["label"]: run for run in runs}
    command = f"python -m bench.score_format --name {args.name}" + (
        f" --inter {args.inter}" if args.inter else ""
    )
    lines = [
        f"# Score directories, format 1 vs format 2 ({args.name})",
        "",
        f"- command: `{command} --k {args.k} --teacher-epochs {args.teacher_epochs} --old-commit "
        f"{args.old_commit} --threads {args.threads}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} cores shared with other "
        f"work (load average {before[0]:.2f} before, {os.getloadavg()[0]:.1f} at the end: the seconds are "
        f"rough, the bytes and peaks are not), {args.threads} thread(s), torch {torch.__version__}",
        f"- data: {data.num_users:,} users, {data.num_items:,} items; {rows:,} training positions, a row at "
        f"each; teacher: a d=64 SASRec, {args.teacher_epochs} epochs; format 1 from commit "
        f"{args.old_commit}'s own code",
        "- peak RSS: the process's `ru_maxrss` (anonymous memory and touched file pages, such as the mapped "
        "score tables, which the kernel may evict); in brackets the peak of its anonymous part alone "
        "(`RssAnon`, sampled every 50 ms). Each command is its own process, so torch's own ~300-400 MiB "
        "is in every figure",
        "",
        "| directory | bytes | bytes per row | export s | export peak RSS (anonymous) MiB | epoch s "
        "| epoch peak RSS (anonymous) MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (version, what), path in dirs.items():
        export, epoch = by_label[f"export {version} {what}"], by_label[f"epoch {version} {what}"]
        total = size(path)
        lines.append(
            f"| {version} {what} | {total:,} | {total / rows:,.0f} | {export['seconds']:.0f} | "
            f"{peaks(export)} | {epoch['seconds']:.0f} | {peaks(epoch)} |"
        )
    plain, cross = by_label["epoch plain"], by_label["epoch v1 top-k read by v2"]
    lines += [
        f"| (no teacher) | | | | | {plain['seconds']:.0f} | {peaks(plain)} |",
        f"| v1 top-{args.k} read by format-2 code | | | | | {cross['seconds']:.0f} | {peaks(cross)} |",
        "",
        f"float16 against float32 scores (top {args.k}, the same rows, both completed by the tail; mean tail "
        f"mass {precision['tail_mass_mean']:.3f}): KL(p32 ‖ p16) {precision['kl_mean']:.1e} nats per row on "
        f"average, {precision['kl_max']:.1e} at most; mean |log p32 - log p16| "
        f"{precision['log_p_error_mean']:.1e}; "
        f"largest score error {precision['score_error_max']:.1e}. The distilled epoch's KD (kl, T = 1, with "
        f"the tail) was {kd:.3f} nats per position.",
        "",
    ]
    text = "\n".join(lines)
    (ROOT / "bench" / "results" / f"score_format_{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
