"""The ``distill`` command line: parse options, build one config, call one ``run(cfg)``, print.

Nothing here imports torch at module level, so ``distill --help`` stays fast; each command imports
its stage when it runs. Option values override ``--set`` which overrides ``--config`` which
overrides the config dataclass's defaults. An option's type, choices and shown default come from
the field it sets; options that several commands share are worded once, in :data:`SHARED`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import shutil
import types
import typing
from collections.abc import Callable
from typing import Any

import click

from distill.config import PrepareConfig
from distill.errors import DistillError
from pipeline.config import (
    CompareConfig,
    EvaluateConfig,
    ExportConfig,
    PipelineConfig,
    RecommendConfig,
    ServeConfig,
)
from student.config import ExportModelConfig, StudentTrainConfig
from teacher.config import TeacherTrainConfig

# Options worded the same wherever they appear: config field -> (flags, help).
SHARED: dict[str, tuple[tuple[str, ...], str]] = {
    "data": (("--data",), "Dataset directory from `distill prepare`."),
    "output": (("--output", "-o"), "Run directory to write."),
    "sasrec": (("--sasrec",), "A `distill student-train` run."),
    "epochs": (("--epochs",), "Maximum number of epochs."),
    "batch_size": (("--batch-size",), "Rows per batch."),
    "max_len": (("--max-len",), "Longest history the model reads."),
    "lr": (("--lr",), "Learning rate."),
    "weight_decay": (("--weight-decay",), "Weight decay."),
    "patience": (("--patience",), "Stop after this many validations without a better NDCG@10 (0: never)."),
    "seed": (("--seed",), "Random seed."),
    "device": (("--device",), "auto, cpu, cuda or cuda:N."),
    "resume": (("--resume",), "Continue the run in --output from its last epoch."),
    "overwrite": (("--overwrite",), "Replace an existing output that distill wrote."),
}


# Errors of the machine rather than of distill (no permission, a full or read-only disk, a path through a
# file): one line naming the path, never a traceback.
ENVIRONMENT_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENOTDIR,
    errno.ENOENT,
    errno.EISDIR,
    errno.ENAMETOOLONG,
    errno.EEXIST,
    errno.ENOTEMPTY,
}


def _remove_failed(output: str | None, fresh: bool) -> None:
    """A failed command leaves nothing behind: an output it created goes whole (all of it is this
    command's), unless it holds a run checkpoint that ``--resume`` continues from (a run that failed
    after an epoch, which its error message points to)."""
    if not (fresh and output is not None) or os.path.islink(output):
        return
    from distill.io import is_main_process
    from distill.outputs import holds_checkpoint

    if not is_main_process():  # rank 0 cleans, once every rank has stopped writing
        return
    if holds_checkpoint(output):
        return
    if os.path.isdir(output):
        shutil.rmtree(output, ignore_errors=True)
    elif os.path.isfile(output):
        with contextlib.suppress(OSError):
            os.unlink(output)


def _environment_error(e: Exception, output: str | None) -> str | None:
    """One line for a failure of the machine rather than of distill: no permission, a read-only or
    full disk (which polars, torch and safetensors report in their own types and words around the OS's
    ENOSPC), a path through a file, or memory that could not be allocated. None for anything else."""
    text = str(e)
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
        from distill.io import write_failure

        return f"cannot write {output or '.'}: {write_failure(e, output or '.')}"
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
        name = os.path.basename(str(e.filename or ""))
        # A writer's temporary beside the output (.NAME.tmp-PID): the user knows the output's name.
        temporary = output and name.startswith(f".{os.path.basename(output)}.tmp-")
        where = f"{output if temporary else e.filename}: " if e.filename else ""
        return f"cannot write or read {where}{e.strerror}"
    if (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or (isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))
    ):
        from distill.io import first_line

        return f"out of memory ({first_line(e)[:200]}); lower --max-len, --batch-size or the model's size"
    return None


def _click_type(cls: type, key: str) -> dict[str, Any]:
    """click's ``type`` (or ``is_flag``) for a config field, from its annotation."""
    hint = typing.get_type_hints(cls)[key]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `int | None` -> int
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        return {"is_flag": True}
    if typing.get_origin(hint) is typing.Literal:
        return {"type": click.Choice(typing.get_args(hint))}
    if typing.get_origin(hint) is tuple:
        return {"type": str}  # comma-separated, split by the config
    return {"type": hint}


def _option(cls: type, field: dataclasses.Field) -> Callable:
    """The click option of a config field declared with :func:`distill.config.option`: its flags, help
    and shown default from the field (or :data:`SHARED`), its type from the annotation."""
    shared_decls, shared_help = SHARED.get(field.name, ((), ""))
    decls = field.metadata["flags"] or shared_decls or ("--" + field.name.replace("_", "-"),)
    help = field.metadata["help"] or shared_help
    kwargs = {"type": str, "multiple": True} if field.metadata["multiple"] else _click_type(cls, field.name)
    if field.default not in (None, "", False, ()) and not kwargs.get("is_flag"):
        shown = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
        help = f"{help}  [default: {shown}]"
    # None = not given: the config file or the dataclass default decides.
    return click.option(*decls, field.name, help=help, default=None, **kwargs)


def _command(cls: type, *, single_process: bool = False) -> Callable:
    """The options of config ``cls``, ``--config``/``--set``, resolution and one-line errors around a
    command body, which receives the resolved config (``cfg``) and any arguments that are not fields."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(config_file: str | None, sets: tuple[str, ...], **options: Any) -> Any:
            from distill.config import resolve

            names = {f.name for f in dataclasses.fields(cls)}
            extra = {k: options.pop(k) for k in list(options) if k not in names}
            options = {k: v for k, v in options.items() if v != ()}  # no INPUTS: the config's stand
            output, fresh = None, False
            try:
                if single_process and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                    raise DistillError(
                        f"`distill {click.get_current_context().info_name}` runs in one process; only "
                        "student-train, teacher-train and export-logits run under torchrun"
                    )
                cfg = resolve(cls, file=config_file, sets=sets, options=options)
                output = getattr(cfg, "output", None) or None
                fresh = output is not None and not os.path.lexists(output)
                result = fn(cfg, **extra)
                if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # this rank meets the others at exit
                    from distill.dist import succeeded

                    succeeded()
                return result
            except DistillError as e:
                _remove_failed(output, fresh)
                raise click.ClickException(str(e)) from None
            except Exception as e:
                message = _environment_error(e, output)
                if message is None:  # a bug: its traceback is what a report needs
                    raise
                _remove_failed(output, fresh)
                raise click.ClickException(message) from None
            except KeyboardInterrupt:  # Ctrl-C: what this command began goes, as on an error
                _remove_failed(output, fresh)
                raise

        for field in reversed(dataclasses.fields(cls)):
            if "help" in field.metadata:
                wrapper = _option(cls, field)(wrapper)
        wrapper = click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override one config value (repeatable).",
        )(wrapper)
        return click.option(
            "--config", "config_file", type=click.Path(dir_okay=False), help="TOML file of config values."
        )(wrapper)

    return decorate


def _print_results(results: dict) -> None:
    """What a training command prints at the end: the selected epoch and its metric table."""
    from distill.metrics import format_table

    click.echo(f"best epoch {results['best_epoch']} (selected on {results['selected_on']})")
    click.echo(format_table({"valid": results["valid"], "test": results["test"]}))


class _OnceCommand(click.Command):
    """A command whose single ``--run`` (``recommend``, ``serve``, ``export-model``) may be given once.
    click keeps the last of repeated values (the override idiom, ``$COMMON --hidden 32``, which stays),
    but ``recommend --run A --run B`` silently dropped A where ``evaluate``, ``compare`` and
    ``export-logits`` score several runs as one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        single = any(
            isinstance(p, click.Option) and "--run" in p.opts and not p.multiple for p in self.params
        )
        given = args[: args.index("--")] if "--" in args else args
        times = sum(a == "--run" or a.startswith("--run=") for a in given)
        if single and times > 1:
            raise click.UsageError(
                f"--run given {times} times: {ctx.info_name} takes one run (evaluate, compare and "
                "export-logits score several as one)",
                ctx,
            )
        return super().parse_args(ctx, args)


class _Group(click.Group):
    command_class = _OnceCommand


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="distill")
def main() -> None:
    """Distill an LLM-based sequential recommender into a small SASRec student.

    \b
    Pipeline:
      distill prepare        raw interactions -> dataset directory
      distill student-train  SASRec on labels (also the teacher's ID encoder)
      distill teacher-train  an LLM teacher (MoE-LoRA or E4SRec) on top of a SASRec run
      distill export-logits  a run's top-k item scores (a teacher, or a wide SASRec): soft labels
      distill student-train --teacher-scores DIR   the student on labels + soft labels
      distill pipeline       all of the above on the synthetic data (the quickstart)
      distill evaluate       full-ranking metrics of a saved run
      distill compare        runs side by side, with paired per-user differences and their uncertainty

    \b
    Using a student:
      distill recommend      top-k items for a user or a history of raw item ids
      distill export-model   the student as ONNX, with its item vocabulary and vectors
      distill serve          the student over HTTP
    """


# ---------------------------------------------------------------------------------------------- prepare
@main.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@_command(PrepareConfig, single_process=True)
def prepare(cfg: PrepareConfig) -> None:
    """Turn raw interactions (or --synthetic data) into a dataset directory.

    INPUTS are interaction files of one format: SASRec `user item` lines, one user per line
    (`user i1 i2 ...`), RecBole `.inter`, MovieLens `ratings.dat` or `u.data`, CSV/TSV/Parquet with
    named columns, or JSON Lines (Amazon reviews). Columns are found by name (user_id, item_id,
    parent_asin, asin, business_id, timestamp, date, ... in any case) or given with --user-col,
    --item-col, --time-col.
    """
    from distill import prepare as stage

    meta = stage.run(cfg)
    click.echo(f"wrote {cfg.output}")
    click.echo(stage.summary(meta))


# ---------------------------------------------------------------------------------------------- student
@main.command("student-train")
@_command(StudentTrainConfig)
def student_train(cfg: StudentTrainConfig) -> None:
    """Train a SASRec student on next-item labels (and a teacher's soft labels with --teacher-scores).

    Selects the epoch on validation NDCG@10 and reports test metrics of that epoch.
    """
    from student.train import run

    _print_results(run(cfg))


# ---------------------------------------------------------------------------------------------- teacher
@main.command("teacher-train")
@_command(TeacherTrainConfig)
def teacher_train(cfg: TeacherTrainConfig) -> None:
    """Train an LLM teacher over a dataset, on top of a SASRec student run."""
    from teacher.train import run

    _print_results(run(cfg))


@main.command("export-logits")
@_command(ExportConfig)
def export_logits(cfg: ExportConfig) -> None:
    """Write a run's top-k item scores at training positions (a teacher, or a student-train run): the
    student's soft labels."""
    from pipeline.export import run

    manifest = run(cfg)
    click.echo(f"wrote {cfg.output}: {manifest['rows']:,} rows, top {manifest['k']:,} items each")


# ---------------------------------------------------------------------------------------------- pipeline
@main.command()
@_command(PipelineConfig, single_process=True)
def pipeline(cfg: PipelineConfig) -> None:
    """Run every stage: prepare, the teacher's SASRec, teacher, export-logits, students; print a summary.

    Students are --student-hidden wide (the teacher's SASRec --teacher-hidden): the plain one and one
    per point of --kd x --alphas x --temperatures, each over --seeds paired seeds. The distilled student
    is picked on their mean validation NDCG@10 with alpha 0 (the plain student) a candidate, so it is
    never worse than the plain one on validation; a teacher that ranks below the plain student on
    validation is not distilled at all. The summary gives the paired test interval of distilled minus
    plain. The main job of the quickstart; other knobs (max_len, length_group, teacher_prompt_items,
    top_k) through --set or --config. For every option of a stage, run the stages one by one.
    """
    from pipeline.chain import run, summary

    click.echo(summary(run(cfg)))
    click.echo(f"runs, summary.md and summary.json in {cfg.output}")


# ---------------------------------------------------------------------------------------------- evaluate
@main.command()
@_command(EvaluateConfig, single_process=True)
def evaluate(cfg: EvaluateConfig) -> None:
    """Print full-ranking metrics of a saved run (the run directory says what model it holds)."""
    from distill.metrics import MASKING_NOTE, format_table
    from pipeline.evaluate import run

    table = format_table(run(cfg))
    click.echo(f"{' + '.join(cfg.runs)}; {MASKING_NOTE}")
    click.echo(table)


# ------------------------------------------------------------------------------------------ using a student
@main.command()
@_command(RecommendConfig, single_process=True)
def recommend(cfg: RecommendConfig) -> None:
    """Top-k items for a user of the dataset (--user) or a history of raw item ids (--history).

    Items already in the history are left out; unknown item ids are ignored and named; an empty
    history gets the most popular items.
    """
    from pipeline.recommend import format_recommendations, run

    recommendations, _ = run(cfg)
    click.echo(format_recommendations(recommendations, as_json=cfg.json))


@main.command("export-model")
@_command(ExportModelConfig, single_process=True)
def export_model(cfg: ExportModelConfig) -> None:
    """Write a student's scoring path (history -> scores of every item, and its query vector) as ONNX,
    its vocabulary and item vectors beside it."""
    from student.export import run

    written = run(cfg)
    files = f"{cfg.output}, {written['vocabulary']} and {written['vectors']}"
    click.echo(f"wrote {files} ({written['num_items']:,} items)")


@main.command()
@_command(ServeConfig, single_process=True)
def serve(cfg: ServeConfig) -> None:
    """Serve a student over HTTP: POST /recommend, GET /health (needs the serve extra)."""
    from pipeline.serve import run

    run(cfg)


# ---------------------------------------------------------------------------------------------- compare
@main.command()
@click.argument("runs", nargs=-1, type=click.Path())
@_command(CompareConfig, single_process=True)
def compare(cfg: CompareConfig) -> None:
    """Compare RUNS (students or teachers) on one split of --data: metrics side by side, and the per-user
    paired difference of --metric against the first run with a bootstrap 95% interval.

    A RUN that joins several with commas (A,B,C) scores as one: a cross-fit or an ensemble. --weights fit
    weighs each such ensemble on validation; a single run or a cross-fit alone is compared as it is. A RUN
    given twice (in any order or spelling) is refused.
    """
    from pipeline.compare import report, run

    click.echo(report(cfg, run(cfg)))


if __name__ == "__main__":
    main()
