"""The MoE-LoRA teacher (iLoRA-style): a frozen LLM reading SASRec states, gated LoRA experts.

- Each ``[HistoryEmb]`` slot of the prompt gets ``projector(SASRec state at that history item)``.
- A gating MLP on the SASRec user embedding (the last state) gives softmax weights over the experts
  of every MoE-LoRA layer, per example.
- Scores = last hidden state · ``projector(item embeddings)`` over the whole catalogue: the same
  projector maps SASRec's space into the backbone's for both the history and the candidates.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from student.sasrec import SASRec
from teacher.backbone import hidden_size
from teacher.moe_lora_layer import inject_moe_lora, moe_gates
from teacher.prompts import Prompts


class MoELoRATeacher(nn.Module):
    """A decoder backbone with MoE-LoRA adapters, scoring items from a SASRec-encoded history.

    Args:
        backbone: frozen decoder (``AutoModel``), modified in place by :func:`inject_moe_lora`.
        sasrec: the ID encoder; frozen unless ``train_sasrec``.
        placeholder_id: token id of ``[HistoryEmb]``.
        experts, r, lora_alpha, lora_dropout, target_modules: the MoE-LoRA adapters (``r`` total).
        train_sasrec: fine-tune the ID encoder too.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        sasrec: SASRec,
        *,
        placeholder_id: int,
        experts: int,
        r: int,
        lora_alpha: float,
        lora_dropout: float,
        target_modules: tuple[str, ...],
        train_sasrec: bool = False,
    ):
        super().__init__()
        inject_moe_lora(backbone, target_modules, experts, r, lora_alpha, lora_dropout)
        self.backbone = backbone
        self.sasrec = sasrec.requires_grad_(train_sasrec)
        self.train_sasrec = train_sasrec
        self.placeholder_id = placeholder_id
        d, width = sasrec.config.hidden, hidden_size(backbone)
        self.projector = nn.Sequential(nn.Linear(d, width), nn.GELU(), nn.Linear(width, width))
        self.gate = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, experts))

    def train(self, mode: bool = True) -> MoELoRATeacher:
        super().train(mode)
        if not self.train_sasrec:
            self.sasrec.eval()  # a frozen encoder runs without dropout
        return self

    def forward(self, prompts: Prompts, history: Tensor) -> Tensor:
        """Score every item for each prompt.

        Args:
            prompts: token ids with one ``[HistoryEmb]`` slot per non-pad history item.
            history: ``(B, L)`` item ids, left-padded with 0.

        Returns:
            ``(B, num_items + 1)`` float32 scores; column 0 is padding.
        """
        states = self.sasrec(history)  # (B, L, d)
        gates = torch.softmax(self.gate(states[:, -1]), dim=-1)  # (B, E)
        hidden = self.encode(prompts, states[history != 0], gates)  # (B, H)
        items = self.projector(self.sasrec.item_embeddings())  # (N + 1, H)
        return hidden.float() @ items.float().T

    def encode(self, prompts: Prompts, slot_values: Tensor, gates: Tensor) -> Tensor:
        """Last hidden state of the backbone with slots filled by ``projector(slot_values)``.

        Args:
            slot_values: ``(S, d)``, one row per ``[HistoryEmb]`` slot in row-major order.
            gates: ``(B, E)`` expert weights.

        Returns:
            ``(B, H)``.
        """
        embeds = self.backbone.get_input_embeddings()(prompts.input_ids)  # (B, T, H)
        slots = prompts.input_ids == self.placeholder_id  # (B, T)
        if int(slots.sum()) != len(slot_values):
            raise ValueError(f"{int(slots.sum())} [HistoryEmb] slots for {len(slot_values)} history items")
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), self.projector(slot_values).to(embeds.dtype))
        with moe_gates(self.backbone, gates):
            out = self.backbone(
                inputs_embeds=embeds, attention_mask=prompts.attention_mask, position_ids=prompts.position_ids
            )
        return out.last_hidden_state[:, -1]  # (B, H): prompts are left-padded
