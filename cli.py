"""The ``distill`` command line: parse options, build one config, call one ``run(cfg)``.

Nothing here imports torch at module level, so ``distill --help`` stays fast; each command imports
its stage when it runs. Option values override ``--set`` which overrides ``--config`` which
overrides the config dataclass's defaults.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from distill.config import defaults as config_defaults
from distill.errors import DistillError


def _user_errors(fn: Callable) -> Callable:
    """Turn a DistillError (bad input, a mismatched file, a missing checkpoint) into one line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DistillError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def _single_process(command: str) -> None:
    """Commands that do not split their work across ranks refuse to run as a ``torchrun`` job."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DistillError(
            f"`distill {command}` runs in one process; only student-train, teacher-train and "
            "export-logits run under torchrun"
        )


def _option(cls: type, key: str, *decls: str, help: str, **kwargs: Any) -> Callable:
    """A click option bound to config field ``key``; its default is shown from the dataclass, not repeated."""
    value = config_defaults(cls).get(key)
    if value not in (None, "") and not kwargs.get("is_flag"):
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        help = f"{help}  [default: {shown}]"
    kwargs.setdefault("default", None)  # None = not given: the config file or dataclass default decides
    return click.option(*decls, key, help=help, **kwargs)


def _config_options(fn: Callable) -> Callable:
    fn = click.option(
        "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one config value (repeatable)."
    )(fn)
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), help="TOML file of config values."
    )(fn)


def _resolve(cls: type, config_file: str | None, sets: tuple[str, ...], options: dict[str, Any]) -> Any:
    from distill.config import resolve

    return resolve(cls, file=config_file, sets=sets, options=options)


def _print_results(results: dict) -> None:
    """What a training command prints at the end: the selected epoch and its metric table."""
    from distill.metrics import format_table

    click.echo(f"best epoch {results['best_epoch']} (selected on {results['selected_on']})")
    click.echo(format_table({"valid": results["valid"], "test": results["test"]}))


def _choices(cls: type, key: str) -> click.Choice:
    return click.Choice(typing.get_args(typing.get_type_hints(cls)[key]))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="distill")
def main() -> None:
    """Distill an LLM-based sequential recommender into a small SASRec student.

    \b
    Pipeline:
      distill prepare        raw interactions -> dataset directory
      distill student-train  SASRec on labels (also the teacher's ID encoder)
      distill teacher-train  an LLM teacher (MoE-LoRA or E4SRec) on top of a SASRec run
      distill export-logits  the teacher's top-k item scores: soft labels for the student
      distill student-train --teacher-scores DIR   the student on labels + soft labels
      distill pipeline       all of the above on the synthetic data (the quickstart)
      distill evaluate       full-ranking metrics of a saved run
    """


# ---------------------------------------------------------------------------------------------- prepare
from distill.config import PrepareConfig  # noqa: E402  (torch-free)


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@_option(PrepareConfig, "output", "--output", "-o", help="Dataset directory to write.")
@_option(
    PrepareConfig,
    "format",
    "--format",
    type=_choices(PrepareConfig, "format"),
    help="Input format; auto guesses from the extension and the first lines.",
)
@_option(
    PrepareConfig,
    "items",
    "--items",
    help="Item metadata with titles (TSV/CSV with a header, RecBole .item, MovieLens movies.dat).",
)
@_option(PrepareConfig, "user_col", "--user-col", help="User column of a CSV/TSV/Parquet input.")
@_option(PrepareConfig, "item_col", "--item-col", help="Item column of a CSV/TSV/Parquet input.")
@_option(
    PrepareConfig,
    "time_col",
    "--time-col",
    help="Timestamp column (numbers or ISO dates); file order if none.",
)
@_option(
    PrepareConfig,
    "min_user_interactions",
    "--min-user-interactions",
    type=int,
    help="Drop users with fewer interactions (iterated with the item bound: k-core).",
)
@_option(
    PrepareConfig,
    "min_item_interactions",
    "--min-item-interactions",
    type=int,
    help="Drop items with fewer interactions.",
)
@_option(
    PrepareConfig,
    "synthetic",
    "--synthetic",
    is_flag=True,
    help="Generate the embedded synthetic dataset instead of reading INPUTS.",
)
@_option(PrepareConfig, "num_users", "--num-users", type=int, help="Synthetic: number of users.")
@_option(PrepareConfig, "num_items", "--num-items", type=int, help="Synthetic: number of items.")
@_option(PrepareConfig, "seed", "--seed", type=int, help="Synthetic: random seed.")
@_option(PrepareConfig, "overwrite", "--overwrite", is_flag=True, help="Replace an existing output.")
@_config_options
@_user_errors
def prepare(inputs: tuple[str, ...], config_file: str | None, sets: tuple[str, ...], **options: Any) -> None:
    """Turn raw interactions (or --synthetic data) into a dataset directory.

    INPUTS are interaction files of one format: SASRec `user item` lines, one user per line
    (`user i1 i2 ...`), RecBole `.inter`, MovieLens `ratings.dat`, or CSV/TSV/Parquet.
    """
    from distill import prepare as stage

    _single_process("prepare")
    if inputs:
        options["inputs"] = inputs
    cfg = _resolve(PrepareConfig, config_file, sets, options)
    meta = stage.run(cfg)
    click.echo(f"wrote {cfg.output}")
    click.echo(stage.summary(meta))


# ---------------------------------------------------------------------------------------------- student
from student.config import StudentTrainConfig  # noqa: E402  (torch-free)


@main.command("student-train")
@_option(StudentTrainConfig, "data", "--data", help="Dataset directory from `distill prepare`.")
@_option(StudentTrainConfig, "output", "--output", "-o", help="Run directory to write.")
@_option(StudentTrainConfig, "epochs", "--epochs", type=int, help="Maximum number of epochs.")
@_option(StudentTrainConfig, "batch_size", "--batch-size", type=int, help="Sequences per batch.")
@_option(StudentTrainConfig, "max_len", "--max-len", type=int, help="Longest history the model reads.")
@_option(StudentTrainConfig, "hidden", "--hidden", type=int, help="Embedding and state width.")
@_option(StudentTrainConfig, "blocks", "--blocks", type=int, help="Transformer blocks.")
@_option(StudentTrainConfig, "heads", "--heads", type=int, help="Attention heads (must divide --hidden).")
@_option(StudentTrainConfig, "dropout", "--dropout", type=float, help="Dropout rate.")
@_option(StudentTrainConfig, "lr", "--lr", type=float, help="Adam learning rate.")
@_option(StudentTrainConfig, "weight_decay", "--weight-decay", type=float, help="Adam weight decay.")
@_option(
    StudentTrainConfig,
    "loss",
    "--loss",
    type=_choices(StudentTrainConfig, "loss"),
    help="ce: full-softmax cross-entropy; bce: binary cross-entropy with sampled negatives.",
)
@_option(
    StudentTrainConfig, "negatives", "--negatives", type=int, help="Negatives per position for --loss bce."
)
@_option(
    StudentTrainConfig,
    "length_group",
    "--length-group",
    type=int,
    help="Sort shuffled users by length within runs of N batches: faster epochs, less mixed batches "
    "(1: plain shuffle).",
)
@_option(
    StudentTrainConfig,
    "patience",
    "--patience",
    type=int,
    help="Stop after this many evaluations without a better validation NDCG@10 (0: never).",
)
@_option(StudentTrainConfig, "eval_every", "--eval-every", type=int, help="Validate every N epochs.")
@_option(StudentTrainConfig, "seed", "--seed", type=int, help="Random seed.")
@_option(StudentTrainConfig, "device", "--device", help="auto, cpu, cuda or cuda:N.")
@_option(
    StudentTrainConfig,
    "teacher_scores",
    "--teacher-scores",
    help="A score directory from `distill export-logits`: distill the teacher into the student.",
)
@_option(
    StudentTrainConfig,
    "kd",
    "--kd",
    type=_choices(StudentTrainConfig, "kd"),
    help="Distillation loss: kl (Hinton) or rank (position-weighted top-k).",
)
@_option(
    StudentTrainConfig, "alpha", "--alpha", type=float, help="Loss = (1 - alpha) * CE(labels) + alpha * KD."
)
@_option(StudentTrainConfig, "temperature", "--temperature", type=float, help="Distillation temperature.")
@_option(
    StudentTrainConfig,
    "resume",
    "--resume",
    is_flag=True,
    help="Continue the run in --output from its last epoch.",
)
@_config_options
@_user_errors
def student_train(config_file: str | None, sets: tuple[str, ...], **options: Any) -> None:
    """Train a SASRec student on next-item labels (and a teacher's soft labels with --teacher-scores).

    Selects the epoch on validation NDCG@10 and reports test metrics of that epoch.
    """
    from student.train import run

    cfg = _resolve(StudentTrainConfig, config_file, sets, options)
    _print_results(run(cfg))


# ---------------------------------------------------------------------------------------------- teacher
from teacher.config import ExportConfig, PipelineConfig, TeacherTrainConfig  # noqa: E402  (torch-free)


@main.command("teacher-train")
@_option(TeacherTrainConfig, "data", "--data", help="Dataset directory from `distill prepare`.")
@_option(
    TeacherTrainConfig, "sasrec", "--sasrec", help="A `distill student-train` run: the teacher's ID encoder."
)
@_option(
    TeacherTrainConfig, "llm", "--llm", help="Backbone: 'tiny', a .gguf file, a model directory or a hub id."
)
@_option(TeacherTrainConfig, "output", "--output", "-o", help="Run directory to write.")
@_option(
    TeacherTrainConfig,
    "teacher",
    "--teacher",
    type=_choices(TeacherTrainConfig, "teacher"),
    help="moe-lora: iLoRA-style gated LoRA experts; e4srec: peft LoRA with a linear item head.",
)
@_option(
    TeacherTrainConfig, "llm_layers", "--llm-layers", type=int, help="Keep only the first N decoder layers."
)
@_option(
    TeacherTrainConfig, "dtype", "--dtype", type=_choices(TeacherTrainConfig, "dtype"), help="Backbone dtype."
)
@_option(TeacherTrainConfig, "max_len", "--max-len", type=int, help="History items in the prompt.")
@_option(
    TeacherTrainConfig,
    "samples_per_user",
    "--samples-per-user",
    type=int,
    help="Train on the last N targets of each training sequence.",
)
@_option(
    TeacherTrainConfig,
    "titles",
    "--titles/--no-titles",
    help="MoE-LoRA: put item titles before their slots when the dataset has titles.",
)
@_option(TeacherTrainConfig, "experts", "--experts", type=int, help="MoE-LoRA: number of LoRA experts.")
@_option(
    TeacherTrainConfig,
    "r",
    "--lora-r",
    type=int,
    help="LoRA rank (MoE-LoRA: total, split across experts). Default 16.",
)
@_option(
    TeacherTrainConfig,
    "lora_alpha",
    "--lora-alpha",
    type=float,
    help="LoRA alpha; the update is scaled by alpha / r. Default 32 (moe-lora), 16 (e4srec).",
)
@_option(
    TeacherTrainConfig,
    "lora_dropout",
    "--lora-dropout",
    type=float,
    help="Dropout on the adapter input. Default 0.05.",
)
@_option(
    TeacherTrainConfig,
    "target_modules",
    "--target-modules",
    type=str,
    help="Comma-separated Linear names to "
    "adapt. Default: all q,k,v,o,gate,up,down projections (moe-lora); gate,up,down (e4srec).",
)
@_option(
    TeacherTrainConfig,
    "train_sasrec",
    "--train-sasrec",
    is_flag=True,
    help="Fine-tune the SASRec encoder too.",
)
@_option(TeacherTrainConfig, "epochs", "--epochs", type=int, help="Maximum number of epochs.")
@_option(TeacherTrainConfig, "batch_size", "--batch-size", type=int, help="Samples per micro-batch.")
@_option(TeacherTrainConfig, "grad_accum", "--grad-accum", type=int, help="Micro-batches per optimizer step.")
@_option(TeacherTrainConfig, "lr", "--lr", type=float, help="Learning rate of the LoRA adapters.")
@_option(
    TeacherTrainConfig, "projector_lr", "--projector-lr", type=float, help="Learning rate of the projector."
)
@_option(TeacherTrainConfig, "gate_lr", "--gate-lr", type=float, help="Learning rate of the gating MLP.")
@_option(
    TeacherTrainConfig,
    "head_lr",
    "--head-lr",
    type=float,
    help="E4SRec: learning rate of input projection and head.",
)
@_option(
    TeacherTrainConfig,
    "sasrec_lr",
    "--sasrec-lr",
    type=float,
    help="Learning rate of SASRec (--train-sasrec).",
)
@_option(TeacherTrainConfig, "weight_decay", "--weight-decay", type=float, help="AdamW weight decay.")
@_option(
    TeacherTrainConfig,
    "warmup",
    "--warmup",
    type=float,
    help="Fraction of steps of linear warmup before cosine decay.",
)
@_option(
    TeacherTrainConfig,
    "patience",
    "--patience",
    type=int,
    help="Stop after N epochs without a better validation NDCG@10 (0: never).",
)
@_option(
    TeacherTrainConfig,
    "eval_users",
    "--eval-users",
    type=int,
    help="Validate on a fixed random subset of N users (test always uses all).",
)
@_option(
    TeacherTrainConfig, "eval_batch_size", "--eval-batch-size", type=int, help="Users per scoring batch."
)
@_option(TeacherTrainConfig, "seed", "--seed", type=int, help="Random seed.")
@_option(TeacherTrainConfig, "device", "--device", help="auto, cpu, cuda or cuda:N.")
@_option(
    TeacherTrainConfig,
    "resume",
    "--resume",
    is_flag=True,
    help="Continue the run in --output from its last epoch.",
)
@_config_options
@_user_errors
def teacher_train(config_file: str | None, sets: tuple[str, ...], **options: Any) -> None:
    """Train an LLM teacher over a dataset, on top of a SASRec student run."""
    from teacher.train import run

    cfg = _resolve(TeacherTrainConfig, config_file, sets, options)
    _print_results(run(cfg))


@main.command("export-logits")
@_option(ExportConfig, "run", "--run", help="A `distill teacher-train` run.")
@_option(ExportConfig, "data", "--data", help="The dataset directory the teacher was trained on.")
@_option(ExportConfig, "output", "--output", "-o", help="Score directory to write.")
@_option(
    ExportConfig, "top_k", "--top-k", type=int, help="Items kept per row (--full keeps the whole catalogue)."
)
@click.option("--full", is_flag=True, help="Keep every item: full distributions (overrides --top-k).")
@_option(
    ExportConfig,
    "positions",
    "--positions",
    type=int,
    help="Score each user's last N training targets (--all-positions: every one).",
)
@click.option("--all-positions", is_flag=True, help="Score every training target (overrides --positions).")
@_option(ExportConfig, "batch_size", "--batch-size", type=int, help="Prefixes per scoring batch.")
@_option(ExportConfig, "device", "--device", help="auto, cpu, cuda or cuda:N.")
@_option(ExportConfig, "overwrite", "--overwrite", is_flag=True, help="Replace an existing score directory.")
@_config_options
@_user_errors
def export_logits(
    config_file: str | None, sets: tuple[str, ...], full: bool, all_positions: bool, **options: Any
) -> None:
    """Write a teacher's top-k item scores for the training prefixes: the student's soft labels."""
    from teacher.export import run

    # the flags win over their numeric twins, whichever layer those came from
    for flag, key in ((full, "top_k"), (all_positions, "positions")):
        if flag:
            options[key] = None
            sets = (*sets, f"{key}=none")
    cfg = _resolve(ExportConfig, config_file, sets, options)
    manifest = run(cfg)
    click.echo(f"wrote {cfg.output}: {manifest['rows']:,} rows, top {manifest['k']:,} items each")


# ---------------------------------------------------------------------------------------------- pipeline
@main.command()
@_option(PipelineConfig, "output", "--output", "-o", help="Directory for every stage's output.")
@_option(PipelineConfig, "data", "--data", help="A prepared dataset directory (default: the synthetic data).")
@_option(PipelineConfig, "num_users", "--num-users", type=int, help="Synthetic data: number of users.")
@_option(PipelineConfig, "num_items", "--num-items", type=int, help="Synthetic data: number of items.")
@_option(
    PipelineConfig,
    "llm",
    "--llm",
    help="Teacher backbone: 'tiny', a .gguf file, a model directory or a hub id.",
)
@_option(
    PipelineConfig, "teacher", "--teacher", type=_choices(PipelineConfig, "teacher"), help="Teacher kind."
)
@_option(
    PipelineConfig, "student_epochs", "--student-epochs", type=int, help="Maximum epochs of each student."
)
@_option(
    PipelineConfig, "teacher_epochs", "--teacher-epochs", type=int, help="Maximum epochs of the teacher."
)
@_option(PipelineConfig, "kd", "--kd", type=_choices(PipelineConfig, "kd"), help="Distillation loss.")
@_option(PipelineConfig, "alpha", "--alpha", type=float, help="Loss = (1 - alpha) * CE(labels) + alpha * KD.")
@_option(PipelineConfig, "seed", "--seed", type=int, help="Random seed of every stage.")
@_option(PipelineConfig, "device", "--device", help="auto, cpu, cuda or cuda:N.")
@_option(
    PipelineConfig, "overwrite", "--overwrite", is_flag=True, help="Replace the runs of an earlier pipeline."
)
@_config_options
@_user_errors
def pipeline(config_file: str | None, sets: tuple[str, ...], **options: Any) -> None:
    """Run every stage: prepare, SASRec, teacher, export-logits, distilled SASRec; print a summary.

    The main job of the quickstart; other knobs (max_len, teacher_max_len, samples_per_user, top_k,
    temperature) through --set or --config. For every option of a stage, run the stages one by one.
    """
    from distill.metrics import MASKING_NOTE, format_table
    from teacher.pipeline import run

    _single_process("pipeline")
    cfg = _resolve(PipelineConfig, config_file, sets, options)
    results = run(cfg)
    click.echo(f"test metrics ({MASKING_NOTE}):")
    click.echo(format_table({name: r["test"] for name, r in results.items()}, label="model"))
    click.echo(f"runs and summary.md in {cfg.output}")


# ---------------------------------------------------------------------------------------------- evaluate
@main.command()
@click.option(
    "--run", "run_dir", required=True, type=click.Path(), help="A run directory (student or teacher)."
)
@click.option(
    "--data", required=True, type=click.Path(), help="The dataset directory the run was trained on."
)
@click.option(
    "--split",
    type=click.Choice(["valid", "test", "both"]),
    default="both",
    show_default=True,
    help="Which held-out target to rank.",
)
@click.option("--batch-size", type=int, default=256, show_default=True, help="Users per scoring batch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@_user_errors
def evaluate(run_dir: str, data: str, split: str, batch_size: int, device: str) -> None:
    """Print full-ranking metrics of a saved run (the run directory says what model it holds)."""
    from distill.data import Dataset
    from distill.metrics import MASKING_NOTE, format_table
    from distill.training import read_json, resolve_device

    _single_process("evaluate")
    kind = read_json(Path(run_dir) / "config.json", "run").get("kind")
    dataset = Dataset(data)
    dev = resolve_device(device)
    if kind == "student":
        from student.train import evaluate_model, load_run

        model = load_run(run_dir, dataset, dev)
        score = functools.partial(evaluate_model, model, dataset, batch_size=batch_size, device=dev)
    elif kind in ("teacher-moe-lora", "teacher-e4srec"):
        from teacher.train import evaluate_teacher, load_teacher

        score = functools.partial(
            evaluate_teacher, load_teacher(run_dir, dataset, dev), dataset, batch_size=batch_size
        )
    else:
        raise click.ClickException(f"{run_dir}: unknown run kind {kind!r}")
    splits = ["valid", "test"] if split == "both" else [split]
    click.echo(f"{run_dir} ({kind}); {MASKING_NOTE}")
    click.echo(format_table({s: score(split=s) for s in splits}))


if __name__ == "__main__":
    main()
