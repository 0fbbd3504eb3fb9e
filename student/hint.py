"""Representation distillation: the student learns to reproduce a wider SASRec's hidden states.

The "distillation experts" (DE) half of DE-RRD (Kang et al., 2020, "DE-RRD: A Knowledge Distillation
Framework for Recommender System"): at every non-pad position the student's state ``(d_s)`` is mapped
into the teacher's space ``(d_t)`` by ``E`` small feed-forward experts, a selection network reading the
teacher's state weighs them, and the loss is the squared distance of the mix to the teacher's state.
DE-RRD selects one expert per position by a Gumbel-softmax with an annealed temperature; here the
selection is its relaxation, a plain softmax, so nothing is annealed and every expert gets gradients.
The experts exist only during training: the student checkpoint is an ordinary SASRec.

The teacher is a ``distill student-train`` run (a SASRec, any width), read with the student's own
input windows: positions are right-aligned in SASRec, so a teacher whose ``max_len`` is at least the
student's sees each column as the student does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DistillationExperts(nn.Module):
    """``E`` experts ``d_s → (d_s + d_t) / 2 → d_t`` and a selection ``d_t → E``."""

    def __init__(self, student_dim: int, teacher_dim: int, experts: int) -> None:
        super().__init__()
        inner = (student_dim + teacher_dim) // 2
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(student_dim, inner), nn.ReLU(), nn.Linear(inner, teacher_dim))
            for _ in range(experts)
        )
        self.select = nn.Linear(teacher_dim, experts)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Mean over positions of ``|teacher − Σ_e s_e · expert_e(student)|² / d_t``.

        Args:
            student: the student's states at the scored positions, ``(N, d_s)``.
            teacher: the teacher's states at the same positions, ``(N, d_t)`` (no gradient flows to it).

        Returns:
            A scalar; 0 for ``N = 0`` (with zero gradients, so ranks of a job still average alike).
        """
        if len(student) == 0:  # still a function of every parameter: each gets a (zero) gradient to share
            return sum(p.sum() for p in self.parameters()) * 0.0 + student.sum() * 0.0
        teacher = teacher.detach()
        mapped = torch.stack([expert(student) for expert in self.experts], dim=1)  # (N, E, d_t)
        weights = torch.softmax(self.select(teacher), dim=-1)  # (N, E)
        mixed = (weights.unsqueeze(-1) * mapped).sum(1)  # (N, d_t)
        return (mixed - teacher).pow(2).sum(-1).mean() / teacher.shape[-1]
