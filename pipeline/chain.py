"""``distill pipeline``: the whole pipeline, stage after stage, with a summary table at the end.

It sits above the stages (``pipeline → teacher, student, distill``): each stage is the same
``run(cfg)`` its own command calls.

```
OUT/data         the dataset directory (unless --data names one)
OUT/sasrec       SASRec on labels: the baseline and the teacher's ID encoder
OUT/teacher      the LLM teacher
OUT/scores       the teacher's top-k soft labels
OUT/distilled    SASRec on labels + soft labels
OUT/summary.md   test metrics of the three models side by side
```
"""

from __future__ import annotations

from pathlib import Path

from distill.config import PrepareConfig
from distill.metrics import MASKING_NOTE, format_table
from distill.outputs import PIPELINE_STAGES, PIPELINE_SUMMARY, claim, remove_dir
from distill.prepare import run as prepare
from distill.training import log
from pipeline.config import PipelineConfig
from student.config import StudentTrainConfig
from student.train import run as train_student
from teacher.config import ExportConfig, TeacherTrainConfig
from teacher.export import run as export_logits
from teacher.train import run as train_teacher

STAGES = tuple(PIPELINE_STAGES)


def run(cfg: PipelineConfig) -> dict[str, dict]:
    """Run every stage; returns the test metrics of the baseline, the teacher and the distilled student."""
    out = Path(cfg.output)
    if claim(out, kind="pipeline", overwrite=cfg.overwrite, what="pipeline output"):
        # Every stage there is one distill wrote (claim checked); other files and a dataset given with
        # --data stay.
        mine = STAGES if cfg.data is None else STAGES[1:]
        for name in mine:
            if (out / name).exists():
                remove_dir(out / name)
        summary_file = out / PIPELINE_SUMMARY
        if summary_file.is_file() and summary_file.read_text().startswith("# distill pipeline:"):
            summary_file.unlink()
    data = cfg.data
    if data is None:
        data = str(out / "data")
        log("== prepare: synthetic data")
        prepare(
            PrepareConfig(
                output=data, synthetic=True, num_users=cfg.num_users, num_items=cfg.num_items, seed=cfg.seed
            )
        )
    student = {
        "data": data,
        "epochs": cfg.student_epochs,
        "max_len": cfg.max_len,
        "lr": 2e-3,
        "patience": 5,
        "seed": cfg.seed,
        "device": cfg.device,
    }
    results = {}
    log("== student-train: the SASRec baseline and ID encoder")
    results["SASRec"] = train_student(StudentTrainConfig(output=str(out / "sasrec"), **student))
    log(f"== teacher-train: {cfg.teacher} on {cfg.llm}")
    results[f"teacher ({cfg.teacher})"] = train_teacher(
        TeacherTrainConfig(
            data=data,
            sasrec=str(out / "sasrec"),
            output=str(out / "teacher"),
            teacher=cfg.teacher,
            llm=cfg.llm,
            epochs=cfg.teacher_epochs,
            max_len=cfg.teacher_max_len,
            positions=cfg.positions,
            batch_size=16,
            seed=cfg.seed,
            device=cfg.device,
        )
    )
    log("== export-logits")
    export_logits(
        ExportConfig(
            run=str(out / "teacher"),
            data=data,
            output=str(out / "scores"),
            top_k=cfg.top_k,
            positions=cfg.positions,
            device=cfg.device,
            overwrite=True,
        )
    )
    log("== student-train with the teacher's scores")
    results["distilled SASRec"] = train_student(
        StudentTrainConfig(
            output=str(out / "distilled"),
            teacher_scores=str(out / "scores"),
            kd=cfg.kd,
            alpha=cfg.alpha,
            temperature=cfg.temperature,
            **student,
        )
    )
    (out / PIPELINE_SUMMARY).write_text(f"# distill pipeline: {out}\n\n```\n{summary(results)}\n```\n")
    return results


def summary(results: dict[str, dict]) -> str:
    """The test metrics of every model of a pipeline, side by side: what it prints and saves."""
    table = format_table({name: r["test"] for name, r in results.items()}, label="model")
    return f"test metrics ({MASKING_NOTE}):\n{table}"
