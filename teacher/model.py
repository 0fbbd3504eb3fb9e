"""Building and loading a teacher: the backbone, its adapters and heads, and the prompts that feed it.

What every user of a teacher needs (``teacher-train``, ``export-logits``, ``evaluate``) lives here,
apart from the training loop in :mod:`teacher.train`. A teacher run's ``config.json`` holds what
rebuilds the model (the backbone spec and the SASRec run); its checkpoints only what was trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distill.config import from_dict
from distill.data import Dataset
from distill.errors import DistillError
from distill.io import record_path, recorded_path
from distill.outputs import TEACHER_KINDS
from distill.runs import check_dataset, load_checkpoint, read_run_config, warn_if_unfinished
from distill.scoring import Scorer, dot_blocks
from student.run import check_weights, load_run
from student.sasrec import SASRec
from teacher.backbone import add_special_tokens, load_backbone
from teacher.config import TeacherTrainConfig
from teacher.e4srec import E4SRecTeacher
from teacher.moe_lora import MoELoRATeacher
from teacher.prompts import E4SREC_PROMPT, HISTORY_TOKEN, MOE_LORA_PROMPT, PromptBuilder, Prompts
from teacher.text import item_text_vectors

# Where a teacher run keeps its copy of the SASRec run it was trained on (its ID encoder).
SASREC = "sasrec"
# Where it keeps its copies of the cross-fitted SASRec runs its training windows read (--sasrec-fold).
SASREC_FOLDS = "sasrec-folds"


class Teacher:
    """A teacher model with the prompt builder that feeds it.

    It reads histories of ``context`` items (its SASRec's ``max_len``: SASRec encodes all of them) and
    puts the last ``width`` (``--prompt-items``) into the prompt; every one of those positions is scored.
    """

    def __init__(
        self, model: nn.Module, prompts: PromptBuilder, width: int, context: int, device: torch.device
    ):
        self.model, self.prompts, self.device = model, prompts, device
        self.width, self.context = width, context

    def queries(
        self, history: torch.Tensor, module: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, L)`` left-padded histories (the last ``context`` are read; shorter ones are padded) →
        queries ``(B, width, D)`` at the last ``width`` columns and item vectors
        ``(num_items + 1, D)``; scores are their dot products.

        ``module`` runs instead of ``self.model`` when given (its ``DistributedDataParallel`` wrapper).
        """
        prompts, history = self._inputs(history)
        return (module or self.model)(prompts, history, self.width)

    def query_vectors(self, history: torch.Tensor) -> torch.Tensor:
        """The queries of :meth:`queries` alone, ``(B, width, D)``: what a block of items is scored
        against (:meth:`item_vectors`) when the catalogue is too large for one product."""
        prompts, history = self._inputs(history)
        return self.model.queries(prompts, history, self.width)

    def item_vectors(self, start: int, stop: int) -> torch.Tensor:
        """The item vectors of item ids ``start..stop-1``, ``(stop - start, D)``: rows of :meth:`queries`'
        item table, computed for that block only."""
        return self.model.item_vectors(start, stop)

    def _inputs(self, history: torch.Tensor) -> tuple[Prompts, torch.Tensor]:
        """The prompts and the window (the last ``context`` items, left-padded) on the device."""
        history = history[:, -self.context :]
        if history.shape[1] < self.context:  # a shorter history: the window is left-padded
            history = F.pad(history, (self.context - history.shape[1], 0))
        prompts = self.prompts(history[:, -self.width :]).to(self.device)
        return prompts, history.to(self.device)

    @contextlib.contextmanager
    def reading(self, sasrec: SASRec | None) -> Iterator[None]:
        """Within the block the model reads ``sasrec`` (its states, fused score and item table) in place
        of its own SASRec; None changes nothing. A cross-fitted training window reads the SASRec that
        did not train on its user (``teacher-train --sasrec-fold``)."""
        if sasrec is None:
            yield
            return
        own = self.model.sasrec
        self.model.sasrec = sasrec
        try:
            yield
        finally:
            self.model.sasrec = own

    def scores(self, history: torch.Tensor) -> torch.Tensor:
        """Scores at every one of the last ``width`` columns, ``(B, width, num_items + 1)``: column j
        predicts the item after it (rows of padding columns are meaningless)."""
        queries, items = self.queries(history)
        return queries @ items.T

    def __call__(self, history: torch.Tensor) -> torch.Tensor:
        """Scores after the last history item, ``(B, num_items + 1)``."""
        queries, items = self.queries(history)
        return queries[:, -1] @ items.T


def prompt_context(cfg: TeacherTrainConfig, sasrec: SASRec) -> int:
    """The history a teacher reads: its SASRec's ``max_len``, which must hold the prompt's items."""
    context = sasrec.config.max_len
    if cfg.prompt_items > context:
        raise DistillError(
            f"--prompt-items {cfg.prompt_items} is more than its SASRec run's max_len {context} "
            f"({cfg.sasrec}): use --prompt-items {context} or less"
        )
    return context


def build_teacher(
    cfg: TeacherTrainConfig,
    data: Dataset,
    sasrec: SASRec,
    device: torch.device,
    item_text: torch.Tensor | None = None,
) -> Teacher:
    """Load the backbone and wrap it as the configured teacher (fresh adapters and heads); ``item_text``
    from :func:`item_text_of` when the teacher reads titles on its item side."""
    context = prompt_context(cfg, sasrec)
    backbone, tokenizer = load_backbone(cfg.llm, layers=cfg.llm_layers, dtype=cfg.dtype)
    [placeholder] = add_special_tokens(backbone, tokenizer, [HISTORY_TOKEN])
    lora = {
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": tuple(cfg.target_modules),
        "fuse_sasrec": cfg.fuse_sasrec,
    }
    if cfg.teacher == "moe-lora":
        model = MoELoRATeacher(
            backbone,
            sasrec,
            placeholder_id=placeholder,
            experts=cfg.experts,
            per_expert_scaling=cfg.moe_scaling == "expert",
            train_sasrec=cfg.train_sasrec,
            item_text=item_text,
            **lora,
        )
        titles = [None] + [data.title(i) for i in range(1, data.num_items + 1)]
        use_titles = cfg.titles and data.has_titles
        prompts = PromptBuilder(
            tokenizer, placeholder, MOE_LORA_PROMPT, titles if use_titles else None, cfg.title_tokens
        )
    else:
        model = E4SRecTeacher(backbone, sasrec, placeholder_id=placeholder, item_text=item_text, **lora)
        prompts = PromptBuilder(tokenizer, placeholder, E4SREC_PROMPT)
    return Teacher(model.to(device), prompts, cfg.prompt_items, context, device)


def item_titles(cfg: TeacherTrainConfig, data: Dataset) -> list[str | None] | None:
    """The titles the teacher's item side reads (index 0 unused), or None when it reads none."""
    if not (cfg.item_text and data.has_titles):
        return None
    return [None] + [data.title(i) for i in range(1, data.num_items + 1)]


def item_text_of(
    cfg: TeacherTrainConfig, data: Dataset, run_dir: Path, *, write: bool = True
) -> torch.Tensor | None:
    """The item text vectors of a run (:mod:`teacher.text`, kept in the run), or None when the teacher
    does not read titles on its item side or the dataset has none."""
    titles = item_titles(cfg, data)
    return None if titles is None else item_text_vectors(run_dir, cfg.llm, cfg.dtype, titles, write=write)


def check_sasrec(cfg: TeacherTrainConfig, sasrec: SASRec) -> int:
    """What teacher-train checks of its SASRec run before writing anything: a warning when the run is
    unfinished, and an error when the prompt would hold more items than SASRec reads (both teachers
    read a window of SASRec's ``max_len``). Returns that window."""
    warn_if_unfinished(cfg.sasrec)
    return prompt_context(cfg, sasrec)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a teacher checkpoint holds: the parameters that train."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def load_teacher(run_dir: str | Path, data: Dataset, device: torch.device | str = "cpu") -> Teacher:
    """The best-validation teacher of a ``teacher-train`` run, checked against ``data``.

    The run holds its SASRec (``RUN/sasrec``, a copy of the ``--sasrec`` run it was trained on); runs
    from before that record the SASRec run's absolute path, which is followed with a note.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config.get("kind") not in TEACHER_KINDS.values():
        raise DistillError(f"{run_dir} is not a teacher run (kind {config.get('kind')!r})")
    check_dataset(config, data, run_dir)
    train = _table(config, "train", run_dir)
    if "max_len" in train:  # runs from before the option was --prompt-items
        train = {("prompt_items" if k == "max_len" else k): v for k, v in train.items()}
    train.setdefault("item_text", False)  # runs from before item text vectors had none
    cfg = from_dict(TeacherTrainConfig, train, f"{run_dir}/config.json")
    cfg = dataclasses.replace(cfg, llm=backbone_spec(config, cfg.llm, run_dir))
    sasrec_run = recorded_path(run_dir, config.get("sasrec_run"), "its SASRec run (sasrec_run)")
    weights, _, _ = load_checkpoint(run_dir / "best")
    warn_if_unfinished(run_dir)
    sasrec = load_run(sasrec_run, data)
    teacher = build_teacher(cfg, data, sasrec, torch.device(device), item_text_of(cfg, data, run_dir))
    load_trainable(teacher.model, weights, run_dir / "best")
    teacher.model.eval()
    return teacher


def open_teacher(run_dir: str | Path, data: Dataset, device: torch.device | str = "cpu") -> Scorer:
    """A ``teacher-train`` run as a :class:`~distill.scoring.Scorer`."""
    kind = read_run_config(run_dir).get("kind")
    return teacher_scorer(load_teacher(run_dir, data, device), kind)


def teacher_scorer(teacher: Teacher, kind: str) -> Scorer:
    """Score with ``teacher`` as it is (also one still training: its validation goes through this).

    Both teachers score by a dot product of a query and an item vector, so a block of the catalogue
    is the backbone's queries (once per batch) against that block's item vectors.
    """
    return Scorer(
        kind,
        context=teacher.context,
        width=teacher.width,
        dense=lambda history, users=None: teacher.scores(history),
        last=lambda history, users=None: teacher(history),
        modules=(teacher.model,),
        blocks=dot_blocks(
            last_query=lambda history, users=None: teacher.query_vectors(history)[:, -1],
            dense_query=lambda history, users=None: teacher.query_vectors(history),
            items=teacher.item_vectors,
        ),
    )


def record_backbone(spec: str, run_dir: Path) -> dict[str, str]:
    """The backbone as a run records it. A local file or directory is recorded relative to the run (found
    when the tree that holds both moves) and absolute (found when the run moves alone on this
    machine); ``tiny`` and hub ids as they are."""
    path = Path(spec).expanduser()
    if spec == "tiny" or not path.exists():
        return {"spec": spec}
    return {"spec": spec, "relative": record_path(run_dir, path), "absolute": str(path.resolve())}


def backbone_spec(config: dict, spec: str, run_dir: Path) -> str:
    """The backbone to load for a run: what :func:`record_backbone` recorded, the first of its paths
    that exists (``spec``, the training option, for runs that recorded none)."""
    recorded = config.get("backbone")
    if not isinstance(recorded, dict):
        return spec
    candidates = [run_dir / recorded["relative"]] if isinstance(recorded.get("relative"), str) else []
    candidates += [Path(recorded["absolute"])] if isinstance(recorded.get("absolute"), str) else []
    found = next((c for c in candidates if c.exists()), None)
    return str(found) if found is not None else str(recorded.get("spec", spec))


def _table(config: dict, key: str, run_dir: Path) -> dict:
    value = config.get(key)
    if not isinstance(value, dict):
        raise DistillError(f"{run_dir / 'config.json'}: {key!r} is missing or not a table")
    return value


def load_trainable(model: nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Copy a teacher checkpoint's weights into the parameters of ``model`` that train."""
    own = trainable_state(model)
    check_weights(own, weights, where)
    with torch.no_grad():
        for name, value in weights.items():
            own[name].copy_(value)
