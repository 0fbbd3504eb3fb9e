"""Teachers of several runs: does an ensemble or a cross-fit of wide SASRecs make distillation pay?

Arms, each a d=64 SASRec student (``--hidden 64 --max-len 200 --lr 0.001``) over the same paired seeds,
the same epoch budget and early-stopping rule on validation NDCG@10: labels alone (plain); KD
(``--kd kl --alpha 0.5 --temperature 1``, fixed beforehand, not tuned) from one d=128 SASRec (seed 0);
from an ensemble of three d=128 SASRecs (seeds 0, 1, 2: the single teacher is one of them); from a
5-fold cross-fit of d=128 SASRecs (``student-train --folds 5 --fold F``, every soft label out of fold);
and from the ensemble and the cross-fit together (all 8 runs in one ``export-logits`` call: 4 equal
members, the 3 seeds and the cross-fit, which ``open_runs`` groups into one). Each teacher's soft labels
come from ``distill export-logits --run … --all-positions`` (top ``--top-k`` items, or ``--top-k full``);
each teacher is scored by ``distill evaluate`` with all its runs; each KD student is set against the
plain student of its seed by ``distill compare``. Real commands as subprocesses. Writes
``bench/results/teachers_of_runs_<dataset>.md``; a ``## Reading`` section written by hand at the end of
that file is kept when it is regenerated.

    python -m bench.teachers_of_runs --data ../shared/data/ml-100k/ml-100k.inter [--seeds 0,1,2]
        [--top-k 100] [--epochs 200] [--patience 10] [--jobs 2] [--report-only]
        [--student-max-len 200] [--length-group N] [--teacher-lr 0.002] [--teacher-patience 5]
        [--prepared DATASET_DIR] [--member LABEL=RUN] [--alphas 0.5,0.9] [--temperatures 1,0.5]

``--member LABEL=RUN`` brings a run trained elsewhere on the same prepared dataset (``--prepared``: an LLM
teacher's, say) and adds two arms: ``member``, that run alone, and ``member-ensemble``, that run with the
three d=128 SASRecs, weights fitted on validation (``--weights fit``: an equal share would give the one
run a quarter whatever it knows).

``--alphas 0.5,0.9`` also distils every teacher at each other KD weight (arms ``<teacher>-a0.9``, at T 1),
``--temperatures 1,0.5`` at each other temperature (arms ``<teacher>-t0.5``, at α 0.5), and
sets those students against the recipe's (α 0.5), seed by seed and pooled.

Beauty (8.9 interactions a user) ran with ``--student-max-len 50 --length-group 8 --teacher-lr 0.001
--teacher-patience 10``: the recipe of ``bench.sampled_vs_full --kd``, whose plain students, teacher,
scores and KD students are this harness's ``plain-s*``, ``teacher-s0``, ``scores-single`` and
``kd-single-s*`` under the same commands (linked into its output folder rather than trained twice).

The teachers are SASRecs of the kd_value recipe (max_len 50, lr 0.002, patience 5: ``--teacher-*``),
about five times cheaper an epoch than the students' max_len 200; 8 of them had to fit a shared 2-core
machine.

``--jobs N`` runs up to N commands at once (each once the runs it needs have finished); the figures do not
depend on it, the seconds do. Runs carry over invocations: a finished run or score directory is reused,
an unfinished run resumed. ``--report-only`` trains and exports nothing and reports what has finished;
a report keeps each teacher evaluation and compare in ``bench/out/teachers_of_runs_<dataset>/reports/``
and reuses it while none of its runs has a newer metrics.json.
Each command runs under ``/usr/bin/time`` where there is one; its wall and CPU seconds are kept in
``bench/out/teachers_of_runs_<dataset>/times/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from bench import write_results
from student.config import TEMPERATURES

ROOT = Path(__file__).resolve().parents[1]
FOLDS = 5
ENSEMBLE_SEEDS = (0, 1, 2)
ARMS = ("single", "ensemble", "crossfit", "both")  # the teachers, cheapest first
MEMBER_ARMS = ("member", "member-ensemble")  # with --member
RECIPE = "the recipe"  # an arm at another α (-aA) is compared with the same teacher's α 0.5 students
PRINT = threading.Lock()


def rel(path: Path | str) -> str:
    return str(path).replace(f"{ROOT}/", "")


def command_line(args: list[str]) -> str:
    """A ``distill`` command as the report lists it: paths from the repo root."""
    return "distill " + shlex.join(rel(a) for a in args)


def say(text: str) -> None:
    with PRINT:
        print(text, flush=True)


class Job:
    """One ``distill`` command that writes ``done`` (a run's metrics.json, a score directory's manifest)
    once whole; ``needs``: the jobs whose outputs it reads."""

    def __init__(
        self, key: str, args: list[str], done: Path, needs: tuple[str, ...] = (), resume: Path | None = None
    ):
        self.key, self.args, self.done, self.needs, self.resume = key, args, done, needs, resume


def numbers(parser: argparse.ArgumentParser, option: str, text: str, fits, where: str) -> list[float]:
    """The comma-separated numbers of ``option``, each in ``where`` (``fits``) and said exactly by
    ``f"{v:g}"``, which names its arms; otherwise a one-line usage error."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        parser.error(f"{option} {text!r}: give numbers in {where}, comma-separated")
    if not all(map(fits, values)):
        parser.error(f"{option} {text!r}: each must be in {where}")
    if any(float(f"{v:g}") != v for v in values):
        parser.error(f"{option} {text!r}: give each with at most 6 significant digits")
    return values


def execute(job: Job, out: Path, report_only: bool, threads: int) -> None:
    """Run ``job`` on ``threads`` torch threads unless an earlier invocation finished it; its log and
    times go under ``out``."""
    if job.done.is_file() or report_only:
        return
    args = list(job.args)
    if job.resume is not None and (job.resume / "last" / "state.pt").is_file():
        args.append("--resume")
    (out / "logs").mkdir(exist_ok=True)
    (out / "times").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "cli", *args]
    timer = Path("/usr/bin/time")
    if timer.is_file():  # one JSON line per invocation: a resumed run has several
        spec = '{"wall": %e, "user": %U, "sys": %S}'
        command = [str(timer), "-a", "-o", str(out / "times" / f"{job.key}.jsonl"), "-f", spec, *command]
    say(f"$ {command_line(args)}")
    with open(out / "logs" / f"{job.key}.log", "a") as log:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(command, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    say(f"done {job.key}")


def run_all(jobs: list[Job], out: Path, workers: int, report_only: bool) -> None:
    """Run ``jobs`` on ``workers`` threads: whenever one is free, the first job in list order whose needs
    have finished (the list is the priority). Each job gets its share of the cores as torch threads: two
    jobs of two threads each on two cores ran a Beauty batch 2.3x slower than two of one thread (their
    OpenMP threads spin while the other job holds the core). An ``OMP_NUM_THREADS`` set by the caller wins
    (for harnesses sharing the machine with other jobs)."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // workers))
    done = {job.key for job in jobs if job.done.is_file()}  # finished by an earlier invocation
    pending, failed = [job for job in jobs if job.key not in done], []
    running: dict[Future, Job] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            for job in [j for j in pending if all(n in done for n in j.needs)]:
                if len(running) >= workers:
                    break
                pending.remove(job)
                running[pool.submit(execute, job, out, report_only, threads)] = job
            if not running:  # what is left needs a job that failed
                break
            for future in wait(running, return_when=FIRST_COMPLETED).done:
                job = running.pop(future)
                if future.exception() is None:
                    done.add(job.key)
                else:
                    failed.append(job.key)
                    say(f"failed {job.key}: {future.exception()}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (logs in {rel(out / 'logs')})")


def times(out: Path, key: str) -> dict | None:
    """Wall and CPU (user + system) seconds of a job over its invocations; None if none was timed."""
    path = out / "times" / f"{key}.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    if not rows:
        return None
    return {"wall": sum(r["wall"] for r in rows), "cpu": sum(r["user"] + r["sys"] for r in rows)}


def finished(run: Path) -> dict | None:
    """A finished run's metrics.json, with ``seconds``: the sum of its epochs' training seconds as its
    history records them (validation excluded), the same whether it went in one go or was resumed."""
    path = run / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    metrics["seconds"] = sum(epoch["seconds"] for epoch in metrics["history"])
    return metrics


def cached(out: Path, key: str, runs: list[Path], compute):
    """``compute()`` (JSON-able), kept in ``out/reports/<key>.json`` and reused while no run in ``runs``
    has a metrics.json newer than it: a report over finished runs recomputes only what changed."""
    path = out / "reports" / f"{key}.json"
    newest = max((r / "metrics.json").stat().st_mtime for r in runs)
    if path.is_file() and path.stat().st_mtime > newest:
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value


def last_result(output: str) -> str:
    """The result of ``distill compare``'s last line (after its run's name)."""
    return output.strip().splitlines()[-1].split(": ", 1)[1]


def distill_output(args: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return result.stdout


def evaluate(runs: list[Path], data: Path, extra: list[str] = ()) -> dict[str, dict[str, float]]:
    """``distill evaluate`` of ``runs`` scored as one: ``{split: {metric: value}}`` from its table."""
    args = ["evaluate", *(a for r in runs for a in ("--run", str(r))), "--data", str(data), "--device", "cpu"]
    args += extra
    lines = distill_output(args).strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["split"])
    names = lines[start].split()[1:]
    return {
        row.split()[0]: dict(zip(names, map(float, row.split()[1:]), strict=True))
        for row in lines[start + 1 :]
    }


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"{platform.machine()}, {os.cpu_count()} CPU cores ({model})"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/ml-100k/ml-100k.inter", help="an interaction file")
    parser.add_argument("--seeds", default="0,1,2", help="student seeds, comma-separated")
    parser.add_argument("--epochs", type=int, default=200, help="epoch cap of every run")
    parser.add_argument("--patience", type=int, default=10, help="of the students, on validation NDCG@10")
    parser.add_argument("--top-k", default="100", help="items per soft label row, or full (the catalogue)")
    parser.add_argument("--student-max-len", type=int, default=200)
    parser.add_argument("--length-group", type=int, help="student-train --length-group of every run")
    parser.add_argument("--teacher-max-len", type=int, default=50)
    parser.add_argument("--teacher-lr", default="0.002")
    parser.add_argument("--teacher-patience", type=int, default=5)
    parser.add_argument(
        "--arms", default=",".join(ARMS), help=f"teachers to distil, comma-separated, of {', '.join(ARMS)}"
    )
    parser.add_argument(
        "--small-hidden",
        type=int,
        help="also distil each teacher into students this wide, at α 0.5 and T 1 (vs plain d=64)",
    )
    parser.add_argument(
        "--precision", choices=("float32", "bfloat16"), help="student-train --precision of every run"
    )
    parser.add_argument(
        "--prepared",
        help="a prepared dataset directory to use instead of preparing --data (named after its parent)",
    )
    parser.add_argument(
        "--member",
        help="LABEL=RUN: a run trained on the --prepared dataset, distilled alone and with the SASRecs",
    )
    parser.add_argument(
        "--alphas",
        default="0.5",
        help="KD weights, comma-separated: 0.5 is the recipe; each other A adds arms named -aA",
    )
    parser.add_argument(
        "--temperatures",
        default="1",
        help="KD temperatures, comma-separated: 1 is the recipe; each other T adds arms named -tT",
    )
    parser.add_argument("--jobs", type=int, default=1, help="commands run at once")
    parser.add_argument("--report-only", action="store_true", help="train and export nothing")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = args.arms.split(",")
    known = ARMS + (MEMBER_ARMS if args.member else ())
    if not set(chosen) <= set(known):
        parser.error(f"--arms {args.arms!r}: each arm must be one of {', '.join(known)}")
    low, high = TEMPERATURES
    alphas = numbers(parser, "--alphas", args.alphas, lambda a: 0 < a <= 1, "(0, 1]")
    temperatures = numbers(parser, "--temperatures", args.temperatures, lambda t: low <= t <= high,
                           f"[{low:g}, {high:g}]")  # fmt: skip
    if args.member and "=" not in args.member:
        parser.error(f"--member {args.member!r}: give LABEL=RUN")
    if args.member and not args.prepared:
        parser.error("--member needs --prepared: the dataset its run was trained on")
    if args.prepared and not (Path(args.prepared) / "meta.json").is_file():
        parser.error(f"--prepared {args.prepared}: no meta.json (not a prepared dataset)")
    load_before, started = load(), time.perf_counter()
    inter = Path(args.data)
    name = Path(args.prepared).resolve().parent.name if args.prepared else inter.stem
    out = ROOT / "bench" / "out" / f"teachers_of_runs_{name}"
    out.mkdir(parents=True, exist_ok=True)  # with --prepared, nothing else makes it
    data = Path(args.prepared).resolve() if args.prepared else out / "data"
    prepare = ["prepare", str(inter.resolve()), "--output", str(data), "--overwrite"]
    if not (data / "meta.json").is_file():
        if args.report_only:
            parser.error(f"--report-only: {rel(data)} has not been prepared")
        subprocess.run([sys.executable, "-m", "cli", *prepare], cwd=ROOT, check=True)
    teacher_size = ["--hidden", "128", "--max-len", str(args.teacher_max_len), "--lr", args.teacher_lr,
                    "--epochs", str(args.epochs), "--patience", str(args.teacher_patience)]  # fmt: skip
    student_size = ["--hidden", "64", "--max-len", str(args.student_max_len), "--lr", "0.001",
                    "--epochs", str(args.epochs), "--patience", str(args.patience)]  # fmt: skip
    small = args.small_hidden
    small_size = None if small is None else ["--hidden", str(small), *student_size[2:]]
    grouped = [] if args.length_group is None else ["--length-group", str(args.length_group)]
    grouped += [] if args.precision is None else ["--precision", args.precision]

    def train(
        key: str, size: list[str], seed: int, extra: list[str] = (), needs: tuple[str, ...] = ()
    ) -> Job:
        run = out / key
        command = ["student-train", "--data", str(data), "--output", str(run), *size, "--seed", str(seed)]
        command += ["--device", "cpu", *grouped, *extra]
        return Job(key, command, run / "metrics.json", needs, resume=run)

    members = {f"teacher-s{s}": train(f"teacher-s{s}", teacher_size, s) for s in ENSEMBLE_SEEDS}
    folds = {
        f"fold{f}": train(f"fold{f}", teacher_size, 0, ["--folds", str(FOLDS), "--fold", str(f)])
        for f in range(FOLDS)
    }
    teachers = {  # arm -> (what it is, its runs, export/evaluate options)
        "single": ("one d=128 SASRec (seed 0)", ["teacher-s0"], []),
        "ensemble": ("ensemble of 3 d=128 SASRecs (seeds 0, 1, 2)", list(members), []),
        "crossfit": (f"{FOLDS}-fold cross-fit of d=128 SASRecs", list(folds), []),
        "both": (
            "ensemble + cross-fit (all 8 runs: 4 equal members, 3 seeds + the cross-fit)",
            [*members, *folds],
            [],
        ),
    }
    trained = {**members, **folds}  # the runs this harness trains
    where = {key: out / key for key in trained}  # run name -> its directory
    if args.member:
        label, run = args.member.split("=", 1)
        if label in trained or not label:
            parser.error(f"--member {args.member!r}: the label must be new (not one of this harness's runs)")
        where[label] = Path(run).resolve()
        teachers["member"] = (label, [label], [])
        teachers["member-ensemble"] = (
            f"{label} + the 3 d=128 SASRecs (weights fitted on validation)",
            [label, *members],
            ["--weights", "fit"],
        )
    teachers = {arm: teachers[arm] for arm in known if arm in chosen}
    size = ["--full"] if args.top_k == "full" else ["--top-k", args.top_k]
    exports = {}
    for arm, (_, runs, extra) in teachers.items():
        scores = out / f"scores-{arm}"
        command = [
            "export-logits", *(a for r in runs for a in ("--run", str(where[r]))), "--data", str(data),
            "--output", str(scores), "--all-positions", *size, "--batch-size", "256", "--device", "cpu",
            "--overwrite", *extra,
        ]  # fmt: skip
        needs = tuple(r for r in runs if r in trained)
        exports[arm] = Job(f"scores-{arm}", command, scores / "manifest.json", needs)
    kd = ["--kd", "kl"]

    sizes = {"": student_size} | ({} if small_size is None else {f"-d{small}": small_size})
    # arm-name suffix -> KD weight and temperature: the recipe's (0.5, 1), then each other α asked for at
    # T 1 and each other T at α 0.5
    variants = (
        {"": ["--alpha", "0.5", "--temperature", "1"]}
        | {f"-a{a:g}": ["--alpha", str(a), "--temperature", "1"] for a in alphas if a != 0.5}
        | {f"-t{t:g}": ["--alpha", "0.5", "--temperature", str(t)] for t in temperatures if t != 1}
    )

    def teacher_of(arm: str) -> str:
        """The teacher arm a student arm distils (its name without size or variant)."""
        arm = arm.split("-d")[0]
        return next((arm[: -len(v)] for v in variants if v and arm.endswith(v)), arm)

    def distilled(seed: int, arm: str) -> list[Job]:
        """The students of ``arm``'s teacher at ``seed``: d=64 at each KD weight and temperature asked
        for, and the small width if asked at the recipe's."""
        return [
            train(f"kd-{arm}{variant}{tag}-s{seed}", size, seed,
                  ["--teacher-scores", str(out / f"scores-{arm}"), *kd, *extra], (f"scores-{arm}",))
            for variant, extra in variants.items()
            for tag, size in sizes.items()
            if not (variant and tag)  # the small width at the recipe's α and T only
        ]  # fmt: skip

    # the first seed first, arm by arm (the runs its teacher still needs, its export, its students), so
    # that the cheaper arms finish first; then the other seeds. A run only exports already made need (its
    # directory gone) serves the report's teacher row alone: it goes last.
    exporting = {r for arm, (_, runs, _) in teachers.items() if not exports[arm].done.is_file() for r in runs}
    jobs, listed, last = [train(f"plain-s{seeds[0]}", student_size, seeds[0])], set(), []
    for arm, (_, runs, _) in teachers.items():
        for r in runs:
            if r in trained and r not in listed:
                (jobs if r in exporting else last).append(trained[r])
        listed.update(runs)
        jobs += [exports[arm], *distilled(seeds[0], arm)]
    for seed in seeds[1:]:
        jobs += [train(f"plain-s{seed}", student_size, seed)]
        jobs += [job for arm in teachers for job in distilled(seed, arm)]
    jobs += last
    run_all(jobs, out, args.jobs, args.report_only)

    # the report
    teacher_rows = []
    for arm, (what, runs, extra) in teachers.items():
        dirs = [where[r] for r in runs]
        if not all((d / "metrics.json").is_file() for d in dirs):
            continue
        metrics = cached(
            out, f"evaluate-{arm}", dirs, lambda dirs=dirs, extra=extra: evaluate(dirs, data, extra)
        )
        member = [finished(d) for d in dirs]
        train_s = sum(m["seconds"] for m in member)
        export_t = (
            times(out, f"scores-{arm}") if (out / f"scores-{arm}" / "manifest.json").is_file() else None
        )
        teacher_rows.append((arm, what, dirs, metrics, member, train_s, export_t, extra))
    arms = {"plain": "plain (labels only)"} | {
        f"{arm}{variant}{tag}": f"KD from the {what}"
        + (f", {'α' if variant.startswith('-a') else 'T'} {variant[2:]}" if variant else "")
        + (f" into d={tag[2:]}" if tag else "")
        for arm, (what, *_) in teachers.items()
        for variant in variants
        for tag in sizes
        if not (variant and tag)
    }
    results = {
        arm: {s: finished(out / f"{arm if arm == 'plain' else 'kd-' + arm}-s{s}") for s in seeds}
        for arm in arms
    }
    compares = []  # (arm, baseline arm, seed or "pooled", line, command)
    for arm in arms:
        if arm == "plain":
            continue
        # every arm against the plain d=64 student; the d=64 students of teachers of several runs against
        # the one SASRec's too, and those of the member's mixture against the SASRec ensemble's
        bases = ["plain"]
        bases += ["single"] if arm in teachers and arm != "single" and "single" in teachers else []
        bases += ["ensemble"] if arm == "member-ensemble" and "ensemble" in teachers else []
        tag = arm[len(arm.split("-d")[0]) :]  # the size's suffix, if any
        recipe = teacher_of(arm) + tag  # a variant's students against the recipe's, same teacher and size
        bases += [recipe] if recipe != arm and recipe in arms else []
        for base in bases:
            first = "plain" if base == "plain" else f"kd-{base}"
            against = RECIPE if base == recipe != arm else base
            paired = [s for s in seeds if results[base][s] is not None and results[arm][s] is not None]
            for seed in paired:
                one, other = out / f"{first}-s{seed}", out / f"kd-{arm}-s{seed}"
                compare = ["compare", str(one), str(other), "--data", str(data), "--device", "cpu"]
                line = cached(
                    out,
                    f"compare-{first}-kd-{arm}-s{seed}",
                    [one, other],
                    lambda compare=compare: last_result(distill_output(compare)),
                )
                compares.append((arm, against, seed, line, command_line(compare)))
            if len(paired) > 1:
                pairs = [(out / f"{first}-s{s}", out / f"kd-{arm}-s{s}") for s in paired]
                d = cached(
                    out,
                    f"pooled-{first}-kd-{arm}-s{''.join(map(str, paired))}",
                    [r for pair in pairs for r in pair],
                    lambda pairs=pairs: paired_runs(data, pairs),
                )
                zero = "excludes" if d["low"] > 0 or d["high"] < 0 else "contains"
                line = f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] ({zero} 0)"
                compares.append((arm, against, "pooled", f"{line}, seeds {paired} pooled", None))
    write_report(args, name, seeds, out, data, prepare, jobs, teacher_rows, arms, results, compares,
                 load_before, time.perf_counter() - started, teacher_of)  # fmt: skip


def paired_runs(data_dir: Path, pairs: list[tuple[Path, Path]]) -> dict:
    """Per-user test NDCG@10 of each pair's second run minus its first, averaged over the pairs (the same
    users in each), with ``distill compare``'s bootstrap over users (2,000 resamples, seed 0)."""
    from distill.data import Dataset
    from distill.metrics import per_user
    from pipeline.compare import paired_difference
    from pipeline.runs import open_run

    data = Dataset(data_dir)

    def values(run: Path):
        return per_user(open_run(run, data, "cpu").ranks(data, "test", 256)[1], "ndcg@10").numpy()

    diffs = [values(b) - values(a) for a, b in pairs]
    return paired_difference(sum(diffs) / len(diffs), 2000, 0)


def cost(out: Path, key: str, metrics: dict | None) -> str:
    timed = times(out, key)
    train = f"{metrics['seconds']:.0f}" if metrics else "—"
    return train if timed is None else f"{train} ({timed['wall']:.0f} / {timed['cpu']:.0f})"


def write_report(
    args,
    name,
    seeds,
    out,
    data,
    prepare,
    jobs,
    teacher_rows,
    arms,
    results,
    compares,
    load_before,
    total,
    teacher_of,
):
    plain, flag = results["plain"], "--report-only"
    lines = [
        f"# Teachers of several runs on {name}: one d=128 SASRec, an ensemble, a cross-fit → d=64 students",
        "",
        f"- command: `python -m bench.teachers_of_runs {shlex.join(a for a in sys.argv[1:] if a != flag)}`"
        + (f" (this file: the same with `{flag}`, from the runs it had trained)" if args.report_only else ""),
        f"- date: {datetime.date.today()}; {machine()}; "
        + (
            f"load average (1, 5, 15 min) {load()} when this report was written"
            if args.report_only
            else f"load average (1, 5, 15 min) {load_before} at the start, {load()} at the end of this "
            f"invocation ({total / 60:.1f} min; runs an earlier invocation finished are reused)"
        )
        + (
            ""
            if args.report_only
            else f"; up to {args.jobs} commands at once, each on cores/{args.jobs} torch threads"
        )
        + ": seconds depend on what shared the machine, the metrics do not",
        "- students: d=64 SASRec"
        + (f" (and d={args.small_hidden} where named)" if args.small_hidden else "")
        + f", 2 blocks, max_len {args.student_max_len}, lr 0.001, batch 128, "
        + (f"length groups of {args.length_group}, " if args.length_group else "")
        + (f"`--precision {args.precision}`, " if args.precision else "")
        + f"at most {args.epochs} "
        f"epochs, patience {args.patience} on validation NDCG@10, test at the best validation epoch; full "
        "ranking over the whole catalogue, history items masked. KD: kl, α 0.5, T 1 at every training "
        "position the teacher scored, fixed beforehand (nothing here is tuned, on test or on validation)"
        + ("; arms named with another α use it instead of 0.5" if args.alphas != "0.5" else "")
        + (
            "; arms named with another T use it instead of 1 (at T ≠ 1 the KL is over the teacher's top "
            "k renormalised: a score directory keeps each row's tail at T = 1 only)"
            if args.temperatures != "1"
            else ""
        ),
        f"- teachers: d=128 SASRecs, max_len {args.teacher_max_len}, lr {args.teacher_lr}, at most "
        f"{args.epochs} epochs, patience {args.teacher_patience}; soft labels: `export-logits "
        "--all-positions "
        f"{'--full' if args.top_k == 'full' else '--top-k ' + args.top_k}` (every training position, "
        f"{'the whole catalogue' if args.top_k == 'full' else 'the top ' + args.top_k + ' items'}); several "
        "runs: an equal-weight mixture of probabilities (unless named otherwise), the cross-fit's K runs "
        "each scoring the users it held out"
        + (
            f"; `--member {rel(args.member)}`: a run trained elsewhere on this dataset" if args.member else ""
        ),
        "- seconds: a run's training seconds are the sum of its epochs' seconds in its metrics.json "
        "(validation excluded); in brackets, where the command ran under /usr/bin/time, its whole-process "
        "wall / CPU (user + system) seconds",
        "",
        "## Teachers (`distill evaluate` with all their runs)",
        "",
        "| teacher | runs | valid NDCG@10 | test NDCG@10 | test HR@10 | members' best epochs | training s "
        "(sum of members) | export s (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, what, runs, metrics, member, train_s, export_t, _ in teacher_rows:
        exported = f"{export_t['wall']:.0f} / {export_t['cpu']:.0f}" if export_t else "—"
        lines.append(
            f"| {what} | {len(runs)} | {metrics['valid']['ndcg@10']:.4f} | {metrics['test']['ndcg@10']:.4f} "
            f"| {metrics['test']['hr@10']:.4f} | {', '.join(str(m['best_epoch']) for m in member)} "
            f"| {train_s:.0f} | {exported} |"
        )
    folds = [m for row in teacher_rows if row[0] == "crossfit" for m in row[4]]
    if folds:
        held = [f"{m['held_out']['test']['ndcg@10']:.4f}" for m in folds]
        lines += [
            "",
            f"Cross-fit runs' own held-out fold test NDCG@10 (metrics.json `held_out`): {', '.join(held)}.",
        ]
    lines += [
        "",
        "## Students (test NDCG@10 at the epoch picked on validation)",
        "",
        "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | valid NDCG@10 (mean) | best epoch / "
        "epochs run | gain vs plain per seed | training s per run (wall / CPU) | + teacher, once: training "
        "s of its runs + export wall s |",
        "|---|" + "---|" * (len(seeds) + 6),
    ]
    teacher_cost = {"plain": "none"} | {
        row[0]: f"{row[5]:.0f} + {row[6]['wall']:.0f}" if row[6] else f"{row[5]:.0f} + —"
        for row in teacher_rows
    }
    for arm, label in arms.items():
        runs = results[arm]
        done = [s for s in seeds if runs[s] is not None]
        if not done:
            continue
        cells = [f"{runs[s]['test']['ndcg@10']:.4f}" if runs[s] else "—" for s in seeds]
        gains = (
            "—"
            if arm == "plain"
            else ", ".join(
                f"{runs[s]['test']['ndcg@10'] - plain[s]['test']['ndcg@10']:+.4f}" for s in done if plain[s]
            )
        )
        epochs = ", ".join(f"{runs[s]['best_epoch']}/{len(runs[s]['history'])}" for s in done)
        key = "plain" if arm == "plain" else f"kd-{arm}"
        lines.append(
            f"| {label} | {' | '.join(cells)} "
            f"| {statistics.mean(runs[s]['test']['ndcg@10'] for s in done):.4f} "
            f"| {statistics.mean(runs[s]['valid']['ndcg@10'] for s in done):.4f} | {epochs} | {gains} "
            f"| {'; '.join(cost(out, f'{key}-s{s}', runs[s]) for s in done)} "
            f"| {teacher_cost.get(teacher_of(arm), '—')} |"
        )
    capped = [s for s in seeds if plain[s] and plain[s]["best_epoch"] >= args.epochs]
    lines += [
        "",
        "Plain students' best epochs: "
        + ", ".join(f"seed {s}: {plain[s]['best_epoch']} of {len(plain[s]['history'])} run"
                    for s in seeds if plain[s])
        + (f" — the cap of {args.epochs} binds at seed(s) {capped}" if capped
           else f" (cap {args.epochs}: none reached it; each stopped on patience after its best epoch)"),
        "",
        "## Paired per-user test NDCG@10, KD minus plain of the same seed (`distill compare`, bootstrap 95%)",
        "",
    ]  # fmt: skip

    def paired_lines(base: str) -> list[str]:
        return [
            f"- **{arms[arm]}, pooled** (each user's difference averaged over the paired seeds, users "
            f"resampled): {line}"
            if seed == "pooled"
            else f"- {arms[arm]}, seed {seed}: {line}"
            for arm, against, seed, line, _ in compares
            if against == base
        ]

    lines += paired_lines("plain") or ["- none finished yet"]
    if against_single := paired_lines("single"):
        lines += [
            "",
            "## Does a teacher of several runs teach more than the one SASRec? KD from it minus KD from "
            "the one d=128 SASRec, same seed",
            "",
            *against_single,
        ]
    if against_recipe := paired_lines(RECIPE):
        lines += [
            "",
            "## Does another α or T teach more than the recipe's? KD at that α or T minus KD from the same "
            "teacher at α 0.5, T 1, same seed",
            "",
            *against_recipe,
        ]
    if against_ensemble := paired_lines("ensemble"):
        lines += [
            "",
            "## Does the member add to the SASRec ensemble? KD from their mixture minus KD from the ensemble "
            "of 3 d=128 SASRecs, same seed",
            "",
            *against_ensemble,
        ]
    lines += ["", "## Commands", "", "```"]
    lines += [] if args.prepared else [command_line(["prepare", args.data, *prepare[2:]])]
    lines += [command_line(job.args) for job in jobs if job.done.is_file()]
    lines += [
        command_line(["evaluate", *(a for r in row[2] for a in ("--run", str(r))),
                      "--data", str(data), "--device", "cpu", *row[7]])
        for row in teacher_rows
    ]  # fmt: skip
    lines += [c for *_, c in compares if c]
    lines += ["```", ""]
    print(write_results(ROOT / "bench" / "results" / f"teachers_of_runs_{name}.md", lines))


if __name__ == "__main__":
    main()
