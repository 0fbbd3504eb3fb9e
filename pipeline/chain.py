"""``distill pipeline``: the whole pipeline, stage after stage, with a summary table at the end.

It sits above the stages (``pipeline → teacher, student, distill``): each stage is the same
``run(cfg)`` its own command calls.

```
OUT/data               the dataset directory (unless --data names one)
OUT/sasrec             the teacher's SASRec (--teacher-hidden wide): the LLM teacher's ID encoder,
                       or the teacher itself with --teacher sasrec
OUT/teacher            the LLM teacher
OUT/scores             the teacher's soft labels
OUT/grid/plain-sS      the plain student (--student-hidden wide, alpha 0) at seed S
OUT/grid/KD-aA[-tT]-sS a distilled student per grid point (loss KD, alpha A, temperature T) and seed
OUT/distilled          the student picked on validation (a copy of its first seed's run)
OUT/summary.md         test metrics of the three models side by side, what was picked and why, and the
                       paired test difference of distilled minus plain
OUT/summary.json       {"models": {name: {"test", "valid", "parameters", "ms_per_user"}}, "picked": {...},
                        "paired_test": {...}}
```

The recipe cannot make the student worse on validation: alpha = 0 (the plain student, same seeds) is
always a candidate and a distilled one is picked only if it is strictly better on the mean validation
NDCG@10 of its seeds; a teacher that ranks below the plain student on validation is not distilled at all.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from distill.config import PrepareConfig
from distill.data import Dataset
from distill.errors import DistillError
from distill.io import log, write_json
from distill.metrics import MASKING_NOTE, format_table, per_user
from distill.outputs import claim, clean_stale, replacing, set_aside
from distill.prepare import run as prepare
from pipeline.compare import paired_difference
from pipeline.config import ExportConfig, PipelineConfig
from pipeline.export import run as export_logits
from pipeline.runs import open_runs
from student.config import StudentTrainConfig
from student.train import run as train_student
from teacher.backbone import locate_backbone
from teacher.config import TeacherTrainConfig
from teacher.train import run as train_teacher

# What the pipeline writes into its output directory: each stage's directory and its kind.
STAGES = {
    "data": "dataset",
    "sasrec": "run",
    "teacher": "run",
    "members": "runs",
    "scores": "scores",
    "grid": "runs",
    "distilled": "run",
}
SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"
SUMMARY_TITLE = "# distill pipeline:"
SELECT_ON = "ndcg@10"
SKIPPED = "distillation skipped: the teacher is weaker"


@replacing(resumable=False)
def run(cfg: PipelineConfig) -> dict:
    """Run every stage; returns what ``summary.json`` holds."""
    out = Path(cfg.output)
    clean_stale(out, put_back_all=True)  # a killed --overwrite's parts come back whole: it does not resume
    summaries = [out / SUMMARY_MD, out / SUMMARY_JSON]
    for path in summaries:  # the summaries are replaced at the end: refuse before any work if not ours
        if path.exists() and not _our_summary(path):
            raise DistillError(
                f"{path} exists and was not written by distill pipeline; refusing to replace it"
            )
    if cfg.teacher in ("moe-lora", "e4srec") and cfg.llm != "tiny":
        locate_backbone(cfg.llm)  # a wrong --llm fails now, not after the SASRec has trained
    claim(out, kind="outputs", layout=STAGES, overwrite=cfg.overwrite, what="pipeline output")
    # Every stage there is one distill wrote (claim checked): each is set aside until the job ends, put
    # back if it fails, as what it wrote goes; other files and a dataset given with --data stay.
    for name in STAGES:
        if not (name == "data" and cfg.data is not None):
            set_aside(out / name)
    for path in summaries:
        set_aside(path)
    seconds: dict[str, float] = {}  # wall time of each stage
    data = cfg.data
    if data is None:
        data = str(out / "data")
        with stage(seconds, "prepare", "prepare: synthetic data"):
            prepare(
                PrepareConfig(
                    output=data,
                    synthetic=True,
                    num_users=cfg.num_users,
                    num_items=cfg.num_items,
                    seed=cfg.seed,
                )
            )
    student = student_config(cfg, data)
    with stage(seconds, "teacher's SASRec", f"student-train: the teacher's SASRec (d={cfg.teacher_hidden})"):
        train_student(StudentTrainConfig(output=str(out / "sasrec"), hidden=cfg.teacher_hidden, **student))
    teacher_runs = [out / "sasrec"]
    if cfg.teacher in ("ensemble", "cross-fit"):
        with stage(seconds, "teacher", f"student-train: the {cfg.teacher} teacher's other SASRecs"):
            teacher_runs = train_members(cfg, student, out / "members", teacher_runs)
    elif cfg.teacher != "sasrec":
        with stage(seconds, "teacher", f"teacher-train: {cfg.teacher} on {cfg.llm}"):
            train_teacher(
                TeacherTrainConfig(
                    data=data,
                    sasrec=str(out / "sasrec"),
                    output=str(out / "teacher"),
                    teacher=cfg.teacher,
                    llm=cfg.llm,
                    epochs=cfg.teacher_epochs,
                    prompt_items=cfg.teacher_prompt_items,
                    batch_size=16,
                    seed=cfg.seed,
                    device=cfg.device,
                )
            )
        teacher_runs = [out / "teacher"]
    teacher = run_metrics(teacher_runs, Dataset(data), cfg.device)
    with stage(
        seconds, "plain student", f"student-train: the plain student (d={cfg.student_hidden}, alpha 0)"
    ):
        plain = train_point(cfg, student, {"kd": None, "alpha": 0.0, "temperature": None}, None, out / "grid")
    if teacher["valid"][SELECT_ON] < plain["valid"]:
        picked = {**plain, "grid": [plain], "reason": why_skipped(teacher, plain)}
    else:
        with stage(seconds, "export", "export-logits"):
            export_logits(
                ExportConfig(
                    runs=tuple(map(str, teacher_runs)),
                    data=data,
                    output=str(out / "scores"),
                    top_k=cfg.top_k,
                    positions=cfg.positions,
                    device=cfg.device,
                    overwrite=True,
                )
            )
        started = time.perf_counter()
        picked = pick(cfg, student, plain, str(out / "scores"), out / "grid")
        seconds["distilled students"] = time.perf_counter() - started
    log(picked["reason"])
    shutil.copytree(out / "grid" / point_name(picked, cfg.seed), out / "distilled")
    with stage(seconds, "summary", "summary: metrics, sizes, latency, the paired test difference"):
        results = summarise(out, data, cfg, picked, teacher_runs)
    results["seconds"] = seconds
    write_json(out / SUMMARY_JSON, results)
    (out / SUMMARY_MD).write_text(f"{SUMMARY_TITLE} {out}\n\n```\n{summary(results)}\n```\n")
    return results


@contextlib.contextmanager
def stage(seconds: dict[str, float], name: str, what: str) -> Iterator[None]:
    """Log a stage's start and add its wall time to ``seconds[name]``."""
    log(f"== {what}")
    started = time.perf_counter()
    yield
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started


def _our_summary(path: Path) -> bool:
    """Whether ``path`` is a summary an earlier ``distill pipeline`` wrote."""
    try:
        text = path.read_text()
        if path.name == SUMMARY_MD:
            return text.startswith(SUMMARY_TITLE)
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and {"models", "picked"} <= data.keys()


def student_config(cfg: PipelineConfig, data: str) -> dict:
    """The student-train settings every SASRec of the pipeline shares (the teacher's and the students)."""
    return {
        "data": data,
        "epochs": cfg.student_epochs,
        "max_len": cfg.max_len,
        "length_group": cfg.length_group,
        "lr": 2e-3,
        "patience": 5,
        "seed": cfg.seed,
        "device": cfg.device,
    }


def grid_points(cfg: PipelineConfig) -> list[dict]:
    """The distilled students to try: ``kl`` at every alpha × temperature, ``rank`` at every alpha
    (it has no temperature); alpha 0 is the plain student, trained once."""
    alphas = sorted(a for a in set(cfg.alphas) if a > 0)
    points = []
    for kd in dict.fromkeys(cfg.kd):
        for alpha in alphas:
            for temperature in dict.fromkeys(cfg.temperatures) if kd == "kl" else (1.0,):
                points.append({"kd": kd, "alpha": alpha, "temperature": temperature})
    return points


def train_point(cfg: PipelineConfig, student: dict, point: dict, scores: str | None, grid_dir: Path) -> dict:
    """Train one grid point over ``cfg.seeds`` paired seeds; ``point`` with each seed's validation and
    test NDCG@10 and their means."""
    valid, test = [], []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        distill = {} if point["alpha"] == 0 else {"teacher_scores": scores, **point}
        result = train_student(
            StudentTrainConfig(
                output=str(grid_dir / point_name(point, seed)),
                hidden=cfg.student_hidden,
                **{**student, "seed": seed},
                **distill,
            )
        )
        valid.append(result["valid"][SELECT_ON])
        test.append(result["test"][SELECT_ON])
    return {**point, "valid": sum(valid) / len(valid), "test": sum(test) / len(test), "valid_by_seed": valid}


def pick(cfg: PipelineConfig, student: dict, plain: dict, scores: str, grid_dir: Path) -> dict:
    """Train a distilled student per grid point (:func:`grid_points`); pick the best on the mean
    validation NDCG@10 over the paired seeds. The plain student (``plain``, alpha 0) is a candidate: a
    grid point wins only if strictly better. Test is never looked at."""
    best, grid = plain, [plain]
    for point in grid_points(cfg):
        log(f"== student-train with the teacher's scores: {describe(point)}")
        point = train_point(cfg, student, point, scores, grid_dir)
        grid.append(point)
        if point["valid"] > best["valid"]:
            best = point
    seeds = f"mean of {cfg.seeds} seeds' " if cfg.seeds > 1 else ""
    tried = ", ".join(f"{describe(p)}: {p['valid']:.4f}" for p in grid)
    if best["alpha"] == 0:
        reason = (
            f"picked alpha 0 (the plain student): no distilled student beat it on {seeds}valid {SELECT_ON}"
        )
    else:
        reason = (
            f"picked {describe(best)}: {seeds}valid {SELECT_ON} {best['valid']:.4f} against "
            f"{plain['valid']:.4f} for the plain student"
        )
    return {**best, "grid": grid, "reason": f"{reason} ({seeds}valid {SELECT_ON}: {tried})"}


def describe(point: dict) -> str:
    if point["alpha"] == 0:
        return "alpha 0"
    temperature = f" T {point['temperature']:g}" if point["kd"] == "kl" else ""
    return f"{point['kd']} alpha {point['alpha']:g}{temperature}"


def point_name(point: dict, seed: int) -> str:
    """The grid run directory of a point at one seed."""
    if point["alpha"] == 0:
        return f"plain-s{seed}"
    temperature = f"-t{point['temperature']:g}" if point["kd"] == "kl" else ""
    return f"{point['kd']}-a{point['alpha']:g}{temperature}-s{seed}"


def why_skipped(teacher: dict, plain: dict) -> str:
    return (
        f"{SKIPPED} (valid {SELECT_ON} {teacher['valid'][SELECT_ON]:.4f} against "
        f"{plain['valid']:.4f} for the plain student); the distilled student is the plain one"
    )


def train_members(cfg: PipelineConfig, student: dict, members: Path, first: list[Path]) -> list[Path]:
    """The SASRecs of an ensemble or cross-fit teacher (``--teacher-hidden`` wide): ``cfg.members``
    seeds (the teacher's SASRec is the first) or the ``cfg.members`` folds of a cross-fit."""
    runs = list(first) if cfg.teacher == "ensemble" else []
    for k in range(1 if cfg.teacher == "ensemble" else 0, cfg.members):
        if cfg.teacher == "ensemble":
            extra = {"seed": cfg.seed + k}
            run = members / f"seed{cfg.seed + k}"
        else:
            extra = {"folds": cfg.members, "fold": k}
            run = members / f"fold{k}"
        train_student(StudentTrainConfig(output=str(run), hidden=cfg.teacher_hidden, **{**student, **extra}))
        runs.append(run)
    return runs


def run_metrics(runs: list[Path], data: Dataset, device: str) -> dict:
    """A teacher's validation and test metrics: its run's ``metrics.json``, or those of several runs
    scoring as one (an ensemble or a cross-fit, computed here)."""
    if len(runs) == 1:
        return json.loads((runs[0] / "metrics.json").read_text())
    scorer = open_runs(runs, data, device)
    return {split: scorer.evaluate(data, split, 256) for split in ("valid", "test")}


def summarise(out: Path, data: str, cfg: PipelineConfig, picked: dict, teacher_runs: list[Path]) -> dict:
    """``summary.json``: each model's metrics, size and scoring latency, what was picked, and the paired
    per-user test difference of the distilled student against the plain one (as ``distill compare``)."""
    dataset = Dataset(data)
    runs = {
        "teacher": teacher_runs,
        "student": [out / "grid" / point_name({"alpha": 0.0}, cfg.seed)],
        "distilled": [out / "distilled"],
    }
    models, ranks = {}, {}
    for name, run_dirs in runs.items():
        metrics = run_metrics(run_dirs, dataset, cfg.device)
        scorer = open_runs(run_dirs, dataset, cfg.device)
        _, ranks[name] = scorer.ranks(dataset, "test", 256)
        models[name] = {
            "run": ",".join(str(run_dir.relative_to(out)) for run_dir in run_dirs),
            "test": metrics["test"],
            "valid": metrics["valid"],
            "parameters": scorer.parameters,
            "ms_per_user": scorer.ms_per_user(dataset, "test", 256, max_users=256),  # one full batch
        }
    models["teacher"]["kind"] = cfg.teacher
    diffs = (per_user(ranks["distilled"], SELECT_ON) - per_user(ranks["student"], SELECT_ON)).numpy()
    paired = paired_difference(diffs, samples=10_000, seed=0)
    return {"models": models, "picked": picked, "paired_test": paired, "llm": cfg.llm}


def summary(results: dict) -> str:
    """The test metrics of every model of a pipeline, side by side, and the pick: what it prints and saves."""
    models = results["models"]
    names = {
        "teacher": f"teacher ({models['teacher']['kind']})",
        "student": "plain SASRec",
        "distilled": "distilled SASRec",
    }
    table = format_table({names[n]: models[n]["test"] for n in names}, label="model")
    sizes = "\n".join(
        f"{names[n]:<22} {models[n]['parameters']:>12,} parameters  "
        f"{_latency(models[n]['ms_per_user'])} per user to score"
        for n in names
    )
    paired = results["paired_test"]
    verdict = "excludes 0" if paired["low"] > 0 or paired["high"] < 0 else "contains 0: not told apart"
    lines = [
        f"test metrics ({MASKING_NOTE}):",
        "hr@K: share of users whose next item is in the top K; ndcg@K: the same, discounted by its rank; "
        "mrr: mean of 1 / rank",
        table,
        "",
        sizes,
        "",
        results["picked"]["reason"],
        f"distilled minus plain, test {SELECT_ON} per user: {paired['mean']:+.4f}, bootstrap 95% interval "
        f"[{paired['low']:+.4f}, {paired['high']:+.4f}] ({verdict}; {paired['wins']} users better, "
        f"{paired['losses']} worse of {paired['users']})",
    ]
    if "seconds" in results:
        lines.append("wall time: " + ", ".join(f"{name} {t:.0f} s" for name, t in results["seconds"].items()))
    if models["teacher"]["kind"] in ("moe-lora", "e4srec"):
        lines.append(TINY_NOTE if results.get("llm") == "tiny" else "")
    return "\n".join(line for line in lines if line is not None).rstrip()


TINY_NOTE = (
    "the built-in 'tiny' backbone is a small random Llama, for a fast demo: it knows no language. "
    "Use a real one with --llm (a .gguf file, a model directory or a hub id)."
)


def _latency(ms: float) -> str:
    """Milliseconds at a precision a median of a few passes supports (two significant digits)."""
    return f"{ms:8.2g} ms" if ms < 10 else f"{ms:8.0f} ms"
