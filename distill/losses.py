"""Distillation losses: pure functions of student logits and the teacher's top-k scores.

Computed in float32 whatever the inputs' dtype. ``student_logits`` cover the whole catalogue with
column 0 as padding (never part of a softmax); ``teacher_items`` / ``teacher_logits`` are the
teacher's k best items per row, descending, as a score directory stores them. The student's loss,
per position, is ``(1 - alpha) * CE(label) + alpha * KD`` where the teacher scored the position and
CE alone where it did not, averaged over positions.

These functions are the references. Training computes the same values in the student's chunked CE
pass (``student/losses.py``), which needs each loss in one form: :func:`soft_targets`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Position weights of the rank loss decay as exp(-rank / RANK_DECAY): the teacher's first items matter most.
RANK_DECAY = 10.0


def kl(
    student_logits: Tensor, teacher_items: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """Hinton distillation: ``T² · KL(softmax(t / T) ‖ softmax(s / T))``, mean over rows.

    The teacher's distribution lives on its k items (a top-k teacher puts no mass elsewhere); the
    student's log-softmax runs over the whole catalogue, so mass the student gives to other items is
    penalised through the normaliser.

    Args:
        student_logits: ``(M, num_items + 1)``.
        teacher_items: ``(M, k)`` item ids.
        teacher_logits: ``(M, k)`` raw teacher scores.
        temperature: softens both distributions.

    Returns:
        Scalar float32 (0 for M = 0).
    """
    if len(student_logits) == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    log_q = _log_softmax_items(student_logits, temperature)  # (M, N + 1)
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (M, k)
    kl_rows = (log_p.exp() * (log_p - log_q.gather(1, teacher_items))).sum(-1)  # (M,)
    return temperature**2 * kl_rows.mean()


def rank(
    student_logits: Tensor, teacher_items: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """Ranking distillation on the teacher's top-k: a position-weighted listwise loss.

    In the family of Ranking Distillation (Tang & Wang, 2018) and DLLM2Rec's importance weights:
    the student should rank each of the teacher's top items high, the teacher's first items most:
    ``-Σ_r w_r · log softmax(s / T)[item_r]`` with ``w_r ∝ exp(-r / RANK_DECAY)``, normalised. The
    teacher's scores only decide the order (already descending); ``teacher_logits`` is accepted so
    that both losses share one signature.

    Returns:
        Scalar float32, mean over rows (0 for M = 0).
    """
    del teacher_logits
    if len(student_logits) == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    log_q = _log_softmax_items(student_logits, temperature)  # (M, N + 1)
    weights = _rank_weights(teacher_items.shape[1], log_q.device)  # (k,)
    return -(log_q.gather(1, teacher_items) * weights).sum(-1).mean()


def soft_targets(kd: str, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, float, Tensor]:
    """A KD loss written as a scaled cross-entropy against a distribution on the teacher's k items.

    Per row, ``KD = scale · (-Σ_j p_j · log softmax(s / T)[item_j]) + offset``, so a pass that already
    has the student's log-softmax over the catalogue gets the value from a gather, and the gradient
    w.r.t. the student's logits is ``(scale / T) · (softmax(s / T) - p)`` with ``p`` scattered onto
    the catalogue. ``kl``: ``p = softmax(t / T)``, ``scale = T²``, ``offset = T² Σ p log p``;
    ``rank``: ``p`` = the position weights, ``scale = 1``, ``offset = 0``.

    Args:
        kd: ``"kl"`` or ``"rank"``.
        teacher_logits: ``(M, k)`` raw teacher scores, descending.
        temperature: T.

    Returns:
        ``p`` ``(M, k)`` float32 (rows sum to 1), ``scale``, ``offset`` ``(M,)`` float32.
    """
    logits = teacher_logits.float()
    if kd == "kl":
        log_p = torch.log_softmax(logits / temperature, dim=-1)  # (M, k)
        p = log_p.exp()
        return p, temperature**2, temperature**2 * (p * log_p).sum(-1)
    if kd == "rank":
        weights = _rank_weights(logits.shape[1], logits.device)
        return weights.expand_as(logits), 1.0, logits.new_zeros(logits.shape[0])
    raise ValueError(f"unknown distillation loss {kd!r}; expected one of {sorted(KD)}")


def _rank_weights(k: int, device: torch.device) -> Tensor:
    """``w_r ∝ exp(-r / RANK_DECAY)``, normalised: ``(k,)`` float32."""
    weights = torch.exp(-torch.arange(k, device=device, dtype=torch.float32) / RANK_DECAY)
    return weights / weights.sum()


def _log_softmax_items(student_logits: Tensor, temperature: float) -> Tensor:
    """log-softmax over items 1..N at temperature T; the padding column gets -inf."""
    logits = student_logits.float() / temperature
    logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)
    return F.log_softmax(logits, dim=-1)


KD = {"kl": kl, "rank": rank}
