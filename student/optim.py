"""The student's optimizer: Adam, with the item table updated by rows when its gradient is sparse.

With ``--loss sampled`` a batch's loss reads a few thousand rows of the item table (its inputs, its
targets, the drawn negatives, the teacher's items), however large the catalogue. Dense Adam still costs
the whole table every step: the backward pass fills a ``(num_items + 1, d)`` gradient and the step reads
and writes the table and both moment tables. At 10^6 items and d = 64 that was 0.9 s of a 1.1 s step
(0.2 s at 10^4 items). With row updates the table's gradient is sparse (the lookups are
``sparse=True`` embeddings) and :class:`RowAdam` updates only the rows it holds.

Plain lazy Adam (``torch.optim.SparseAdam``, TensorFlow's LazyAdam) leaves a row the batch does not
read where it is, where dense Adam would move it on its old momentum and decay its moments: on Beauty
that learned less per epoch than dense Adam. :class:`RowAdam` instead replays those missed steps when
the row is next read (and for every row at the end of an epoch, :meth:`RowAdam.catch_up`). A row no
batch reads takes no part in the loss, so nothing observes it between its reads, and Adam's step on a
zero gradient has a closed form. Run just before each lookup of the table (a forward pre-hook), the
replay gives every forward the rows dense Adam would have given it, to rounding (see
:meth:`RowAdam._replay`), at a cost that grows with the rows read, not with the catalogue.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


class RowAdam(torch.optim.Optimizer):
    """Adam on the rows of a sparse gradient, replaying on each row the steps it missed.

    Per step ``t`` (one per call, shared by all rows, as in ``SparseAdam``) and row ``r`` of the
    gradient: first the steps since the row was last updated are replayed (:meth:`_replay`), then
    ``g = grad_r + weight_decay·p_r``, ``m_r = β1·m_r + (1-β1)·g``, ``v_r = β2·v_r + (1-β2)·g²``,
    ``p_r -= lr/(1-β1^t) · m_r / (sqrt(v_r/(1-β2^t)) + eps)``: what ``torch.optim.Adam`` does to every
    row. Call :meth:`catch_up` before anything reads the whole table (validation, a checkpoint).

    With ``weight_decay`` the replay is not exact: dense Adam's L2 term gives a skipped row the gradient
    ``weight_decay·p_r`` at every step, which the replay leaves out (the default decay is 0).
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def _state(self, p: Tensor) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float64)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        if "last" not in state:  # the step each row was last updated at (a checkpoint from before: now)
            state["last"] = torch.full((len(p),), int(state["step"]), dtype=torch.int64, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ValueError("RowAdam updates rows of sparse gradients; this one is dense")
                grad = p.grad.coalesce()
                rows, g = grad.indices()[0], grad.values()  # (R,), (R, d)
                state = self._state(p)
                state["step"] += 1
                t = int(state["step"])
                self._replay(p, state, group, rows, t - 1)
                if group["weight_decay"]:
                    g = g + group["weight_decay"] * p[rows]
                m = state["exp_avg"][rows].mul_(beta1).add_(g, alpha=1 - beta1)
                v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                state["last"][rows] = t
                denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
                p.index_add_(0, rows, m.div_(denom), alpha=-group["lr"] / (1 - beta1**t))

    @torch.no_grad()
    def refresh(self, p: Tensor, rows: Tensor) -> None:
        """Replay the missed steps of ``rows`` of ``p`` before something reads them: dense Adam would
        have moved them at every step since they were last updated."""
        state = self.state[p]
        if state:
            group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
            self._replay(p, self._state(p), group, rows.reshape(-1).unique(), int(state["step"]))

    @torch.no_grad()
    def catch_up(self) -> None:
        """Replay every row's missed steps up to the last step taken: the table dense Adam would hold."""
        for group in self.param_groups:
            for p in group["params"]:
                if self.state[p]:
                    state = self._state(p)
                    last = state["last"]  # 0: never updated, zero moments, nothing to replay
                    stale = ((last > 0) & (last < int(state["step"]))).nonzero()[:, 0]
                    self._replay(p, state, group, stale, int(state["step"]))

    @staticmethod
    def _replay(p: Tensor, state: dict[str, Tensor], group: dict, rows: Tensor, until: int) -> None:
        """Bring ``rows`` from the step they were last updated at, ``s``, to step ``until``.

        On a zero gradient dense Adam's step ``τ = s + j`` decays the moments (``m = β1^j m_s``,
        ``v = β2^j v_s``) and moves the row by ``lr · m/sqrt(v) · sqrt(1-β2^τ)/(1-β1^τ)`` (ignoring
        ``eps``): ``lr · ρ^j · m_s/sqrt(v_s)`` times the bias corrections, ``ρ = β1/sqrt(β2)``. The k
        missed steps sum to ``lr · c(s, k) · m_s/sqrt(v_s)`` with the scalar
        ``c(s, k) = Σ_{j=1..k} ρ^j sqrt(1-β2^{s+j})/(1-β1^{s+j})``, one per distinct ``s``, its terms cut
        where ``ρ^j`` falls below 1e-16 (``ρ < 1`` for any usual betas). With ``eps`` step j divides
        by ``sqrt(v_s) + e_j``, ``e_j = eps·sqrt(1-β2^τ)/β2^{j/2}``; the replay divides the sum by
        ``sqrt(v_s) + ē``, ``ē`` the mean of the ``e_j`` weighted by the steps' terms: exact for one
        missed step, and for more the only departure from dense Adam, which matters only where
        ``sqrt(v_s)`` is as small as the ``e_j`` (a row whose gradients were ~1e-7 or less).
        """
        since = state["last"][rows]
        missed = until - since
        stale = missed > 0
        if not bool(stale.any()):
            return
        rows, since, missed = rows[stale], since[stale], missed[stale]
        beta1, beta2 = group["betas"]
        firsts, where = torch.unique(since, return_inverse=True)  # missed is until - since: one per s
        counts = until - firsts
        ratio = beta1 / beta2**0.5
        horizon = int(counts.max())
        if ratio < 1:
            horizon = min(horizon, math.ceil(math.log(1e-16) / math.log(ratio)))
        sums = torch.empty(len(firsts), dtype=torch.float64, device=p.device)
        damping = torch.empty_like(sums)
        j = torch.arange(1, horizon + 1, dtype=torch.float64, device=p.device)
        block = max(1, 2**22 // horizon)
        for lo in range(0, len(firsts), block):  # (block, horizon) at a time: bounded at 10^6 rows
            tau = firsts[lo : lo + block, None].double() + j
            corrected = (1 - beta2**tau).sqrt()
            terms = ratio**j * corrected / (1 - beta1**tau)
            terms = terms.masked_fill(j > counts[lo : lo + block, None], 0.0)
            sums[lo : lo + block] = terms.sum(1)
            eps = group["eps"] * corrected / beta2 ** (j / 2)  # step j's eps beside sqrt(v_s)
            damping[lo : lo + block] = (terms * eps).sum(1) / sums[lo : lo + block]
        m, v = state["exp_avg"][rows], state["exp_avg_sq"][rows]
        move = (sums[where] * -group["lr"]).to(p.dtype)[:, None]
        p.index_add_(0, rows, m / (v.sqrt() + damping[where].to(p.dtype)[:, None]) * move)
        k = missed.double()[:, None]
        state["exp_avg"].index_copy_(0, rows, m * (beta1**k).to(m.dtype))
        state["exp_avg_sq"].index_copy_(0, rows, v * (beta2**k).to(v.dtype))
        state["last"][rows] = until


class Optimizers:
    """Several optimizers stepped as one (``zero_grad``, ``step``, ``state_dict`` for checkpoints)."""

    def __init__(self, **optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()

    def catch_up(self) -> None:
        """Bring row-updated tables up to date (:meth:`RowAdam.catch_up`); before validation."""
        for optimizer in self.optimizers.values():
            if isinstance(optimizer, RowAdam):
                optimizer.catch_up()

    def state_dict(self) -> dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state for {sorted(state)}, expected {sorted(self.optimizers)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])


def student_optimizer(
    params: list[nn.Parameter],
    item_table: nn.Embedding,
    rows: bool,
    lr: float,
    weight_decay: float,
) -> torch.optim.Optimizer | Optimizers:
    """Adam (betas 0.9, 0.98) over ``params``; with ``rows``, the table of ``item_table`` (one of
    ``params``) is looked up with sparse gradients and updated by :class:`RowAdam` instead, and a
    forward pre-hook on ``item_table`` replays the missed steps of the rows each lookup is about to read
    (:meth:`RowAdam.refresh`), so every forward sees the rows dense Adam would have given it."""
    betas = (0.9, 0.98)
    if not rows:
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    item_table.sparse = True
    table = item_table.weight
    rest = [p for p in params if p is not table]
    by_rows = RowAdam([table], lr=lr, betas=betas, weight_decay=weight_decay)
    item_table.register_forward_pre_hook(lambda module, args: by_rows.refresh(module.weight, args[0]))
    return Optimizers(
        dense=torch.optim.Adam(rest, lr=lr, betas=betas, weight_decay=weight_decay), rows=by_rows
    )
