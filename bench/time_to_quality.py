"""Time to a test NDCG@10: how long ``distill student-train`` takes, from nothing, until the model it would
pick on validation scores a target on test.

Each recipe trains one run in steps of ``--every`` epochs: ``student-train --epochs k --resume`` for
k = every, 2·every, …, the run's own resume (exact: the same weights, optimizer, RNG and early-stopping
state as one uninterrupted run, which a test checks), so after each step its ``metrics.json`` holds the test
metrics of the epoch that validation picked among the first k — what a user who stopped at k would
serve. Test is read to measure time, never to pick anything. The run stops at the first step whose
picked epoch reaches ``--target`` (or at the cap, or when early stopping ends it).

Times: **training s**, the sum of the epochs' own seconds as ``metrics.json`` records them (forward,
loss, backward, optimizer step: no validation, no start-up), a lower bound of one uninterrupted run's;
**wall s**, the steps' whole processes summed, an upper bound (it counts a start-up, a data load and a
final test pass per step beside the validation passes one run has too). Recipes run one after the other
in this process; the results file states the machine's load.

    python -m bench.time_to_quality --data ../shared/data/ml-1m/ml-1m.txt [--target 0.17] [--every 2]
        [--recipe NAME='OPTIONS'] ...

Without ``--recipe`` it runs the defaults (``student-train`` with no options) and the fast recipe
``--precision bfloat16 --length-group 8``. Writes ``bench/results/time_to_quality_<dataset>.md``; a
``## Reading`` section written by hand at its end is kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import write_results
from bench.teachers_of_runs import ROOT, rel

RECIPES = {"defaults": "", "bf16-grouped": "--precision bfloat16 --length-group 8"}


def cpu_times() -> list[int]:
    """The machine's aggregate CPU jiffies from /proc/stat (user … steal), or [] where there is none."""
    stat = Path("/proc/stat")
    return [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:9]] if stat.is_file() else []


def steal_share(before: list[int], after: list[int]) -> float | None:
    """The share of CPU time the hypervisor took between two :func:`cpu_times` (steal: the 8th field)."""
    if not before or not after:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return spent[7] / max(1, sum(spent))


def cli(args: list[str]) -> float:
    """Run ``distill ARGS`` from the repository root; its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def race(data: Path, run: Path, options: list[str], target: float, every: int, cap: int) -> dict:
    """Train ``run`` in steps of ``every`` epochs until the validation-picked epoch's test NDCG@10 reaches
    ``target``; the steps' figures."""
    shutil.rmtree(run, ignore_errors=True)
    steps, wall = [], 0.0
    for k in range(every, cap + every, every):
        command = [
            "student-train",
            "--data",
            str(data),
            "--output",
            str(run),
            "--epochs",
            str(k),
            "--device",
            "cpu",
        ]
        command += options + (["--resume"] if steps else [])
        seconds = cli(command)
        wall += seconds
        metrics = json.loads((run / "metrics.json").read_text())
        history = metrics["history"]
        steps.append(
            {
                "epochs": len(history),
                "wall": seconds,
                "train": sum(e["seconds"] for e in history),
                "best_epoch": metrics["best_epoch"],
                "valid": metrics["valid"]["ndcg@10"],
                "test": metrics["test"]["ndcg@10"],
            }
        )
        print(f"  {rel(run)}: {steps[-1]}", flush=True)
        if metrics["test"]["ndcg@10"] >= target or len(history) < k:  # reached, or stopped early
            break
    return {"steps": steps, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/ml-1m/ml-1m.txt", help="an interaction file")
    parser.add_argument("--target", type=float, default=0.17, help="test NDCG@10 to reach")
    parser.add_argument("--every", type=int, default=2, help="epochs per step")
    parser.add_argument("--cap", type=int, default=60, help="give up after this many epochs")
    parser.add_argument(
        "--recipe",
        action="append",
        help="NAME='student-train options' (repeatable; default: the two in RECIPES)",
    )
    args = parser.parse_args()
    if bad := [r for r in args.recipe or () if "=" not in r or r.startswith("=")]:
        parser.error(f"--recipe {bad[0]!r}: give NAME='student-train options'")
    recipes = dict(r.split("=", 1) for r in args.recipe) if args.recipe else RECIPES
    name = Path(args.data).stem
    out = ROOT / "bench" / "out" / f"time_to_quality_{name}"
    data = out / "data"
    if not (data / "meta.json").is_file():
        cli(["prepare", str(Path(args.data).resolve()), "--output", str(data), "--overwrite"])
    load_before = os.getloadavg()
    results = {}
    for label, options in recipes.items():
        kept = out / f"{label}.json"  # a finished race, reused while its question is the same
        question = {"options": options, "target": args.target, "every": args.every, "cap": args.cap}
        if kept.is_file() and json.loads(kept.read_text())["question"] == question:
            results[label] = json.loads(kept.read_text())
            print(f"{label}: reused {rel(kept)}", flush=True)
            continue
        print(f"{label}: {options or '(defaults)'}", flush=True)
        before = cpu_times()
        results[label] = race(data, out / label, shlex.split(options), args.target, args.every, args.cap)
        results[label]["question"] = question
        results[label]["load"] = os.getloadavg()[0]
        results[label]["steal"] = steal_share(before, cpu_times())
        kept.write_text(json.dumps(results[label]))
    load_after = os.getloadavg()

    lines = [
        f"# Time to test NDCG@10 {args.target} on {name}, from nothing (`distill student-train`)",
        "",
        f"- command: `python -m bench.time_to_quality {shlex.join(sys.argv[1:])}`",
        f"- date: {dt.date.today()}; {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f}/{load_after[2]:.2f} (1/15 min) after",
        f"- each recipe trains one run in steps of {args.every} epochs (`--epochs k --resume`, exact "
        "resume); after each step, the test NDCG@10 of the epoch validation picked so far (test is read "
        "to time, never to pick)",
        "- training s: the epochs' own seconds (metrics.json); wall s: the steps' whole processes (a "
        "start-up, validation every epoch and a final test pass per step): an upper bound; epochs × median "
        "s: the epochs needed at the run's median epoch, less sensitive to a few epochs slowed by others; "
        "CPU stolen: the hypervisor's share of the machine's CPU time over the race (/proc/stat)",
        "",
        "| recipe | options | reached at epoch (picked epoch) | test NDCG@10 | valid NDCG@10 | training s | "
        "wall s | median epoch s | epochs × median s | load at its end | CPU stolen |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, result in results.items():
        last = result["steps"][-1]
        reached = last["test"] >= args.target
        history = json.loads((out / label / "metrics.json").read_text())["history"]
        median = statistics.median(e["seconds"] for e in history)
        steal = result.get("steal")
        lines.append(
            f"| {label} | `{recipes[label] or '(defaults)'}` | "
            + (f"{last['epochs']} ({last['best_epoch']})" if reached else f"not by epoch {last['epochs']}")
            + f" | {last['test']:.4f} | {last['valid']:.4f} | {last['train']:.0f} | {result['wall']:.0f} | "
            f"{median:.1f} | {median * last['epochs']:.0f} | {result['load']:.2f} | "
            + ("not measured" if steal is None else f"{steal:.0%}")
            + " |"
        )
    lines += ["", "## Steps", ""]
    for label, result in results.items():
        lines.append(
            f"- {label}: "
            + "; ".join(
                f"{s['epochs']} epochs: test {s['test']:.4f} (picked {s['best_epoch']}), {s['train']:.0f} s"
                for s in result["steps"]
            )
        )
    print(write_results(ROOT / "bench" / "results" / f"time_to_quality_{name}.md", lines))


if __name__ == "__main__":
    main()
