"""Distillation losses: pure functions of student logits and the teacher's top-k scores.

Computed in float32 whatever the inputs' dtype. ``student_logits`` cover the whole catalogue with
column 0 as padding (never part of a softmax); ``teacher_items`` / ``teacher_logits`` are the
teacher's k best items per row, descending, as a score directory stores them. The student's loss is
``(1 - alpha) * CE(labels) + alpha * KD`` at the positions that have teacher scores.
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
    k = teacher_items.shape[1]
    weights = torch.exp(-torch.arange(k, device=log_q.device, dtype=torch.float32) / RANK_DECAY)
    weights = weights / weights.sum()  # (k,)
    return -(log_q.gather(1, teacher_items) * weights).sum(-1).mean()


def _log_softmax_items(student_logits: Tensor, temperature: float) -> Tensor:
    """log-softmax over items 1..N at temperature T; the padding column gets -inf."""
    logits = student_logits.float() / temperature
    logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)
    return F.log_softmax(logits, dim=-1)


KD = {"kl": kl, "rank": rank}
