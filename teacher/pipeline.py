"""``distill pipeline``: the whole pipeline, stage after stage, with a summary table at the end.

It lives in ``teacher/`` because it is the one place allowed to see both sides (teacher imports
student and distill, never the reverse); each stage is the same ``run(cfg)`` its own command calls.

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

import shutil
from pathlib import Path

from distill.config import PrepareConfig
from distill.errors import DistillError
from distill.metrics import MASKING_NOTE, format_table
from distill.prepare import run as prepare
from distill.training import log
from student.config import StudentTrainConfig
from student.train import run as train_student
from teacher.config import ExportConfig, PipelineConfig, TeacherTrainConfig
from teacher.export import run as export_logits
from teacher.train import run as train_teacher

STAGES = ("data", "sasrec", "teacher", "scores", "distilled")


def run(cfg: PipelineConfig) -> dict[str, dict]:
    """Run every stage; returns the test metrics of the baseline, the teacher and the distilled student."""
    out = Path(cfg.output)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise DistillError(f"pipeline output {out} already exists (use --overwrite to replace its runs)")
        mine = STAGES if cfg.data is None else STAGES[1:]  # a dataset given with --data is never removed
        for name in mine:
            shutil.rmtree(out / name, ignore_errors=True)
        (out / "summary.md").unlink(missing_ok=True)
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
            samples_per_user=cfg.samples_per_user,
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
            positions=cfg.samples_per_user,
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
    table = format_table({name: r["test"] for name, r in results.items()}, label="model (test)")
    (out / "summary.md").write_text(f"# distill pipeline: {out}\n\n{MASKING_NOTE}\n\n```\n{table}\n```\n")
    return results
