"""The E4SRec teacher: frozen SASRec item embeddings as LLM inputs, peft LoRA, a head over all items.

Input = instruction tokens + ``Linear(item embedding)`` of each history item + response tokens;
the last hidden state goes through ``Linear(hidden, num_items + 1)``.
"""

from __future__ import annotations

import warnings

from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from transformers import PreTrainedModel

from teacher.backbone import hidden_size
from teacher.prompts import Prompts


def peft_lora(backbone: PreTrainedModel, lora: LoraConfig) -> nn.Module:
    """``get_peft_model`` without the FutureWarning it triggers on transformers 5: peft reads the
    deprecated ``is_gradient_checkpointing`` property (nothing here checkpoints activations)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(backbone, lora)


class E4SRecTeacher(nn.Module):
    """A decoder backbone with peft LoRA, reading projected ID embeddings.

    Args:
        backbone: frozen decoder (``AutoModel``); wrapped by ``get_peft_model``.
        item_embeddings: ``(num_items + 1, d)`` SASRec item table; copied and kept frozen.
        placeholder_id: token id of the slots the projected items go into.
        r, lora_alpha, lora_dropout, target_modules: peft ``LoraConfig`` fields.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        item_embeddings: Tensor,
        *,
        placeholder_id: int,
        r: int,
        lora_alpha: float,
        lora_dropout: float,
        target_modules: tuple[str, ...],
    ):
        super().__init__()
        lora = LoraConfig(
            r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules)
        )
        self.backbone = peft_lora(backbone, lora)
        self.register_buffer("item_table", item_embeddings.detach().clone())  # (N + 1, d), frozen
        self.placeholder_id = placeholder_id
        width = hidden_size(backbone)
        self.projector = nn.Linear(item_embeddings.shape[1], width)
        self.head = nn.Linear(width, item_embeddings.shape[0])

    def forward(self, prompts: Prompts, history: Tensor) -> Tensor:
        """Score every item for each prompt.

        Args:
            prompts: token ids with one slot per non-pad history item.
            history: ``(B, L)`` item ids, left-padded with 0.

        Returns:
            ``(B, num_items + 1)`` float32 scores; column 0 is padding.
        """
        embeds = self.backbone.get_input_embeddings()(prompts.input_ids)  # (B, T, H)
        slots = prompts.input_ids == self.placeholder_id  # (B, T)
        items = self.item_table[history[history != 0]]  # (S, d)
        if int(slots.sum()) != len(items):
            raise ValueError(f"{int(slots.sum())} slots for {len(items)} history items")
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), self.projector(items).to(embeds.dtype))
        out = self.backbone(
            inputs_embeds=embeds, attention_mask=prompts.attention_mask, position_ids=prompts.position_ids
        )
        return self.head(out.last_hidden_state[:, -1].float())  # (B, N + 1)
