"""Distillation losses, each defined once as a soft target on the teacher's top-k items.

Every KD loss here is, per row, a scaled cross-entropy of the student against a distribution ``p``
on the teacher's k items, plus a constant that depends on the teacher alone:

    KD = scale · (-Σ_j p_j · log q[item_j]) + offset,    q = softmax(s / T) over items 1..N.

A loss is a function of the teacher's logits and T returning that :class:`SoftTarget`, registered
by name in :data:`KD`; adding one is one function and one line there. Both consumers derive their
values from it: :func:`kd_loss`, the plain reference on a whole logit matrix, and the student's
chunked CE pass (``student/losses.py``), which gets the value from a gather of its own log-softmax
and the gradient w.r.t. the logits as ``(scale / T) · (q - p)`` with ``p`` scattered onto the
catalogue.

Computed in float32 whatever the inputs' dtype. ``student_logits`` cover the whole catalogue with
column 0 as padding (never part of a softmax); ``teacher_items`` / ``teacher_logits`` are the
teacher's k best items per row, descending, as a score directory stores them. The student's loss,
per position, is ``(1 - alpha) * CE(label) + alpha * KD`` where the teacher scored the position and
CE alone where it did not, averaged over positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Position weights of the rank loss decay as exp(-rank / RANK_DECAY): the teacher's first items matter most.
RANK_DECAY = 10.0


@dataclass(frozen=True)
class SoftTarget:
    """A KD loss on M rows as a scaled cross-entropy against the teacher's k items.

    Per row, ``KD = scale · (-Σ_j p_j · log softmax(s / T)[item_j]) + offset``, the student's
    softmax running over items ``1..N``. ``offset`` depends on the teacher only, so it changes the
    value, not the gradient.

    Attributes:
        p: ``(M, k)`` float32, each row a distribution over that row's teacher items.
        scale: weight of the cross-entropy term.
        offset: ``(M,)`` float32, added to each row.
    """

    p: Tensor
    scale: float
    offset: Tensor

    def rows(self, log_q: Tensor) -> Tensor:
        """Per-row KD ``(M,)`` from ``log_q`` ``(M, k)``: ``log softmax(s / T)`` at the teacher's items."""
        return self.scale * -(self.p * log_q).sum(-1) + self.offset


def kl(teacher_logits: Tensor, temperature: float) -> SoftTarget:
    """Hinton distillation: ``KD = T² · KL(p ‖ q)``, ``p = softmax(t / T)``, ``q = softmax(s / T)``.

    The teacher's distribution lives on its k items (a top-k teacher puts no mass elsewhere); the
    student's runs over the whole catalogue, so mass the student gives to other items is penalised
    through its normaliser. As a soft target:
    ``T² · KL(p ‖ q) = T² · Σ_j p_j (log p_j - log q_j) = T² · (-Σ_j p_j log q_j) + T² · Σ_j p_j log p_j``,
    so ``scale = T²`` and ``offset = T² · Σ_j p_j log p_j``.

    Args:
        teacher_logits: ``(M, k)`` float32 raw teacher scores.
        temperature: T, softens both distributions.
    """
    log_p = torch.log_softmax(teacher_logits / temperature, dim=-1)  # (M, k)
    p = log_p.exp()
    return SoftTarget(p, temperature**2, temperature**2 * (p * log_p).sum(-1))


def rank(teacher_logits: Tensor, temperature: float) -> SoftTarget:
    """Ranking distillation on the teacher's top-k: ``KD = -Σ_r w_r · log q[item_r]``, ``q = softmax(s / T)``.

    In the family of Ranking Distillation (Tang & Wang, 2018) and DLLM2Rec's importance weights:
    the student should rank each of the teacher's top items high, the teacher's first items most,
    with ``w_r ∝ exp(-r / RANK_DECAY)`` for ranks ``r = 0..k-1``, normalised to sum to 1. This is
    already a soft target: ``p = w``, ``scale = 1``, ``offset = 0``. The teacher's scores only decide
    the order (already descending), and T only enters through the student's softmax.

    Args:
        teacher_logits: ``(M, k)`` float32 raw teacher scores, descending.
        temperature: T of the student's softmax (unused here).
    """
    del temperature
    ranks = torch.arange(teacher_logits.shape[1], device=teacher_logits.device, dtype=torch.float32)
    weights = torch.exp(-ranks / RANK_DECAY)  # (k,)
    p = (weights / weights.sum()).expand_as(teacher_logits)  # (M, k)
    return SoftTarget(p, 1.0, teacher_logits.new_zeros(teacher_logits.shape[0]))


KD: dict[str, Callable[[Tensor, float], SoftTarget]] = {"kl": kl, "rank": rank}


def kd_by_name(name: str) -> Callable[[Tensor, float], SoftTarget]:
    """The registered loss ``name``; a ``ValueError`` naming the choices if there is none."""
    if name not in KD:
        raise ValueError(f"unknown distillation loss {name!r}; expected one of {sorted(KD)}")
    return KD[name]


def kd_loss(
    name: str,
    student_logits: Tensor,
    teacher_items: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """The loss ``name`` of :data:`KD` on whole logit matrices: the reference the chunked pass matches.

    Args:
        name: a key of :data:`KD`.
        student_logits: ``(M, num_items + 1)``; column 0 is padding and left out of the softmax.
        teacher_items: ``(M, k)`` item ids in ``1..num_items``.
        teacher_logits: ``(M, k)`` raw teacher scores, descending.
        temperature: T.

    Returns:
        Scalar float32, the mean of :class:`SoftTarget`'s per-row KD (0 for M = 0).
    """
    loss = kd_by_name(name)
    if len(student_logits) == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    target = loss(teacher_logits.float(), temperature)
    log_q = _log_softmax_items(student_logits, temperature).gather(1, teacher_items)  # (M, k)
    return target.rows(log_q).mean()


def _log_softmax_items(student_logits: Tensor, temperature: float) -> Tensor:
    """log-softmax over items 1..N at temperature T; the padding column gets -inf."""
    logits = student_logits.float() / temperature
    logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)
    return F.log_softmax(logits, dim=-1)
