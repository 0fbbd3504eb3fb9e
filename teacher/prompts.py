"""Prompts as token ids: an instruction, then one placeholder slot per history item.

Both teachers read a history as ``instruction (title [HistoryEmb] ,)*``; the MoE-LoRA teacher may put
each item's title before its slot, E4SRec uses bare slots. The placeholder token embeddings are
replaced by the teacher at run time, and the hidden state at item i's slot predicts item i + 1: the
teachers are dense, so the instruction says so up front and no response text follows the history
(nothing after the last slot could reach any scored token through a causal backbone). Every text
piece is tokenized once, when the builder is made; a batch is then assembled from cached id lists
(the backbone, not this, is the cost).

Prompts are left-padded; ``position_ids`` count real tokens only, so a padded prompt sees the same
positions as an unpadded one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

HISTORY_TOKEN = "[HistoryEmb]"

MOE_LORA_PROMPT = (
    "This user has interacted with the following items, in order. After each item, predict the next "
    "item the user will interact with:"
)
E4SREC_PROMPT = (
    "Below is the history of items a user interacted with, in order. After each item, predict the next "
    "one.\n### History:"
)


@dataclass(frozen=True)
class Prompts:
    """A batch of prompts."""

    input_ids: torch.Tensor  # (B, T) left-padded
    attention_mask: torch.Tensor  # (B, T) 1 on real tokens
    position_ids: torch.Tensor  # (B, T) 0.. over real tokens

    def to(self, device: torch.device) -> Prompts:
        return Prompts(
            self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device)
        )


class PromptBuilder:
    """Turns left-padded item histories into prompts with one placeholder per history item.

    Args:
        tokenizer: the backbone's tokenizer, already holding ``HISTORY_TOKEN``.
        placeholder_id: the id of ``HISTORY_TOKEN``.
        instruction: the text before the history.
        titles: item titles indexed by item id (index 0 unused), or None for bare slots.
        title_tokens: at most this many tokens of each title.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        placeholder_id: int,
        instruction: str,
        titles: Sequence[str | None] | None = None,
        title_tokens: int = 24,
    ):
        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.prefix = bos + ids(instruction)
        self.pad_id = tokenizer.pad_token_id
        self.placeholder_id = placeholder_id
        separator = ids(",")
        if titles is None:
            self._item_ids = None
            self._slot = [placeholder_id] + separator
        else:
            texts = [" " + (t or "") for t in titles]
            encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
            self._item_ids = [e[:title_tokens] + [placeholder_id] + separator for e in encoded]

    def __call__(self, history: torch.Tensor) -> Prompts:
        """Prompts for ``history``, ``(B, L)`` item ids left-padded with 0."""
        rows = []
        for items in history.tolist():
            ids = list(self.prefix)
            for item in items:
                if item:
                    ids += self._slot if self._item_ids is None else self._item_ids[item]
            rows.append(ids)
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, ids in enumerate(rows):
            input_ids[b, width - len(ids) :] = torch.tensor(ids)
            attention_mask[b, width - len(ids) :] = 1
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        return Prompts(input_ids, attention_mask, position_ids)
