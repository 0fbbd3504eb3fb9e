"""The MoE-LoRA teacher (iLoRA-style): a frozen LLM reading SASRec states, gated LoRA experts.

- Each ``[HistoryEmb]`` slot of the prompt gets ``slot_projector(SASRec state at that history item)``.
- A gating MLP on SASRec states gives softmax weights over the experts of every MoE-LoRA layer.
- The hidden state at item i's slot is the query that scores item i + 1 against
  ``item_projector(item embedding)`` over the whole catalogue.

Where this differs from iLoRA, and why:

- **Dense.** iLoRA reads one hidden state, after the prompt, per example. Here every history slot is
  scored, so one pass over a window trains on (and exports) all of its positions, as SASRec does.
- **Per-token gates.** iLoRA gates a whole prompt by the user's last SASRec state; with every slot
  scored that would let early positions see the last item through their adapters. The gate at a token
  reads the SASRec state of the latest history item at or before it; tokens before the first slot (the
  instruction, the first item's title) read a learned default state (``gate.empty``). At the last slot
  this is iLoRA's per-user gate.
- **Two projectors.** Slots hold *contextual* SASRec states, candidates are *raw* item embeddings: two
  different inputs, so each gets its own MLP (iLoRA uses one).
- **Fused with SASRec** (``fuse_sasrec``): the score is the teacher's dot product plus SASRec's own score
  for the same position, written as one dot product of concatenated vectors,
  ``[h ; s] · [item_projector(e) ; e]``. The item projector's last layer starts at zero, so an untrained
  teacher ranks exactly as its SASRec and training learns what the LLM adds.
- **Item text** (``item_text``): where items have titles, each title read once through the whole
  backbone (:mod:`teacher.text`) goes through a ``text_projector`` of its own and is added to the item
  vector; its last layer starts at zero too, so fusion still starts at SASRec's ranking.
- **Scaling.** ``lora_alpha / r`` with ``r`` the total rank by default; iLoRA's code uses the expert rank
  (E times larger): ``per_expert_scaling``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from student.sasrec import SASRec
from teacher.backbone import hidden_size
from teacher.moe_lora_layer import inject_moe_lora, moe_gates
from teacher.prompts import Prompts


class Gate(nn.Module):
    """Softmax weights over E experts from a SASRec state; ``empty`` stands for "no item yet"."""

    def __init__(self, d: int, experts: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, experts))
        self.empty = nn.Parameter(torch.zeros(d))

    def forward(self, states: Tensor, real: Tensor, slots: Tensor) -> Tensor:
        """Per-token gates for prompts whose slots hold ``states``.

        Args:
            states: ``(B, w, d)`` SASRec states of the window, left-padded.
            real: ``(B, w)`` True at real items.
            slots: ``(B, T)`` True at ``[HistoryEmb]`` tokens, one per real item, in order.

        Returns:
            ``(B, T, E)``: at each token, the gate of the latest item at or before it (``empty`` before
            the first).
        """
        B, w, _ = states.shape
        logits = self.mlp(torch.cat([states, self.empty.expand(B, 1, -1)], dim=1))  # (B, w + 1, E)
        seen = slots.cumsum(1)  # (B, T) slots at or before each token
        first = w - real.sum(1, keepdim=True)  # (B, 1) column of each row's first real item
        column = torch.where(seen > 0, first + seen - 1, w)  # column w is the empty state
        index = column.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
        return torch.softmax(logits.gather(1, index), dim=-1)


class MoELoRATeacher(nn.Module):
    """A decoder backbone with MoE-LoRA adapters, scoring items at every SASRec-encoded history slot.

    Args:
        backbone: frozen decoder (``AutoModel``), modified in place by :func:`inject_moe_lora`.
        sasrec: the ID encoder; frozen unless ``train_sasrec``.
        placeholder_id: token id of ``[HistoryEmb]``.
        experts, r, lora_alpha, lora_dropout, target_modules, per_expert_scaling: the MoE-LoRA
            adapters (``r`` total).
        train_sasrec: fine-tune the ID encoder too.
        fuse_sasrec: add SASRec's own score (see the module docstring).
        item_text: ``(num_items + 1, H_text)`` title vectors (:mod:`teacher.text`), or None.
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
        per_expert_scaling: bool = False,
        train_sasrec: bool = False,
        fuse_sasrec: bool = True,
        item_text: Tensor | None = None,
    ):
        super().__init__()
        inject_moe_lora(backbone, target_modules, experts, r, lora_alpha, lora_dropout, per_expert_scaling)
        self.backbone = backbone
        self.sasrec = sasrec.requires_grad_(train_sasrec)
        self.train_sasrec, self.fuse_sasrec = train_sasrec, fuse_sasrec
        self.placeholder_id = placeholder_id
        d, width = sasrec.config.hidden, hidden_size(backbone)
        self.slot_projector = nn.Sequential(nn.Linear(d, width), nn.GELU(), nn.Linear(width, width))
        self.item_projector = nn.Sequential(nn.Linear(d, width), nn.GELU(), nn.Linear(width, width))
        if fuse_sasrec:  # the teacher's part of the score starts at zero: it ranks as SASRec does
            nn.init.zeros_(self.item_projector[-1].weight)
            nn.init.zeros_(self.item_projector[-1].bias)
        self.gate = Gate(d, experts)
        self.text_projector = None
        if item_text is not None:
            self.register_buffer("item_text", item_text.float(), persistent=False)  # the run keeps it
            self.text_projector = nn.Sequential(
                nn.Linear(item_text.shape[1], width), nn.GELU(), nn.Linear(width, width)
            )
            if fuse_sasrec:
                nn.init.zeros_(self.text_projector[-1].weight)
                nn.init.zeros_(self.text_projector[-1].bias)

    def train(self, mode: bool = True) -> MoELoRATeacher:
        super().train(mode)
        if not self.train_sasrec:
            self.sasrec.eval()  # a frozen encoder runs without dropout
        return self

    def forward(self, prompts: Prompts, history: Tensor, width: int) -> tuple[Tensor, Tensor]:
        """Queries at the last ``width`` history columns, and the item vectors they score.

        Args:
            prompts: token ids with one ``[HistoryEmb]`` slot per non-pad item of ``history[:, -width:]``.
            history: ``(B, C)`` item ids, left-padded with 0: what SASRec reads (``C >= width``).
            width: history columns the prompt holds and the teacher scores.

        Returns:
            ``(B, width, D)`` float32 queries (zero at padding) and ``(num_items + 1, D)`` float32 item
            vectors: scores are ``queries @ items.T``; row 0 of ``items`` is padding.
        """
        return self.queries(prompts, history, width), self.item_vectors()

    def queries(self, prompts: Prompts, history: Tensor, width: int) -> Tensor:
        """The queries of :meth:`forward` alone, ``(B, width, D)`` float32 (no item vectors: a large
        catalogue is scored against :meth:`item_vectors` a block at a time)."""
        states = self.sasrec(history)[:, -width:]  # (B, w, d)
        real = history[:, -width:] != 0  # (B, w)
        slots = prompts.input_ids == self.placeholder_id  # (B, T)
        if int(slots.sum()) != int(real.sum()):
            raise ValueError(f"{int(slots.sum())} [HistoryEmb] slots for {int(real.sum())} history items")
        embeds = self.backbone.get_input_embeddings()(prompts.input_ids)  # (B, T, H)
        values = self.slot_projector(states[real]).to(embeds.dtype)  # (S, H), row-major like the slots
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), values)
        with moe_gates(self.backbone, self.gate(states, real, slots)):
            out = self.backbone(
                inputs_embeds=embeds, attention_mask=prompts.attention_mask, position_ids=prompts.position_ids
            )
        hidden = out.last_hidden_state.float()  # (B, T, H)
        queries = hidden.new_zeros(*real.shape, hidden.shape[-1])  # (B, w, H)
        queries[real] = hidden[slots]
        if self.fuse_sasrec:
            queries = torch.cat([queries, states.float()], dim=-1)  # (B, w, H + d)
        return queries

    def item_vectors(self, start: int = 0, stop: int | None = None) -> Tensor:
        """The item vectors of :meth:`forward` for item ids ``start..stop-1`` (default all),
        ``(stop - start, D)`` float32: the item side depends on the item alone, so a block of the
        catalogue is the same projectors on a slice of its tables."""
        table = self.sasrec.item_embeddings()[start:stop]  # (n, d)
        items = self.item_projector(table).float()  # (n, H)
        if self.text_projector is not None:
            items = items + self.text_projector(self.item_text[start:stop]).float()
        if self.fuse_sasrec:
            items = torch.cat([items, table.float()], dim=-1)  # (n, H + d)
        return items
