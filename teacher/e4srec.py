"""The E4SRec teacher: frozen SASRec item embeddings as LLM inputs, peft LoRA, a head over all items.

Input = instruction tokens + ``Linear(item embedding)`` of each history item; the hidden state at item
i's position goes through ``Linear(hidden, num_items + 1)`` and scores item i + 1.

Where this differs from E4SRec, and why:

- **Dense.** E4SRec reads one hidden state after a response prompt. Here every item position is scored,
  so one pass over a window trains on (and exports) all its positions; no response text follows.
- **Item text** (``item_text``): where items have titles, each title read once through the whole
  backbone (:mod:`teacher.text`) adds ``text_projector(text)`` to the item's input and
  ``text_head(text)`` to its row of the head (zero at the start when fused).
- **Fused with SASRec** (``fuse_sasrec``): the score adds SASRec's own score for the same position, as
  one dot product ``[h ; 1 ; s] · [W_n ; b_n ; e_n]`` with the head's weight ``W`` and bias ``b``. The
  head starts at zero, so an untrained teacher ranks exactly as its SASRec.
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from transformers import PreTrainedModel

from student.sasrec import Dropout, SASRec
from teacher.backbone import hidden_size
from teacher.prompts import Prompts


def peft_lora(backbone: PreTrainedModel, lora: LoraConfig) -> nn.Module:
    """``get_peft_model`` without the FutureWarning it triggers on transformers 5 (peft reads the
    deprecated ``is_gradient_checkpointing`` property; nothing here checkpoints activations), its
    adapters' ``nn.Dropout`` replaced by :class:`student.sasrec.Dropout`, whose masks are much cheaper
    to draw on CPU (the same drop probability, to 1/65536)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        model = get_peft_model(backbone, lora)
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for adapter, layer in dropouts.items():
                if isinstance(layer, nn.Dropout):
                    dropouts[adapter] = Dropout(layer.p)
    return model


class E4SRecTeacher(nn.Module):
    """A decoder backbone with peft LoRA, reading projected ID embeddings.

    Args:
        backbone: frozen decoder (``AutoModel``); wrapped by ``get_peft_model``.
        sasrec: the SASRec run; frozen. Its item table feeds the inputs, its states the fused score.
        placeholder_id: token id of the slots the projected items go into.
        r, lora_alpha, lora_dropout, target_modules: peft ``LoraConfig`` fields.
        fuse_sasrec: add SASRec's own score (see the module docstring).
        item_text: ``(num_items + 1, H_text)`` title vectors (:mod:`teacher.text`), or None.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        sasrec: SASRec,
        *,
        placeholder_id: int,
        r: int,
        lora_alpha: float,
        lora_dropout: float,
        target_modules: tuple[str, ...],
        fuse_sasrec: bool = True,
        item_text: Tensor | None = None,
    ):
        super().__init__()
        lora = LoraConfig(
            r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules)
        )
        self.backbone = peft_lora(backbone, lora)
        self.sasrec = sasrec.requires_grad_(False).eval()
        self.placeholder_id = placeholder_id
        self.fuse_sasrec = fuse_sasrec
        table = sasrec.item_embeddings()
        width = hidden_size(backbone)
        self.projector = nn.Linear(table.shape[1], width)
        self.head = nn.Linear(width, table.shape[0])
        if fuse_sasrec:  # the teacher's part of the score starts at zero: it ranks as SASRec does
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.text_projector = self.text_head = None
        if item_text is not None:
            self.register_buffer("item_text", item_text.float(), persistent=False)  # the run keeps it
            self.text_projector = nn.Linear(item_text.shape[1], width)
            self.text_head = nn.Linear(item_text.shape[1], width)
            if fuse_sasrec:
                nn.init.zeros_(self.text_head.weight)
                nn.init.zeros_(self.text_head.bias)

    def train(self, mode: bool = True) -> E4SRecTeacher:
        super().train(mode)
        self.sasrec.eval()
        return self

    def forward(self, prompts: Prompts, history: Tensor, width: int) -> tuple[Tensor, Tensor]:
        """Queries at the last ``width`` history columns, and the item vectors they score.

        Args:
            prompts: token ids with one slot per non-pad item of ``history[:, -width:]``.
            history: ``(B, C)`` item ids, left-padded with 0 (``C >= width``; SASRec reads all of it).
            width: history columns the prompt holds and the teacher scores.

        Returns:
            ``(B, width, D)`` float32 queries (zero at padding) and ``(num_items + 1, D)`` float32 item
            vectors: scores are ``queries @ items.T``.
        """
        return self.queries(prompts, history, width), self.item_vectors()

    def queries(self, prompts: Prompts, history: Tensor, width: int) -> Tensor:
        """The queries of :meth:`forward` alone, ``(B, width, D)`` float32 (no item vectors: a large
        catalogue is scored against :meth:`item_vectors` a block at a time)."""
        window = history[:, -width:]
        real = window != 0  # (B, w)
        slots = prompts.input_ids == self.placeholder_id  # (B, T)
        if int(slots.sum()) != int(real.sum()):
            raise ValueError(f"{int(slots.sum())} slots for {int(real.sum())} history items")
        embeds = self.backbone.get_input_embeddings()(prompts.input_ids)  # (B, T, H)
        items_in = self.sasrec.item_embeddings().detach()[window[real]]  # (S, d), frozen
        slot_values = self.projector(items_in)  # (S, H)
        if self.text_projector is not None:
            slot_values = slot_values + self.text_projector(self.item_text[window[real]])
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), slot_values.to(embeds.dtype))
        out = self.backbone(
            inputs_embeds=embeds, attention_mask=prompts.attention_mask, position_ids=prompts.position_ids
        )
        hidden = out.last_hidden_state.float()  # (B, T, H)
        queries = hidden.new_zeros(*real.shape, hidden.shape[-1] + 1)  # (B, w, H + 1): [h ; 1]
        queries[real] = torch.cat([hidden[slots], hidden.new_ones(len(hidden[slots]), 1)], dim=-1)
        if self.fuse_sasrec:
            states = self.sasrec(history)[:, -width:].float()  # (B, w, d)
            queries = torch.cat([queries, states], dim=-1)
        return queries

    def item_vectors(self, start: int = 0, stop: int | None = None) -> Tensor:
        """The item vectors of :meth:`forward` for item ids ``start..stop-1`` (default all),
        ``(stop - start, D)`` float32: rows of the head (and of the SASRec table when fused), so a
        block of the catalogue is a slice of them."""
        head = self.head.weight[start:stop]  # (n, H)
        if self.text_head is not None:
            head = head + self.text_head(self.item_text[start:stop])
        items = torch.cat([head, self.head.bias[start:stop, None]], dim=-1)  # (n, H + 1)
        if self.fuse_sasrec:
            items = torch.cat([items, self.sasrec.item_embeddings()[start:stop].float()], dim=-1)
        return items
