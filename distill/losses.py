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

A soft target may also put mass ``rest`` on one bucket, "every item but the teacher's k", against
the student's own mass there, ``q_rest = 1 - Σ_j q[item_j]``:

    KD = scale · (-Σ_j p_j · log q[item_j] - rest · log q_rest) + offset,    Σ_j p_j + rest = 1,

which :func:`kl` does with a score directory's tail. Its gradient w.r.t. the logits is
``(scale / T) · (q - p̃)``, ``p̃`` being ``p`` on the teacher's items and ``rest · q_i / q_rest``
elsewhere: the teacher's leftover mass spread over the other items in the student's own proportions.

Computed in float32 whatever the inputs' dtype. ``student_logits`` cover the whole catalogue with
column 0 as padding (never part of a softmax); ``teacher_items`` / ``teacher_logits`` are the
teacher's k best items per row, descending, as a score directory stores them: the logits up to a
constant per row, which no loss here sees (a softmax or an order). ``tail`` is the directory's
``(M,)`` log of the teacher's probability at T = 1 outside its k items, or None. The student's loss,
per position, is ``(1 - alpha) * CE(label) + alpha * KD`` where the teacher scored the position and
CE alone where it did not, averaged over positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Position weights of the rank loss decay as exp(-rank / RANK_DECAY): the teacher's first items matter most.
RANK_DECAY = 10.0
# The student's mass outside the teacher's items is floored at float32's smallest normal number (its log,
# -87.3), so that a log of it stays finite where the teacher's items are the whole catalogue (and the
# teacher's rest is 0) or the student leaves nothing measurable outside them.
TINY = torch.finfo(torch.float32).tiny
LOG_TINY = math.log(TINY)


@dataclass(frozen=True)
class SoftTarget:
    """A KD loss on M rows as a scaled cross-entropy against the teacher's k items (and, with
    ``rest``, one bucket of every other item).

    Per row, ``KD = scale · (-Σ_j p_j · log q[item_j] - rest · log q_rest) + offset``, with
    ``q = softmax(s / T)`` over items ``1..N`` and ``q_rest`` its mass outside the row's items.
    ``offset`` depends on the teacher only, so it changes the value, not the gradient.

    Attributes:
        p: ``(M, k)`` float32, the target's mass on each of the row's teacher items.
        scale: weight of the cross-entropy term.
        offset: ``(M,)`` float32, added to each row.
        rest: ``(M,)`` float32, the target's mass on the bucket, ``1 - Σ_j p_j``; None: no bucket
            (each row of ``p`` sums to 1).
    """

    p: Tensor
    scale: float
    offset: Tensor
    rest: Tensor | None = None

    def rows(self, log_q: Tensor, log_q_rest: Tensor | None = None) -> Tensor:
        """Per-row KD ``(M,)`` from ``log_q`` ``(M, k)``, ``log softmax(s / T)`` at the teacher's items,
        and, where the target has a bucket, ``log_q_rest`` ``(M,)``, the log of the student's mass
        outside them (:func:`log_mass_outside`)."""
        cross = -(self.p * log_q).sum(-1)
        if self.rest is not None:
            if log_q_rest is None:
                raise ValueError("this soft target has mass outside the teacher's items: give log_q_rest")
            cross = cross - self.rest * log_q_rest
        return self.scale * cross + self.offset


def log_mass_outside(log_q: Tensor, items: Tensor) -> Tensor:
    """``log(Σ_{i ∉ items} q_i + TINY)`` per row ``(M,)``: the student's mass outside the teacher's items.

    Summed over the items themselves, never as ``1 - Σ_j q[item_j]``, which cancels when the items hold
    nearly all of it; :data:`TINY` keeps it finite (and its gradient too) where nothing is outside.

    Args:
        log_q: ``(M, C)`` the student's log-probabilities (a padding column may hold -inf).
        items: ``(M, k)`` the columns of the teacher's items.
    """
    outside = log_q.scatter(1, items, float("-inf"))  # (M, C)
    floor = log_q.new_full((len(log_q), 1), LOG_TINY)
    return torch.logsumexp(torch.cat([outside, floor], dim=1), dim=1)


def kl(teacher_logits: Tensor, temperature: float, tail: Tensor | None = None) -> SoftTarget:
    """Hinton distillation: ``KD = T² · KL(p ‖ q)``, ``p = softmax(t / T)``, ``q = softmax(s / T)``.

    Without a tail the teacher's distribution lives on its k items (a top-k teacher is renormalised on
    them); the student's runs over the whole catalogue, so mass the student gives to other items is
    penalised through its normaliser. As a soft target:
    ``T² · KL(p ‖ q) = T² · Σ_j p_j (log p_j - log q_j) = T² · (-Σ_j p_j log q_j) + T² · Σ_j p_j log p_j``,
    so ``scale = T²`` and ``offset = T² · Σ_j p_j log p_j``.

    **With a tail, at T = 1**, the teacher keeps the mass of its full row: ``p_j = softmax(t)_j · (1 -
    e^tail)`` on its k items and ``p_rest = e^tail`` on one bucket of every other item, a proper
    distribution over k + 1 outcomes, and KD is the KL on that coarsened distribution against the
    student's, ``q_rest = 1 - Σ_j q_j``:
    ``KL = Σ_j p_j log(p_j / q_j) + p_rest log(p_rest / q_rest)``: ``rest = p_rest``, ``scale = 1``,
    ``offset = Σ_j p_j log p_j + p_rest log p_rest``. It is 0 only when the student matches the teacher
    on the k items and on the bucket's total, it is at most the KL on the full rows (coarsening loses
    information), and with k = N (tail -inf, mass 0) it is exactly the full KL.

    **At T ≠ 1 the tail is not used**: the teacher's mass outside its k items at temperature T,
    ``Σ_{i ∉ top k} exp(t_i / T) / Σ_i exp(t_i / T)``, depends on how the dropped mass spreads over the
    dropped items, which a tail at T = 1 does not say (as T grows it tends to ``(N - k) / N`` whatever
    the tail). Rather than a guess, KD at T ≠ 1 is the KL on the top k renormalised, as without a tail.

    Args:
        teacher_logits: ``(M, k)`` float32 teacher scores (up to a constant per row).
        temperature: T, softens both distributions.
        tail: ``(M,)`` float32 log of the teacher's probability outside its k items at T = 1, or None.
    """
    if tail is not None and temperature == 1.0:
        rest = tail.exp()  # (M,) p_rest; 0 where tail is -inf
        log_p = torch.log_softmax(teacher_logits, dim=-1) + torch.log(-torch.expm1(tail))[:, None]  # (M, k)
        p = log_p.exp()
        return SoftTarget(p, 1.0, (p * log_p).sum(-1) + torch.special.xlogy(rest, rest), rest)
    log_p = torch.log_softmax(teacher_logits / temperature, dim=-1)  # (M, k)
    p = log_p.exp()
    return SoftTarget(p, temperature**2, temperature**2 * (p * log_p).sum(-1))


def rank(teacher_logits: Tensor, temperature: float, tail: Tensor | None = None) -> SoftTarget:
    """Ranking distillation on the teacher's top-k: ``KD = -Σ_r w_r · log q[item_r]``, ``q = softmax(s / T)``.

    In the family of Ranking Distillation (Tang & Wang, 2018) and DLLM2Rec's importance weights:
    the student should rank each of the teacher's top items high, the teacher's first items most,
    with ``w_r ∝ exp(-r / RANK_DECAY)`` for ranks ``r = 0..k-1``, normalised to sum to 1. This is
    already a soft target: ``p = w``, ``scale = 1``, ``offset = 0``. The teacher's scores only decide
    the order (already descending), and T only enters through the student's softmax.

    Args:
        teacher_logits: ``(M, k)`` float32 raw teacher scores, descending.
        temperature: T of the student's softmax (unused here).
        tail: the teacher's mass outside its k items (unused: the loss is about the top k's order).
    """
    del temperature, tail
    ranks = torch.arange(teacher_logits.shape[1], device=teacher_logits.device, dtype=torch.float32)
    weights = torch.exp(-ranks / RANK_DECAY)  # (k,)
    p = (weights / weights.sum()).expand_as(teacher_logits)  # (M, k)
    return SoftTarget(p, 1.0, teacher_logits.new_zeros(teacher_logits.shape[0]))


# Each takes (teacher_logits (M, k), temperature, tail (M,) or None); a loss that has no use for the
# tail takes it all the same.
LossFn = Callable[[Tensor, float, "Tensor | None"], SoftTarget]
KD: dict[str, LossFn] = {"kl": kl, "rank": rank}


def kd_by_name(name: str) -> LossFn:
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
    tail: Tensor | None = None,
) -> Tensor:
    """The loss ``name`` of :data:`KD` on whole logit matrices: the reference the chunked pass matches.

    Args:
        name: a key of :data:`KD`.
        student_logits: ``(M, num_items + 1)``; column 0 is padding and left out of the softmax.
        teacher_items: ``(M, k)`` item ids in ``1..num_items``.
        teacher_logits: ``(M, k)`` teacher scores, descending (up to a constant per row).
        temperature: T.
        tail: ``(M,)`` log of the teacher's probability outside its k items (T = 1), or None.

    Returns:
        Scalar float32, the mean of :class:`SoftTarget`'s per-row KD (0 for M = 0).
    """
    loss = kd_by_name(name)
    if len(student_logits) == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    target = loss(teacher_logits.float(), temperature, None if tail is None else tail.float())
    log_q = _log_softmax_items(student_logits, temperature)  # (M, N + 1), -inf at padding
    log_q_rest = None if target.rest is None else log_mass_outside(log_q, teacher_items)
    return target.rows(log_q.gather(1, teacher_items), log_q_rest).mean()


def _log_softmax_items(student_logits: Tensor, temperature: float) -> Tensor:
    """log-softmax over items 1..N at temperature T; the padding column gets -inf."""
    logits = student_logits.float() / temperature
    logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)
    return F.log_softmax(logits, dim=-1)
