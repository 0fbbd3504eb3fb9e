"""The one way to open runs: a run's ``config.json`` says its kind, the kind says how to load it.

Every command that reads runs (``export-logits``, ``evaluate``, ``compare``, ``recommend``, ``serve``
and the pipeline's summary) opens them here and gets a :class:`~distill.scoring.Scorer`, whatever model
the runs hold. Several runs open as one teacher that knows more than any of them:

- **Cross-fit**: the K runs of one ``--folds K`` (folds 0..K-1, each once) score each user with the run
  that held that user out, so every score is out-of-fold (Dao et al., ICLR'21: cross-fitting removes
  the in-sample bias of a teacher's soft labels).
- **Ensemble**: any other mix of runs (students, teachers, cross-fits) scores with the mixture of their
  probabilities, ``log Σ_m w_m softmax(s_m)`` over the catalogue; weights equal or fitted on the
  validation targets (:func:`fit_weights`).

Members score one batch at a time, one after the other, and only a running mixture is kept: memory
is one member's scores, however many members there are.

Both also score a block of items at a time (:class:`~distill.scoring.Blocks`) when every member can: a
cross-fit routes each user's rows to its member's block; an ensemble first walks the whole catalogue
once per member for the normaliser of its softmax (``logsumexp`` over blocks), then mixes each block
from its members' blocks less their normalisers. An ensemble's block path thus scores every member's
item side twice (the history side, SASRec or the backbone, once).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from distill.data import Dataset
from distill.dist import resolve_device
from distill.errors import DistillError
from distill.io import log
from distill.metrics import scores_at
from distill.outputs import STUDENT, TEACHER_KINDS
from distill.runs import fold_runs, read_run_config
from distill.scoring import BlockFn, Blocks, Scorer, logsumexp_in_blocks
from student.run import open_student
from teacher.model import open_teacher

# The kinds of scorers made of several runs (a run directory has one of distill.outputs.RUN_KINDS).
CROSS_FIT, ENSEMBLE = "cross-fit", "ensemble"

# How each run kind opens: (run directory, dataset, device) -> Scorer.
OPENERS: dict[str, Callable[[Path, Dataset, torch.device], Scorer]] = {
    STUDENT: open_student,
    **dict.fromkeys(TEACHER_KINDS.values(), open_teacher),
}
Weights = Literal["equal", "fit"]


def open_run(run_dir: str | Path, data: Dataset, device: str | torch.device = "auto") -> Scorer:
    """The model of the run in ``run_dir``, checked against ``data``, ready to score on ``device``."""
    run_dir = Path(run_dir)
    kind = read_run_config(run_dir)["kind"]  # one of RUN_KINDS, each of which OPENERS holds
    device = device if isinstance(device, torch.device) else resolve_device(device)
    scorer = OPENERS[kind](run_dir, data, device).check_finite(data, run_dir)
    return dataclasses.replace(scorer, source={"kind": kind, "run": run_dir})


def open_runs(
    run_dirs: Sequence[str | Path],
    data: Dataset,
    device: str | torch.device = "auto",
    weights: Weights = "equal",
    batch_size: int = 256,
) -> Scorer:
    """One run, the K runs of a cross-fit, or an ensemble of runs and cross-fits, as one scorer.

    Runs trained with ``--folds K`` are grouped by K into cross-fits, each of which must hold every fold
    once; every other run is a member of its own. Several members make an ensemble, weighted equally
    or by :func:`fit_weights` on the validation targets of ``data`` (in batches of ``batch_size``).
    """
    if not run_dirs:
        raise DistillError("no run to open")
    if any(not str(run_dir).strip() for run_dir in run_dirs):
        raise DistillError(f"a run path is empty (in {', '.join(map(repr, map(str, run_dirs)))})")
    seen: dict[Path, Path] = {}
    for run_dir in map(Path, run_dirs):  # one directory spelled two ways (./r, r/, a link) is one run
        if (same := seen.setdefault(run_dir.resolve(), run_dir)) is not run_dir:
            also = f" and {run_dir} are the same directory" if str(same) != str(run_dir) else ""
            raise DistillError(f"a run is given twice: {same}{also}")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    singles, folds = group_runs(run_dirs)
    members = [open_run(run_dir, data, device) for run_dir in singles]
    members += [cross_fit(k, runs, data, device) for k, runs in sorted(folds.items())]
    if len(members) == 1:
        if weights == "fit":
            raise DistillError(
                f"--weights fit weighs the members of an ensemble; {_name(members[0].source)} is one member"
            )
        return members[0]
    return ensemble(members, data, weights, batch_size)


def group_runs(run_dirs: Sequence[str | Path]) -> tuple[list[Path], dict[int, list[tuple[int, Path]]]]:
    """``(singles, folds)``: the runs that are members of their own, and the cross-fits' runs by K as
    ``(fold, run)`` pairs, from the runs' records (nothing is loaded); ``len(singles) + len(folds)``
    members."""
    singles, folds = [], {}
    for run_dir in map(Path, run_dirs):
        record = read_run_config(run_dir).get("folds")
        if record is None:
            singles.append(run_dir)
            continue
        folds.setdefault(record["k"], []).append((record["fold"], run_dir))
    return singles, folds


def _name(source: dict) -> str:
    """A member as a person reads it: its run directory, or a cross-fit by its K and first fold's run."""
    if "run" in source:
        return str(source["run"])
    return f"the {source['k']}-fold cross-fit of {source['members'][0]['run']}, ..."


def cross_fit(k: int, runs: list[tuple[int, Path]], data: Dataset, device: torch.device) -> Scorer:
    """The runs of folds ``0..k-1`` of one cross-fit, each scoring the users of its held-out fold."""
    members = [open_run(run_dir, data, device) for run_dir in fold_runs(k, runs)]
    fold_of = torch.from_numpy(data.folds(k))  # (num_users,)
    context, width = max(m.context for m in members), min(m.width for m in members)

    def routed(dense: bool) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
        def score(history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
            if users is None:
                raise DistillError("a cross-fit scores the dataset's users only (it needs their folds)")
            fold = fold_of[users.cpu().long()]  # (B,)
            out = None
            for f, member in enumerate(members):
                rows = (fold == f).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                scores = _member_scores(member, history[rows], users[rows], dense, width)
                if out is None:
                    out = scores.new_zeros((len(history), *scores.shape[1:]))
                out[rows.to(out.device)] = scores
            return out

        return score

    def routed_blocks(
        history: torch.Tensor, users: torch.Tensor | None, keep: torch.Tensor | None, size: int
    ) -> BlockFn:
        if users is None:
            raise DistillError("a cross-fit scores the dataset's users only (it needs their folds)")
        fold = fold_of[users.cpu().long()]  # (B,)
        if keep is not None:  # output row of each kept position, row-major
            keep = keep.cpu()
            order = torch.full(keep.shape, -1, dtype=torch.long)
            order[keep] = torch.arange(int(keep.sum()))
        parts = []  # (output rows, the member's opened block)
        for f, member in enumerate(members):
            rows = (fold == f).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            mine = history[rows.to(history.device)][:, -member.context :]
            if keep is None:
                parts.append((rows, member.blocks.last(mine, users[rows.to(users.device)], size)))
            else:
                kept = F.pad(keep[rows], (member.width - width, 0), value=False)  # (b, member.width)
                opened = member.blocks.dense(mine, users[rows.to(users.device)], kept, size)
                parts.append((order[rows][keep[rows]], opened))
        total = len(history) if keep is None else int(keep.sum())

        def score(start: int, stop: int) -> torch.Tensor:
            out = None
            for rows, opened in parts:
                scores = opened(start, stop)
                if out is None:
                    out = scores.new_zeros((total, stop - start))
                out[rows.to(out.device)] = scores
            return out

        return score

    blocks = None
    if all(m.blocks is not None for m in members):
        blocks = Blocks(
            last=lambda history, users, size: routed_blocks(history, users, None, size),
            dense=routed_blocks,
        )
    return Scorer(
        CROSS_FIT,
        context=context,
        width=width,
        dense=routed(True),
        last=routed(False),
        modules=tuple(module for m in members for module in m.modules),
        source={"kind": CROSS_FIT, "k": k, "members": [m.source for m in members]},
        blocks=blocks,
    )


def ensemble(members: list[Scorer], data: Dataset, weights: Weights, batch_size: int = 256) -> Scorer:
    """The mixture of ``members``' probabilities over the catalogue: scores ``log Σ_m w_m softmax(s_m)``."""
    if weights == "fit":
        w = fit_weights(members, data, batch_size)
        how = "fitted on the validation targets (EM on their log-likelihood)"
    else:
        w = torch.full((len(members),), 1 / len(members), dtype=torch.float64)
        how = "equal"
    log_w = [math.log(max(float(v), 1e-300)) for v in w]
    context, width = max(m.context for m in members), min(m.width for m in members)

    def mixed(dense: bool) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
        def score(history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
            total = None  # running log Σ w_m p_m: one member's scores in memory at a time
            for lw, member in zip(log_w, members, strict=True):
                term = lw + _log_probs(_member_scores(member, history, users, dense, width))
                total = term if total is None else torch.logaddexp(total, term)
            return F.pad(total, (1, 0), value=-math.inf)  # column 0 is padding

        return score

    def mixed_blocks(opened: list[BlockFn], size: int) -> BlockFn:
        norms = [logsumexp_in_blocks(score, data.num_items, size) for score in opened]  # (rows,) each

        def score(start: int, stop: int) -> torch.Tensor:
            total = None  # log Σ w_m p_m over the block
            for lw, member_block, norm in zip(log_w, opened, norms, strict=True):
                term = lw + (member_block(start, stop).float() - norm[:, None])
                total = term if total is None else torch.logaddexp(total, term)
            return total

        return score

    def last_blocks(history: torch.Tensor, users: torch.Tensor | None, size: int) -> BlockFn:
        opened = [m.blocks.last(history[:, -m.context :], users, size) for m in members]
        return mixed_blocks(opened, size)

    def dense_blocks(
        history: torch.Tensor, users: torch.Tensor | None, keep: torch.Tensor, size: int
    ) -> BlockFn:
        opened = []
        for m in members:  # each member's own width: the ensemble's last `width` columns kept
            kept = F.pad(keep, (m.width - width, 0), value=False)  # (B, m.width)
            opened.append(m.blocks.dense(history[:, -m.context :], users, kept, size))
        return mixed_blocks(opened, size)

    blocks = None
    if all(m.blocks is not None for m in members):
        blocks = Blocks(last=last_blocks, dense=dense_blocks)
    return Scorer(
        ENSEMBLE,
        context=context,
        width=width,
        dense=mixed(True),
        last=mixed(False),
        modules=tuple(module for m in members for module in m.modules),
        source={
            "kind": ENSEMBLE,
            "weights": how,
            "members": [{**m.source, "weight": float(v)} for m, v in zip(members, w, strict=True)],
        },
        blocks=blocks,
    )


@torch.no_grad()
def fit_weights(members: list[Scorer], data: Dataset, batch_size: int, iterations: int = 500) -> torch.Tensor:
    """Mixture weights ``(M,)`` that maximise the log-likelihood of the validation targets.

    Each member's probability of every user's validation target (full softmax over the catalogue, as
    the score directory stores it: seen items are not masked) is computed once; EM then iterates
    ``w_m ← mean_u (w_m p_mu / Σ_j w_j p_ju)``, which climbs this concave objective to its maximum.
    Validation is what the weights are fitted on, so an ensemble's own validation metrics are
    optimistic; its test metrics are not.
    """
    columns = []
    for member in members:
        member.eval()
        size = member.item_block(batch_size, data.num_items)
        rows = []
        for batch in data.eval_batches("valid", batch_size, member.context):
            if size is None:
                log_p = _log_probs(member.last(batch.inputs, batch.users))  # (B, N)
                rows.append(log_p.gather(1, (batch.targets - 1)[:, None].to(log_p.device)).squeeze(1).cpu())
                continue
            score = member.blocks.last(batch.inputs, batch.users, size)  # a large catalogue: in blocks
            target = scores_at(score, data.num_items, batch.targets, size).float()
            rows.append((target - logsumexp_in_blocks(score, data.num_items, size)).cpu())
        columns.append(torch.cat(rows))
    log_p = torch.stack(columns, dim=1).double()  # (U, M)
    w = torch.full((len(members),), 1 / len(members), dtype=torch.float64)
    for _ in range(iterations):
        new = torch.softmax(log_p + w.clamp_min(1e-300).log(), dim=1).mean(0)
        done = (new - w).abs().max() < 1e-9
        w = new
        if done:
            break
    log(
        "ensemble weights fitted on validation: "
        + ", ".join(f"{_name(m.source)} {v:.3f}" for m, v in zip(members, w.tolist(), strict=True))
    )
    return w


def _member_scores(
    member: Scorer, history: torch.Tensor, users: torch.Tensor | None, dense: bool, width: int
) -> torch.Tensor:
    """A member's scores on the last ``member.context`` columns of ``history``; dense ones cut to the
    last ``width`` columns (members of different widths score the same positions)."""
    history = history[:, -member.context :]
    return member.dense(history, users)[:, -width:] if dense else member.last(history, users)


def _log_probs(scores: torch.Tensor) -> torch.Tensor:
    """``log softmax`` over items ``1..N`` (column 0, padding, dropped), in float32: ``(..., N)``."""
    return torch.log_softmax(scores[..., 1:].float(), dim=-1)


def describe(source: dict, relative: Callable[[Path], str]) -> dict:
    """A scorer's ``source`` ready for JSON: every run path through ``relative``."""
    out = {}
    for key, value in source.items():
        if isinstance(value, Path):
            value = relative(value)
        elif isinstance(value, list):
            value = [describe(v, relative) if isinstance(v, dict) else v for v in value]
        out[key] = value
    return out
