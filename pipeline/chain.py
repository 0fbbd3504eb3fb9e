"""``distill pipeline``: the whole pipeline, stage after stage, with a summary table at the end.

It sits above the stages (``pipeline → teacher, student, distill``): each stage is the same
``run(cfg)`` its own command calls.

```
OUT/data           the dataset directory (unless --data names one)
OUT/sasrec         SASRec on labels: the plain student (alpha = 0) and the teacher's ID encoder
OUT/teacher        the LLM teacher
OUT/scores         the teacher's top-k soft labels
OUT/grid/aA-tT     a distilled student per grid point (alpha A, temperature T)
OUT/distilled      the student picked on validation (a copy of OUT/sasrec when alpha 0 wins)
OUT/summary.md     test metrics of the three models side by side, and what was picked and why
OUT/summary.json   {"models": {name: {"test", "valid", "parameters", "ms_per_user"}}, "picked": {...}}
```

The recipe cannot make the student worse on validation: alpha = 0 (the plain student, same seed) is
always a candidate and a distilled one is picked only if it is strictly better on validation NDCG@10;
a teacher that ranks below the plain student on validation is not distilled at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from distill.config import PrepareConfig
from distill.data import Dataset
from distill.errors import DistillError
from distill.io import log, write_json
from distill.metrics import MASKING_NOTE, format_table
from distill.outputs import claim, remove_dir
from distill.prepare import run as prepare
from pipeline.config import ExportConfig, PipelineConfig
from pipeline.export import run as export_logits
from pipeline.runs import open_run
from student.config import StudentTrainConfig
from student.train import run as train_student
from teacher.config import TeacherTrainConfig
from teacher.train import run as train_teacher

# What the pipeline writes into its output directory: each stage's directory and its kind.
STAGES = {
    "data": "dataset",
    "sasrec": "run",
    "teacher": "run",
    "scores": "scores",
    "grid": "runs",
    "distilled": "run",
}
SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"
SUMMARY_TITLE = "# distill pipeline:"
SELECT_ON = "ndcg@10"
SKIPPED = "distillation skipped: the teacher is weaker"


def run(cfg: PipelineConfig) -> dict:
    """Run every stage; returns what ``summary.json`` holds."""
    out = Path(cfg.output)
    summaries = [out / SUMMARY_MD, out / SUMMARY_JSON]
    for path in summaries:  # the summaries are replaced at the end: refuse before any work if not ours
        if path.exists() and not _our_summary(path):
            raise DistillError(
                f"{path} exists and was not written by distill pipeline; refusing to replace it"
            )
    if claim(out, kind="outputs", layout=STAGES, overwrite=cfg.overwrite, what="pipeline output"):
        # Every stage there is one distill wrote (claim checked); other files and a dataset given with
        # --data stay.
        for name in STAGES:
            if (out / name).exists() and not (name == "data" and cfg.data is not None):
                remove_dir(out / name)
        for path in summaries:
            path.unlink(missing_ok=True)
    data = cfg.data
    if data is None:
        data = str(out / "data")
        log("== prepare: synthetic data")
        prepare(
            PrepareConfig(
                output=data, synthetic=True, num_users=cfg.num_users, num_items=cfg.num_items, seed=cfg.seed
            )
        )
    student = student_config(cfg, data)
    log("== student-train: the plain SASRec (alpha 0) and the teacher's ID encoder")
    plain = train_student(StudentTrainConfig(output=str(out / "sasrec"), **student))
    log(f"== teacher-train: {cfg.teacher} on {cfg.llm}")
    teacher = train_teacher(
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
    if teacher["valid"][SELECT_ON] < plain["valid"][SELECT_ON]:
        picked = {"alpha": 0.0, "temperature": None, "grid": [], "reason": why_skipped(teacher, plain)}
    else:
        log("== export-logits")
        export_logits(
            ExportConfig(
                runs=(str(out / "teacher"),),
                data=data,
                output=str(out / "scores"),
                top_k=cfg.top_k,
                positions=cfg.positions,
                device=cfg.device,
                overwrite=True,
            )
        )
        picked = pick(cfg, student, plain, str(out / "scores"), out / "grid")
    log(picked["reason"])
    source = out / "sasrec" if picked["alpha"] == 0 else out / "grid" / point_name(picked)
    shutil.copytree(source, out / "distilled")
    results = summarise(out, data, cfg, picked)
    write_json(out / SUMMARY_JSON, results)
    (out / SUMMARY_MD).write_text(f"{SUMMARY_TITLE} {out}\n\n```\n{summary(results)}\n```\n")
    return results


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
    """The student-train settings every student of the pipeline shares (plain and distilled)."""
    return {
        "data": data,
        "epochs": cfg.student_epochs,
        "max_len": cfg.max_len,
        "lr": 2e-3,
        "patience": 5,
        "seed": cfg.seed,
        "device": cfg.device,
    }


def pick(cfg: PipelineConfig, student: dict, plain: dict, scores: str, grid_dir: Path) -> dict:
    """Train a distilled student per (alpha, temperature) of the grid; pick the best on validation.

    alpha = 0 is the plain student (``plain``, same seed: training with alpha 0 reproduces it bit for
    bit), so it is not rerun; a grid point wins only if strictly better on validation NDCG@10.
    """
    best = {"alpha": 0.0, "temperature": None, "valid": plain["valid"][SELECT_ON]}
    grid = [{"alpha": 0.0, "temperature": None, "valid": best["valid"]}]
    for alpha in sorted(a for a in set(cfg.alphas) if a > 0):
        for temperature in cfg.temperatures:
            point = {"alpha": alpha, "temperature": temperature}
            log(f"== student-train with the teacher's scores: alpha {alpha}, temperature {temperature}")
            result = train_student(
                StudentTrainConfig(
                    output=str(grid_dir / point_name(point)),
                    teacher_scores=scores,
                    kd=cfg.kd,
                    alpha=alpha,
                    temperature=temperature,
                    **student,
                )
            )
            point["valid"] = result["valid"][SELECT_ON]
            grid.append(point)
            if point["valid"] > best["valid"]:
                best = point
    tried = ", ".join(
        f"alpha {p['alpha']:g}"
        + ("" if p["temperature"] is None else f" T {p['temperature']:g}")
        + f": {p['valid']:.4f}"
        for p in grid
    )
    if best["alpha"] == 0:
        reason = f"picked alpha 0 (the plain student): no distilled student beat it on valid {SELECT_ON}"
    else:
        reason = (
            f"picked alpha {best['alpha']:g}, temperature {best['temperature']:g}: valid {SELECT_ON} "
            f"{best['valid']:.4f} against {grid[0]['valid']:.4f} for the plain student"
        )
    return {
        "alpha": best["alpha"],
        "temperature": best["temperature"],
        "grid": grid,
        "reason": f"{reason} (valid {SELECT_ON}: {tried})",
    }


def point_name(point: dict) -> str:
    """The grid run directory of an (alpha, temperature) point."""
    return f"a{point['alpha']:g}-t{point['temperature']:g}"


def why_skipped(teacher: dict, plain: dict) -> str:
    return (
        f"{SKIPPED} (valid {SELECT_ON} {teacher['valid'][SELECT_ON]:.4f} against "
        f"{plain['valid'][SELECT_ON]:.4f} for the plain student); the distilled student is the plain one"
    )


def summarise(out: Path, data: str, cfg: PipelineConfig, picked: dict) -> dict:
    """``summary.json``: each model's metrics, size and scoring latency, and what was picked."""
    dataset = Dataset(data)
    models = {}
    for name, run_dir in (("student", "sasrec"), ("teacher", "teacher"), ("distilled", "distilled")):
        metrics = json.loads((out / run_dir / "metrics.json").read_text())
        scorer = open_run(out / run_dir, dataset, cfg.device)
        models[name] = {
            "run": run_dir,
            "test": metrics["test"],
            "valid": metrics["valid"],
            "parameters": scorer.parameters,
            "ms_per_user": scorer.ms_per_user(dataset, "test", 256),
        }
    models["teacher"]["kind"] = cfg.teacher
    return {"models": models, "picked": picked}


def summary(results: dict) -> str:
    """The test metrics of every model of a pipeline, side by side, and the pick: what it prints and saves."""
    models = results["models"]
    names = {
        "student": "SASRec",
        "teacher": f"teacher ({models['teacher']['kind']})",
        "distilled": "distilled SASRec",
    }
    table = format_table({names[n]: m["test"] for n, m in models.items()}, label="model")
    sizes = "\n".join(
        f"{names[n]:<22} {m['parameters']:>12,} parameters  {m['ms_per_user']:8.3f} ms per user to score"
        for n, m in models.items()
    )
    return f"test metrics ({MASKING_NOTE}):\n{table}\n\n{sizes}\n\n{results['picked']['reason']}"
