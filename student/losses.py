"""Label losses for training SASRec: full-softmax cross-entropy, sampled binary cross-entropy, and the
sampled softmax for catalogues too large for a full softmax at every position.

Pure functions of the model's states and the targets. All are computed in float32 at the non-pad
positions only (target 0 is padding) and averaged over those positions; the full CE can run its three
catalogue products in bfloat16 (``matmul_dtype``, ``student-train --precision bfloat16``), its sums
staying float32. Knowledge-distillation losses
are defined in ``distill/losses.py``; the full CE and the sampled softmax fuse them into their passes.

The sampled softmax (:func:`sampled_loss`, ``--loss sampled``) replaces the full CE's normaliser
``Z = Σ_j exp(s_j)`` over items ``1..V`` by an estimate from a sample drawn per batch. Choices where
implementations differ, fixed here:

- **Shared negatives, not per-position ones.** One candidate set per batch, scored by one
  ``(N, d) x (d, M)`` product: for the memory of per-position negatives' ``N·n`` gathered
  embeddings a position sees far more negatives, and in-batch items cost nothing to draw. The
  positions of a batch then share their sampling noise (correlated estimates, not biased ones).
- **In-batch items are enumerated, not sampled.** The candidates are ``U``, the batch's distinct
  targets, plus ``n`` draws ``D`` from ``Q`` (uniform, or the training split's item counts plus one),
  with replacement. Given the batch, ``U`` is a known set: its items enter the normaliser exactly
  (``Q = 1``, log-correction 0), and the draws estimate the mass outside it:
  ``Ẑ = Σ_{j∈U} exp(s_j) + Σ_{d∈D, d∉U} exp(s_d) / (n·Q(d))``, unbiased for ``Z`` at every position
  (in expectation over the draws, the batch held fixed). Yi et al. (RecSys'19) instead correct each
  in-batch logit by the log of the item's probability of being in a batch (a streaming frequency
  estimate), which treats a batch's items as independent popularity draws. A batch of sequences is
  not that — a position's own history and future are always in it, and one item fills many positions —
  so there the correction is approximate; here it is exact and needs no ``Q`` for in-batch items.
- **The logQ correction is ``log(n·Q(d))``**, the expected number of times ``d`` is drawn, not
  ``log Q(d)``: with the in-batch part uncorrected, the constant ``log n`` is what puts both parts on
  the catalogue's scale. The positive's logit is not corrected (it is in ``U``, counted exactly). With
  every item drawn once under uniform ``Q`` (``n·Q = 1``) the loss is exactly the full CE.
- **Accidental hits are masked**: a draw equal to an item of ``U`` (the position's own positive
  among them) is dropped, since ``U`` already counts it; this keeps ``Ẑ`` unbiased for the mass
  outside ``U``. Smoothing the counts by one gives every item ``Q > 0``: an item never drawn would
  leave its mass out of ``Ẑ`` for good.
- **What is left biased**: ``E[log Ẑ] <= log Z`` (Jensen), so the loss is low by about
  ``Var(Ẑ) / (2 Z²)``, and its gradient (a candidate's softmax weight, ``exp(s_j) / (n·Q(j)·Ẑ)`` for a
  draw) is a ratio estimate, biased by O(1/n). Both vanish as the sample grows
  (``tests/student/test_sampled.py`` measures them).

Against gSASRec's gBCE (Petrov & Macdonald, RecSys'23): gBCE keeps SASRec's pointwise BCE with ``k``
uniform negatives per position and raises the positive's sigmoid to a power
``β = α(t(1 - 1/α) + 1/α)``, ``α = k / (V - 1)``, undoing the overconfidence that negative sampling
gives BCE (``t = 1``: fully calibrated); it needs no normaliser. It is, though, a calibrated BCE, not the
softmax: it does not share the objective of the full CE (this toolkit's default and strongest loss),
and it gives no normalised ``log q(j)`` for distillation, a KL against the student's softmax. The
sampled softmax is the full CE's estimate, tends to it as the sample grows, and its ``Ẑ`` gives KD
the same normaliser, so it is the loss for catalogues of 10⁵-10⁷ items (the CLI default stays the
exact ``ce`` where it fits). gBCE is not implemented here.

With a teacher, the sampled pass estimates the KD term the same way (:func:`sampled_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx
from torch.utils.checkpoint import checkpoint

from distill.losses import KD, LOG_TINY, TINY, SoftTarget, kd_by_name
from student.sasrec import SASRec


@dataclass(frozen=True)
class BatchScores:
    """The teacher's side of a fused CE + KD pass over the ``N`` non-pad positions of a batch.

    Attributes:
        rows: ``(N,)`` long, the teacher's row for each position, -1 where it scored none.
        fetch: teacher rows ``(m,)`` -> their items ``(m, k)`` long (ids ``1..num_items``) and raw
            logits ``(m, k)`` float32, on any device; called once per chunk, so a full-catalogue
            teacher never has more than a chunk of rows in memory.
        kd: a key of :data:`distill.losses.KD`, the loss as a soft target ``(p, scale, offset, rest)``.
        alpha: weight of KD at a scored position: ``(1 - alpha) * CE + alpha * KD`` there.
        temperature: KD temperature T.
        tail: teacher rows ``(m,)`` -> their tails ``(m,)`` float32 (log of the teacher's probability
            outside its k items at T = 1), for a score directory that has them; None otherwise.
    """

    rows: Tensor
    fetch: Callable[[Tensor], tuple[Tensor, Tensor]]
    kd: str
    alpha: float
    temperature: float
    tail: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        kd_by_name(self.kd)  # a clear ValueError now rather than deep inside the pass


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Summed softmax cross-entropy of ``h @ E.T`` whose gradients are computed chunk by chunk, with
    the distillation term fused in when ``soft`` is given.

    Autograd through ``F.cross_entropy`` keeps the whole ``(N, V)`` log-softmax alive until backward and
    then walks it several more times. Here each chunk of rows computes its logits, loss and the gradients
    w.r.t. ``h`` and ``E`` at once while the chunk is still in cache, so only ``(chunk, V)`` floats ever
    exist and backward is a scalar multiply (first-order only). The price is that forward does the
    backward's matmuls even if backward is never called, so callers use it only when a gradient is
    wanted.

    Distillation reuses the chunk's logits, softmax and both matmuls: at a scored row the gradient
    w.r.t. the logits is ``(1 - α)(softmax(z) - onehot) + α (scale / T)(softmax(z / T) - p̃)``
    (:class:`distill.losses.SoftTarget`; ``p̃`` is ``p`` on the teacher's items and, with a bucket,
    ``rest · q_i / q_rest`` elsewhere); at T = 1 the two softmaxes are one. The student's bucket,
    ``q_rest``, is summed from the chunk's softmax outside the teacher's items (which are zeroed in
    place, then overwritten by their gradient), never taken as ``1 - Σ_j q_j``, which cancels. Rows
    the teacher did not score, and every row when α = 0, take exactly the plain CE path.

    Returns the summed loss and, not differentiable, the summed KD over scored rows (for logging).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        h: Tensor,
        E: Tensor,
        targets: Tensor,
        chunk_size: int,
        soft: BatchScores | None,
        matmul_dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        # h: (N, d) float32; E: (V, d) float32; targets: (N,) long in [0, V)
        want_h, want_E = ctx.needs_input_grad[:2]
        grad_h = torch.empty_like(h) if want_h else None  # (N, d)
        # E's gradient is summed transposed, (d, V): the chunk's product is then h_c.T @ probs, which
        # runs faster than probs.T @ h_c (in bfloat16 about 2x) and sums into the same memory order.
        grad_Et = E.new_zeros(E.shape[::-1]) if want_E else None  # (d, V)
        # The three products run in matmul_dtype (inputs rounded once here). In bfloat16 the plain rows'
        # softmax reads and writes bfloat16 too (computing in float32 inside); rows with a teacher are
        # mixed in float32; the loss and the gradients' sums are float32 throughout.
        lowered = matmul_dtype != h.dtype
        h_mm, E_mm = (h.to(matmul_dtype), E.to(matmul_dtype)) if lowered else (h, E)
        total = h.new_zeros(())
        kd_total = h.new_zeros(())
        distill = soft is not None and soft.alpha > 0
        for start in range(0, h.shape[0], chunk_size):
            h_c = h_mm[start : start + chunk_size]  # (C, d)
            t_c = targets[start : start + chunk_size]  # (C,)
            arange = torch.arange(t_c.shape[0], device=t_c.device)
            logits = h_c @ E_mm.T  # (C, V)
            scored = None
            if distill:
                rows = soft.rows[start : start + chunk_size]  # (C,)
                scored = (rows >= 0).nonzero().squeeze(1)  # (m,) rows of the chunk
                if scored.numel() == 0:
                    scored = None
            target = None if scored is None else _soft_target(soft, rows[scored], logits.device)
            if scored is None or (soft.temperature == 1.0 and target[1].scale == 1.0):
                # d(sum CE)/d(logits) = softmax - onehot (mixed with KD's at T = 1, whose softmax is the
                # same), over the softmax's own storage: one pass over the chunk, where log_softmax then
                # exp would take two. Losses are read off probabilities floored at float32's smallest
                # normal (a loss of at most 87.3 per position is reported; the gradient is exact).
                probs = torch.softmax(logits, dim=-1)  # (C, V)
                ce_rows = -probs[arange, t_c].float().clamp_min_(TINY).log_()  # (C,)
                if scored is None:
                    total += ce_rows.sum()
                    probs[arange, t_c] -= 1.0
                else:
                    _fused_at_t1(probs, t_c, ce_rows, scored, *target, soft.alpha, total, kd_total)
            else:
                logits = logits.float()
                logp = torch.log_softmax(logits, dim=-1)  # (C, V)
                ce_rows = -logp[arange, t_c]  # (C,)
                probs = _fused_chunk(logits, logp, t_c, ce_rows, scored, *target, soft, total, kd_total)
            if lowered:
                probs = probs.to(matmul_dtype)
            if grad_h is not None:
                if lowered:
                    grad_h[start : start + chunk_size] = probs @ E_mm
                else:
                    torch.mm(probs, E, out=grad_h[start : start + chunk_size])
            if grad_Et is not None:
                if lowered:
                    grad_Et += h_c.T @ probs
                else:
                    grad_Et.addmm_(h_c.T, probs)
        ctx.save_for_backward(grad_h, None if grad_Et is None else grad_Et.T)
        ctx.mark_non_differentiable(kd_total)
        return total, kd_total

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_out: Tensor, _grad_kd: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:
        grad_h, grad_E = ctx.saved_tensors
        return (
            None if grad_h is None else grad_h * grad_out,
            None if grad_E is None else grad_E * grad_out,
            None,
            None,
            None,
            None,
        )


def _soft_target(soft: BatchScores, teacher_rows: Tensor, device: torch.device) -> tuple[Tensor, SoftTarget]:
    """The teacher's side of a chunk whose scored rows have ``teacher_rows`` ``(m,)``: the column of each
    teacher item in the item table ``(m, k)`` long, and the KD loss as a soft target."""
    items, t_logits = soft.fetch(teacher_rows)
    items = items.to(device).long() - 1  # (m, k): column of each teacher item in E
    tail = None if soft.tail is None else soft.tail(teacher_rows).to(device, torch.float32)
    return items, KD[soft.kd](t_logits.to(device, torch.float32), soft.temperature, tail)


def _add_losses(
    target: SoftTarget,
    log_q_items: Tensor,
    outside: Tensor | None,
    ce_rows: Tensor,
    scored: Tensor,
    alpha: float,
    total: Tensor,
    kd_total: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """Add a chunk's loss, ``(1 - α)·CE + α·KD`` at scored rows and CE elsewhere, to ``total`` and its KD
    to ``kd_total``, in place, from the student's log-probabilities at the teacher's items ``(m, k)``
    and, with a bucket, its mass ``outside`` them ``(m,)``. Returns the CE's weight per row ``(C,)`` and
    the bucket's share ``rest / q_rest`` per scored row ``(m,)`` (None without a bucket)."""
    rest = target.rest
    # The student's bucket (floored as distill.losses.log_mass_outside floors it) and p̃'s share of it.
    bucket = None if rest is None else rest / (outside + TINY)  # (m,)
    log_q_rest = None if rest is None else (outside + TINY).log()
    kd_rows = target.rows(log_q_items, log_q_rest)  # (m,)
    ce_weights = torch.ones_like(ce_rows)
    ce_weights[scored] = 1.0 - alpha
    total += (ce_weights * ce_rows).sum() + alpha * kd_rows.sum()
    kd_total += kd_rows.sum()
    return ce_weights, bucket


def _fused_at_t1(
    probs: Tensor,
    targets: Tensor,
    ce_rows: Tensor,
    scored: Tensor,
    items: Tensor,
    target: SoftTarget,
    alpha: float,
    total: Tensor,
    kd_total: Tensor,
) -> None:
    """One chunk of :class:`_ChunkedSoftmaxCE` whose rows ``scored`` have a teacher, at T = 1 with scale
    1 (kl and rank at T = 1), where KD's softmax is the CE's: turns ``probs`` ``(C, V)``, the chunk's
    softmax (float32 or bfloat16), into d(loss)/d(logits) in place, and adds the chunk's loss to
    ``total`` and its KD to ``kd_total``.

    (1 - α)(P - onehot) + α(P - p̃) = P - (1 - α)·onehot - α·p̃, with p̃ = p on the teacher's items and,
    with a bucket, rest · P_i / q_rest elsewhere.
    """
    p, rest = target.p, target.rest  # (m, k), (m,) or None
    whole = scored.numel() == probs.shape[0]  # a dense teacher scores every row: no row copies
    index = (scored[:, None], items)
    if rest is None:
        q_items = probs.gather(1, items) if whole else probs[index]  # (m, k)
        outside = None
    else:  # the teacher's items zeroed in probs, their values kept aside
        q_items, outside = _take_items(probs, items, None if whole else scored)
    log_q_items = q_items.float().clamp_min(TINY).log_()
    ce_weights, bucket = _add_losses(target, log_q_items, outside, ce_rows, scored, alpha, total, kd_total)
    arange = torch.arange(targets.shape[0], device=targets.device)
    if bucket is None:
        probs[arange, targets] -= ce_weights.to(probs.dtype)
        if whole:  # a row's items are distinct: add by gather and scatter (scatter_add_ is slow in bf16)
            _scatter(probs, items, probs.gather(1, items).float() - alpha * p)
        else:
            probs.index_put_(index, (p * -alpha).to(probs.dtype), accumulate=True)
        return
    # off the teacher's items P·(1 - α·rest/q_rest); on them (zeroed above) P - α·p
    shrink = torch.ones_like(ce_rows)
    shrink[scored] = 1.0 - alpha * bucket
    probs.mul_(shrink[:, None].to(probs.dtype))
    on_items = q_items.float() - alpha * p  # (m, k)
    if whole:
        _scatter(probs, items, on_items)
    else:
        probs.index_put_(index, on_items.to(probs.dtype))
    probs[arange, targets] -= ce_weights.to(probs.dtype)


def _fused_chunk(
    logits: Tensor,
    logp: Tensor,
    targets: Tensor,
    ce_rows: Tensor,
    scored: Tensor,
    items: Tensor,
    target: SoftTarget,
    soft: BatchScores,
    total: Tensor,
    kd_total: Tensor,
) -> Tensor:
    """One chunk of :class:`_ChunkedSoftmaxCE` whose rows ``scored`` have a teacher (their ``items`` and
    soft ``target`` from :func:`_soft_target`), at T != 1 or a scale other than 1, in float32.

    Adds the chunk's loss to ``total`` and its KD to ``kd_total`` in place; returns d(loss)/d(logits)
    ``(C, V)``, over ``logp``'s storage (``logits`` is overwritten).
    """
    alpha, temperature = soft.alpha, soft.temperature
    p, scale, rest = target.p, target.scale, target.rest  # (m, k), float, (m,) or None
    whole = scored.numel() == logits.shape[0]
    # softmax(z / T) with a single exp over the rows; log q only where the teacher has mass.
    z = logits.div_(temperature) if whole else logits[scored].div_(temperature)  # (m, V)
    top = z.amax(dim=-1, keepdim=True)
    picked = z.gather(1, items)  # (m, k)
    q = z.sub_(top).exp_()
    norm = q.sum(dim=-1, keepdim=True)
    q.div_(norm)  # (m, V) softmax(z / T)
    log_q_items = picked - top - norm.log()
    outside = None
    if rest is not None:
        q_items, outside = _take_items(q, items, None)
    probs = logp.exp_()  # (C, V) softmax(z), over logp's storage
    ce_weights, bucket = _add_losses(target, log_q_items, outside, ce_rows, scored, alpha, total, kd_total)

    step = alpha * scale / temperature
    arange = torch.arange(targets.shape[0], device=targets.device)
    probs[arange, targets] -= 1.0
    sub = probs if whole else probs[scored]
    if bucket is None:
        sub.mul_(1.0 - alpha).add_(q, alpha=step).scatter_add_(1, items, p * -step)
    else:  # q is zero on the teacher's items here: q·(1 - rest/q_rest) off them, q - p on them
        q.mul_((1.0 - bucket)[:, None])
        sub.mul_(1.0 - alpha).add_(q, alpha=step).scatter_add_(1, items, (q_items - p) * step)
    if not whole:
        probs[scored] = sub
    return probs


def _take_items(probs: Tensor, items: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor]:
    """Zero the teacher's ``items`` ``(m, k)`` in ``rows`` ``(m,)`` of ``probs`` ``(C, V)`` (every row
    when None) in place; returns their values there ``(m, k)`` and the rows' mass left outside them
    ``(m,)``."""
    if rows is None:
        at = probs.gather(1, items)
        _scatter(probs, items, torch.zeros_like(at))
        return at, probs.sum(dim=-1).float()
    index = (rows[:, None], items)
    at = probs[index]
    probs.index_put_(index, torch.zeros_like(at))
    return at, probs.sum(dim=-1).float()[rows]


def _scatter(probs: Tensor, items: Tensor, values: Tensor) -> None:
    """``probs[i, items[i, j]] = values[i, j]`` in place, ``values`` cast to ``probs``'s dtype. In bfloat16
    as a copy of the 16-bit patterns, which torch scatters 4x faster than bfloat16 values."""
    values = values.to(probs.dtype)
    if probs.dtype == torch.bfloat16:
        probs, values = probs.view(torch.int16), values.view(torch.int16)
    probs.scatter_(1, items, values)


def _summed_ce_no_grad(h: Tensor, E: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
    """Same value as :class:`_ChunkedSoftmaxCE` without the gradient work, for evaluation."""
    total = h.new_zeros(())
    for start in range(0, h.shape[0], chunk_size):
        logits = h[start : start + chunk_size] @ E.T  # (C, V)
        total += F.cross_entropy(logits, targets[start : start + chunk_size], reduction="sum")
    return total


# Rows of logits per chunk. On CPU, 128 to 1024 rows x ML-1M's 3,416 items are equally fast (within 3%),
# larger chunks slower as they outgrow the cache (bench/results/sasrec_loss_speed.md); accelerators
# prefer fewer, larger kernels.
CPU_CHUNK_SIZE = 256
ACCELERATOR_CHUNK_SIZE = 4096


def ce_loss(
    model: SASRec,
    h: Tensor,
    targets: Tensor,
    chunk_size: int | None = None,
    matmul_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Full-softmax cross-entropy over the whole catalogue at every non-pad position.

    Item 0 (padding) is left out of the softmax: logits are taken against items ``1..num_items`` only,
    so no probability mass can land on it and its embedding gets no gradient from this loss. Only the
    non-pad rows of ``h`` are scored, in chunks of ``chunk_size`` rows whose gradients are computed
    during the forward pass, so the ``(N, num_items)`` logit matrix never exists whole. On ML-1M-sized
    batches (N ≈ 20k, 3416 items, d = 64, 2 CPU threads) this takes about 0.2 s and 36 MB, against about
    0.5 s and 820 MB for autograd through ``F.cross_entropy`` on the whole logit matrix.

    Args:
        model: The student; only its item table is used.
        h: States from ``model(seq)``, ``(B, L, d)``.
        targets: Next-item ids, ``(B, L)`` long; 0 marks positions to ignore.
        chunk_size: Rows of logits computed at a time; by default 256 on CPU and 4096 elsewhere.
        matmul_dtype: Precision of the three ``(N, d) x (d, V)`` products (logits and both gradients):
            float32, or bfloat16 for mixed precision (about 2x faster on a CPU with AMX; gradients
            within about 2^-8 relative). The loss and the summed gradients are float32 either way.

    Returns:
        Scalar float32 mean cross-entropy over non-pad positions (0 if there are none).
    """
    return _chunked_loss(model, h, targets, chunk_size, None, matmul_dtype)[0]


def ce_kd_loss(
    model: SASRec,
    h: Tensor,
    targets: Tensor,
    soft: BatchScores,
    chunk_size: int | None = None,
    matmul_dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy mixed with distillation, per position, in the same chunked pass as :func:`ce_loss`.

    Per non-pad position: ``(1 - alpha) * CE + alpha * KD`` where the teacher scored it, CE alone where
    it did not; the mean over positions. KD is the loss ``soft.kd`` of :data:`distill.losses.KD` on that
    position's logits (:func:`distill.losses.kd_loss` is the reference), computed from the chunk's own
    log-softmax, so a teacher at every position costs one ``(chunk, V)`` gather and scatter
    per chunk (and one more softmax at T != 1). With ``alpha = 0`` this is exactly :func:`ce_loss`.

    Args:
        model: The student; only its item table is used.
        h: States from ``model(seq)``, ``(B, L, d)``.
        targets: Next-item ids, ``(B, L)`` long; 0 marks positions to ignore.
        soft: The teacher's rows for the ``N`` non-pad positions of ``targets`` in row-major order.
        chunk_size, matmul_dtype: As for :func:`ce_loss`.

    Returns:
        The scalar mixed loss and, detached, the mean KD over scored positions (0 if none).
    """
    return _chunked_loss(model, h, targets, chunk_size, soft, matmul_dtype)


def _positions(
    h: Tensor, targets: Tensor, chunk_size: int | None, soft: BatchScores | None
) -> tuple[int, Tensor, Tensor]:
    """What both chunked passes start from: the chunk size (the device's default when None), the states
    ``(N, d)`` float32 and target ids ``(N,)`` of the non-pad positions, checked against ``soft``'s rows."""
    if chunk_size is None:
        chunk_size = CPU_CHUNK_SIZE if h.device.type == "cpu" else ACCELERATOR_CHUNK_SIZE
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    mask = targets != 0  # (B, L)
    h_sel, labels = h[mask].float(), targets[mask]  # (N, d), (N,)
    if soft is not None and soft.rows.shape != (len(labels),):
        raise ValueError(
            f"soft labels for {tuple(soft.rows.shape)} rows, the batch has {len(labels)} positions"
        )
    return chunk_size, h_sel, labels


def _chunked_loss(
    model: SASRec,
    h: Tensor,
    targets: Tensor,
    chunk_size: int | None,
    soft: BatchScores | None,
    matmul_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    chunk_size, h_sel, labels = _positions(h, targets, chunk_size, soft)
    labels = labels - 1  # (N,) shifted: row 0 of the table (padding) is dropped below
    items = model.item_embeddings()[1:].float()  # (num_items, d)
    count = h_sel.shape[0]
    kd_mean = h.new_zeros((), dtype=torch.float32)
    if count == 0:
        # Keep the graph connected so backward() still works on an all-padding batch.
        return h.sum().float() * 0.0, kd_mean
    # Under autocast the logit matmuls would otherwise run in half precision.
    with torch.autocast(h.device.type, enabled=False):
        wants_grad = torch.is_grad_enabled() and (h_sel.requires_grad or items.requires_grad)
        if wants_grad or (soft is not None and soft.alpha > 0):
            total, kd_total = _ChunkedSoftmaxCE.apply(h_sel, items, labels, chunk_size, soft, matmul_dtype)
            scored = 0 if soft is None else int((soft.rows >= 0).sum())
            if scored:
                kd_mean = kd_total / scored
        else:
            total = _summed_ce_no_grad(h_sel, items, labels, chunk_size)
    return total / count, kd_mean


def sample_negatives(
    targets: Tensor, num_items: int, n: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draw ``n`` negatives per position uniformly from the items other than the target.

    Classic SASRec also rejects items from the user's history; this only rejects the target itself,
    which is exact and needs no resampling loop: draw from ``1..num_items-1`` and shift draws at or
    above the target up by one. Other history items can appear as negatives.

    Args:
        targets: Next-item ids, ``(B, L)`` long; 0 marks padding.
        num_items: Catalogue size (ids ``1..num_items``); must be at least 2.
        n: Negatives per position, >= 1.
        generator: Optional RNG on ``targets.device`` for reproducible draws.

    Returns:
        ``(B, L, n)`` long on ``targets.device``; 0 at padding positions.
    """
    if num_items < 2:
        raise ValueError(f"sampling negatives needs num_items >= 2, got {num_items}")
    if n < 1:
        raise ValueError(f"number of negatives must be >= 1, got {n}")
    t = targets.unsqueeze(-1)  # (B, L, 1)
    draws = torch.randint(
        1, num_items, (*targets.shape, n), generator=generator, device=targets.device
    )  # (B, L, n) in 1..num_items-1
    negatives = draws + (draws >= t).long()  # skips the target; uniform over the other items
    return negatives * (t != 0)


def bce_loss(model: SASRec, h: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
    """SASRec's binary cross-entropy: the target is a positive, each sampled negative a negative.

    Per non-pad position: ``-log σ(h·e_target) - Σ_k log(1 - σ(h·e_neg_k))``, i.e. the negatives are
    summed (with one negative this is exactly the original SASRec loss), then averaged over positions.

    Args:
        model: The student; only its item table is used.
        h: States from ``model(seq)``, ``(B, L, d)``.
        targets: Next-item ids, ``(B, L)`` long; 0 marks positions to ignore.
        negatives: Sampled item ids, ``(B, L, n)`` long, e.g. from :func:`sample_negatives`.

    Returns:
        Scalar float32 mean loss over non-pad positions (0 if there are none).
    """
    mask = targets != 0  # (B, L)
    h_sel = h[mask].float()  # (N, d)
    count = h_sel.shape[0]
    if count == 0:
        return h.sum().float() * 0.0
    items = model.item_embeddings().float()  # (num_items + 1, d)
    with torch.autocast(h.device.type, enabled=False):
        pos = (h_sel * items[targets[mask]]).sum(-1)  # (N,)
        neg = torch.einsum("nd,nkd->nk", h_sel, items[negatives[mask]])  # (N, n)
    # -log σ(x) = softplus(-x) and -log(1 - σ(x)) = softplus(x), both stable for large |x|.
    return (F.softplus(-pos).sum() + F.softplus(neg).sum()) / count


# ------------------------------------------------------------------------------------------ sampled softmax
@dataclass(frozen=True)
class NegativeSampler:
    """The extra negatives of :func:`sampled_loss`: ``n`` draws per batch, with replacement, from ``Q``.

    Draws use torch's generator (or ``generator``), so a seeded run and its ``--resume`` draw the same.

    Attributes:
        n: draws per batch, >= 1.
        log_q: ``(num_items + 1,)`` float32 ``log Q(item)``; -inf at 0 (padding is never drawn).
        cdf: ``(num_items,)`` float64 cumulative ``Q`` of items ``1..num_items``; None when uniform.
    """

    n: int
    log_q: Tensor
    cdf: Tensor | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"number of negatives must be >= 1, got {self.n}")

    @classmethod
    def uniform(cls, num_items: int, n: int) -> NegativeSampler:
        """``Q(item) = 1 / num_items``."""
        log_q = torch.full((num_items + 1,), -math.log(num_items))
        log_q[0] = float("-inf")
        return cls(n, log_q)

    @classmethod
    def popularity(cls, counts: Tensor, n: int) -> NegativeSampler:
        """``Q(item) ∝ counts[item] + 1``: by popularity, with every item drawable.

        Args:
            counts: ``(num_items + 1,)`` interactions per item (index 0, padding, is ignored).
            n: draws per batch.
        """
        weights = counts[1:].double() + 1.0  # (num_items,)
        q = weights / weights.sum()
        log_q = torch.cat([torch.full((1,), float("-inf"), dtype=torch.float64), q.log()]).float()
        return cls(n, log_q, q.cumsum(0))

    def draw(self, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One batch's draws and their logQ correction.

        Returns:
            ``(items, log_counts)``: ``(n,)`` long item ids in ``1..num_items``, and ``(n,)`` float32
            ``log(n·Q(item))``, the log of how often each is expected among the draws.
        """
        num_items = self.log_q.shape[0] - 1
        if self.cdf is None:
            items = torch.randint(1, num_items + 1, (self.n,), generator=generator)
        else:
            u = torch.rand(self.n, generator=generator, dtype=torch.float64)
            items = torch.searchsorted(self.cdf, u, right=True).clamp_(max=num_items - 1) + 1
        return items, self.log_q[items] + math.log(self.n)


@dataclass(frozen=True)
class _SampledKD:
    """The distillation side of one chunk of :func:`sampled_loss`, for its ``m`` scored rows.

    Attributes:
        rows: ``(m,)`` the scored rows, indices into the chunk.
        columns: ``(m, k)`` each row's teacher items, as rows of the batch's embedding table.
        counted: ``(m, k)`` True where the teacher's item is in ``U`` (already among the shared columns).
        hidden: ``(m, M)`` True at shared columns that are draws of one of the row's teacher items.
        target: the KD loss on these rows as a soft target.
        alpha, temperature: as in :class:`BatchScores`.
        inside: ``(m, M)`` True at shared columns holding one of the row's teacher items (in ``U`` or
            drawn), which the student's bucket leaves out; None when the target has no bucket.
    """

    rows: Tensor
    columns: Tensor
    counted: Tensor
    hidden: Tensor
    target: SoftTarget
    alpha: float
    temperature: float
    inside: Tensor | None = None


# Positions x shared columns up to which sampled_loss keeps every chunk's activations for backward
# (about 6 such float32 tables with KD) instead of recomputing them: on Beauty-sized batches (1,080
# positions x 3,100 columns) keeping them made the KD loss's forward + backward 1.2x faster.
KEEP_ELEMENTS = 2**25


def sampled_loss(
    model: SASRec,
    h: Tensor,
    targets: Tensor,
    negatives: Tensor,
    log_counts: Tensor,
    soft: BatchScores | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Sampled softmax with the logQ correction, and KD over the teacher's top-k plus the same sample.

    The choices (shared candidates, in-batch items counted exactly, ``log(n·Q)`` on the draws, accidental
    hits masked) and the bias are the module's list. Per non-pad position with positive ``t`` and
    states ``h``, ``s_j = h·e_j``:

        CE = -s_t + log Ẑ,    Ẑ = Σ_{j∈U} exp(s_j) + Σ_{d∈D, d∉U} exp(s_d - log(n·Q(d)))

    With ``soft``, at a position the teacher scored, KD is ``soft.kd``'s :class:`SoftTarget` on
    ``log q̂(j) = s_j / T - log Ẑ_T`` for the teacher's items ``K`` (its top-k), where

        Ẑ_T = Σ_{j∈U∪K} exp(s_j / T) + Σ_{d∈D, d∉U∪K} exp(s_d / T - log(n·Q(d)))

    counts the batch's targets and the teacher's items exactly and estimates the rest of the catalogue
    from the draws: the importance weights ``1 / (n·Q(d))`` make ``Ẑ_T`` unbiased for
    ``Z_T = Σ_j exp(s_j / T)``. A KD loss's ``p`` sums to one, so the estimate is the exact KD plus
    ``scale·(log Ẑ_T - log Z_T)``: biased low (Jensen), by about ``scale·Var(Ẑ_T) / (2 Z_T²)``,
    which is small where ``U ∪ K`` holds most of the student's mass, and zero when the draws are the
    whole catalogue once under uniform ``Q``. As in :func:`ce_kd_loss`, the position's loss is
    ``(1 - alpha)·CE + alpha·KD`` there and CE elsewhere; ``alpha = 0`` is the plain sampled softmax.

    With a tail (``kl`` at T = 1), the student's bucket is the same estimate less the teacher's items:
    ``q̂_rest = R̂_T / Ẑ_T``, ``R̂_T = Ẑ_T - Σ_{j∈K} exp(s_j / T)``, i.e. ``U``'s other items exactly and
    the draws outside ``U ∪ K`` as in ``Ẑ_T``, so the student's coarsened distribution sums to one as
    the teacher's does. ``R̂_T`` is unbiased for the true bucket ``R_T``, and the KD's error becomes
    ``scale·((log Ẑ_T - log Z_T) - rest·(log R̂_T - log R_T))``: the bucket's own Jensen gap,
    ``Var(R̂_T) / (2 R_T²)`` (the same variance as ``Ẑ_T``'s over a smaller mass), now pushes the
    other way, so the bias is about ``scale·Var(Ẑ_T)·(rest / R_T² - 1 / Z_T²) / 2`` — of either sign,
    and still zero with the whole catalogue drawn once.

    Memory is ``O(N·(|U| + n + k))``, never the catalogue: rows are taken ``chunk_size`` at a time, and
    when the batch's positions times shared columns exceed :data:`KEEP_ELEMENTS` each chunk is
    recomputed in backward (activation checkpointing) rather than kept. The teacher's rows
    are fetched for the whole batch at once (``N·k``), so the score directory should be a top-k one: a
    full-catalogue one (k = V) is what the chunked :func:`ce_kd_loss` is for.

    Args:
        model: The student; only its item table is used.
        h: States from ``model(seq)``, ``(B, L, d)``.
        targets: Next-item ids, ``(B, L)`` long; 0 marks positions to ignore.
        negatives: ``(n,)`` long item ids drawn for the batch (:meth:`NegativeSampler.draw`).
        log_counts: ``(n,)`` float ``log(n·Q(item))`` of each draw.
        soft: The teacher's rows for the ``N`` non-pad positions of ``targets``, or None.
        chunk_size: Rows scored at a time; by default as for :func:`ce_loss`.

    Returns:
        The scalar mean loss over non-pad positions (0 if none) and, detached, the mean estimated KD
        over scored positions (0 if none).
    """
    if negatives.shape != log_counts.shape or negatives.dim() != 1:
        raise ValueError(f"negatives {tuple(negatives.shape)} and log_counts {tuple(log_counts.shape)}")
    chunk_size, h_sel, labels = _positions(h, targets, chunk_size, soft)
    count = h_sel.shape[0]
    kd_mean = h.new_zeros((), dtype=torch.float32)
    if count == 0:
        return h.sum().float() * 0.0, kd_mean
    negatives = negatives.to(labels.device)
    in_batch = torch.unique(labels)  # (|U|,) sorted
    drawn_in_batch = torch.isin(negatives, in_batch)  # (n,) accidental hits
    offset = torch.cat(
        [
            torch.zeros(len(in_batch), device=h.device),
            (-log_counts.to(h.device, torch.float32)).masked_fill(drawn_in_batch.to(h.device), float("-inf")),
        ]
    )  # (M,) added to each shared column's logit: 0 on U, -log(n·Q) on draws, -inf on hits
    positive = torch.searchsorted(in_batch, labels)  # (N,) each row's positive among the shared columns

    teacher = _TeacherRows.of(soft, negatives, in_batch) if soft is not None and soft.alpha > 0 else None
    # The batch's own table: every item a column refers to, gathered once.
    vocab = torch.unique(torch.cat([in_batch, negatives, *([teacher.items.flatten()] if teacher else [])]))
    shared = torch.searchsorted(vocab, torch.cat([in_batch, negatives]))  # (M,)
    total, kd_total = h_sel.new_zeros(()), h_sel.new_zeros(())
    with torch.autocast(h.device.type, enabled=False):
        table = model.item_rows(vocab.to(h.device)).float()  # (|W|, d)
        shared_emb = table[shared.to(h.device)]  # (M, d)
        wants_grad = torch.is_grad_enabled() and (h_sel.requires_grad or table.requires_grad)
        positive = positive.to(h.device)
        starts = list(range(0, count, chunk_size))
        if teacher is not None:  # each chunk's scored rows: teacher rows bounds[i]:bounds[i + 1]
            scored = teacher.scored
            bounds = torch.searchsorted(scored, torch.tensor([*starts, count], device=scored.device)).tolist()
        for i, start in enumerate(starts):
            stop = min(start + chunk_size, count)
            kd = None
            if teacher is not None and bounds[i + 1] > bounds[i]:
                kd = teacher.chunk(slice(bounds[i], bounds[i + 1]), start, vocab, soft, h.device)
            chunk = (h_sel[start:stop], shared_emb, table, positive[start:stop], offset, kd)
            if wants_grad and count * len(offset) > KEEP_ELEMENTS:  # keep the inputs; recompute in backward
                loss, kd_sum = checkpoint(
                    _sampled_chunk, *chunk, use_reentrant=False, preserve_rng_state=False
                )
            else:
                loss, kd_sum = _sampled_chunk(*chunk)
            total, kd_total = total + loss, kd_total + kd_sum
    if teacher is not None:
        kd_mean = kd_total / len(teacher.scored)
    return total / count, kd_mean


@dataclass(frozen=True)
class _TeacherRows:
    """The teacher's side of :func:`sampled_loss` at its ``S`` scored rows.

    Attributes:
        scored: ``(S,)`` the scored rows, ascending.
        items: ``(S, k)`` their teacher items.
        counted: ``(S, k)`` True where an item is in ``U``, so already among the shared columns.
        hidden: ``(S, |U| + n)`` True at shared columns that draw one of the row's teacher items.
        target: the KD loss on these rows as a soft target.
        inside: ``(S, |U| + n)`` True at shared columns holding one of the row's teacher items; None
            when the target has no bucket.
    """

    scored: Tensor
    items: Tensor
    counted: Tensor
    hidden: Tensor
    target: SoftTarget
    inside: Tensor | None = None

    @classmethod
    def of(cls, soft: BatchScores, negatives: Tensor, in_batch: Tensor) -> _TeacherRows | None:
        """The rows ``soft`` scored, against the batch's targets ``in_batch`` and draws ``negatives``;
        None if it scored none."""
        scored = (soft.rows >= 0).nonzero().squeeze(1)  # (S,)
        if scored.numel() == 0:
            return None
        items, t_logits = soft.fetch(soft.rows[scored])
        items = items.to(in_batch.device).long()  # (S, k)
        tail = None if soft.tail is None else soft.tail(soft.rows[scored]).float()  # (S,)
        # Which draws are one of the row's teacher items: each row's k items looked up among the distinct
        # draws (S·k searches; searching every draw in every row, S·n, was most of a KD step at n = 2048).
        distinct, draw_of = torch.unique(negatives, return_inverse=True)  # (D,), (n,) draw -> distinct
        at = torch.searchsorted(distinct, items).clamp_(max=len(distinct) - 1)  # (S, k)
        column = torch.where(distinct[at] == items, at, len(distinct))  # (S, k); D: not drawn
        drawn = items.new_zeros(len(items), len(distinct) + 1, dtype=torch.bool).scatter_(1, column, True)
        found = drawn[:, draw_of]  # (S, n) True where the draw is one of the row's teacher items
        counted = torch.isin(items, in_batch)  # (S, k)
        hidden = torch.cat([found.new_zeros(len(items), len(in_batch)), found], dim=1)  # (S, |U| + n)
        target = KD[soft.kd](t_logits.float(), soft.temperature, tail)
        inside = None
        if target.rest is not None:  # U's columns that hold a teacher item, and the draws of them
            column = torch.where(counted, torch.searchsorted(in_batch, items), len(in_batch))  # (S, k)
            in_u = found.new_zeros(len(items), len(in_batch) + 1).scatter_(1, column, True)[:, :-1]
            inside = hidden | torch.cat([in_u, found.new_zeros(found.shape)], dim=1)
        return cls(scored=scored, items=items, counted=counted, hidden=hidden, target=target, inside=inside)

    def chunk(
        self, part: slice, start: int, vocab: Tensor, soft: BatchScores, device: torch.device
    ) -> _SampledKD:
        """The rows ``part`` for the chunk whose first row is ``start``, columns into ``vocab``."""
        target = self.target
        rest = None if target.rest is None else target.rest[part].to(device)
        return _SampledKD(
            rows=(self.scored[part] - start).to(device),
            columns=torch.searchsorted(vocab, self.items[part]).to(device),
            counted=self.counted[part].to(device),
            hidden=self.hidden[part].to(device),
            target=SoftTarget(target.p[part].to(device), target.scale, target.offset[part].to(device), rest),
            alpha=soft.alpha,
            temperature=soft.temperature,
            inside=None if self.inside is None else self.inside[part].to(device),
        )


def _sampled_chunk(
    h: Tensor, shared_emb: Tensor, table: Tensor, positive: Tensor, offset: Tensor, kd: _SampledKD | None
) -> tuple[Tensor, Tensor]:
    """The summed loss of ``C`` rows of :func:`sampled_loss`, and their summed KD (detached)."""
    logits = h @ shared_emb.T  # (C, M)
    ce = torch.logsumexp(logits + offset, dim=1) - logits.gather(1, positive[:, None]).squeeze(1)  # (C,)
    if kd is None:
        return ce.sum(), ce.new_zeros(())
    temperature = kd.temperature
    # s_j / T on K, (m, k); the rows looked up as an embedding, whose backward sums them faster than
    # indexing's (1.2x the KD loss's forward + backward on Beauty-sized batches).
    own = torch.einsum("md,mkd->mk", h[kd.rows], F.embedding(kd.columns, table)) / temperature
    # Ẑ_T's terms: U and the draws outside U ∪ K from the shared columns, K \ U from the row's own.
    terms = (logits[kd.rows] / temperature + offset).masked_fill(kd.hidden, float("-inf"))  # (m, M)
    log_z = torch.logsumexp(torch.cat([terms, own.masked_fill(kd.counted, float("-inf"))], dim=1), dim=1)
    log_q_rest = None
    if kd.inside is not None:  # R̂_T: the shared terms less K's, floored as log_mass_outside floors it
        floor = (log_z.detach() + LOG_TINY)[:, None]  # (m, 1)
        outside = torch.cat([terms.masked_fill(kd.inside, float("-inf")), floor], dim=1)
        log_q_rest = torch.logsumexp(outside, dim=1) - log_z
    kd_rows = kd.target.rows(own - log_z[:, None], log_q_rest)  # (m,)
    weights = torch.ones_like(ce).index_fill(0, kd.rows, 1.0 - kd.alpha)
    return (weights * ce).sum() + kd.alpha * kd_rows.sum(), kd_rows.sum().detach()
