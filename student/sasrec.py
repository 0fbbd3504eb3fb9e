"""SASRec: a small causal transformer over item-id sequences (Kang & McAuley, 2018).

Choices that differ between public SASRec implementations, fixed here:

- Pre-LN blocks (LayerNorm before attention and before the feed-forward, a final LayerNorm), as in the
  original TensorFlow code and pmixer's PyTorch port. Unlike those (whose keys and values read the
  un-normalised state), queries, keys and values all read the normalised state: the standard pre-LN
  transformer. Attention has an output projection (pmixer's ``nn.MultiheadAttention`` has one too).
- The feed-forward is Linear(d→d) → ReLU → Linear(d→d): the paper's two 1x1 convolutions with ReLU.
- Dropout where the original has it: on the embeddings, the attention weights, and after each
  feed-forward layer.
- Item embeddings are not scaled by sqrt(d) (the original scales them). With normal(0, 0.02) init
  (RecBole's, shared by every weight matrix and embedding here) item and positional embeddings start on
  the same scale, and the output is tied to the same table, so an unscaled sum keeps the two roles
  balanced.
- Positions are right-aligned: the last column of a length-L input uses position ``max_len - 1`` and
  column j uses ``max_len - L + j``. Sequences are left-padded, so the most recent item always gets the
  same position, and adding left padding (or trimming the input width) leaves every real state
  unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from student.config import SASRecConfig


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, as ``F.dropout``, with a much cheaper random mask on CPU.

    On CPU, ``F.dropout`` draws one Bernoulli sample per element from a single-threaded generator and
    was 40% of a SASRec training step on ML-1M. Here each 64-bit random word gives four uniform 16-bit
    lanes, each compared with a threshold. The words come from numpy's SFC64 generator, seeded by one
    draw from torch's generator (so ``torch.manual_seed`` and a checkpoint's RNG state still decide every
    mask): it fills them 3x faster than torch's own ``random_``. The drop probability is rounded to a
    multiple of 1/65536 (0.2 becomes 0.199997). Other devices use ``F.dropout``.

    Args:
        x: Any float tensor.
        p: Drop probability in [0, 1).
        training: Identity when False.

    Returns:
        ``x`` with each element zeroed with probability ``p`` and the rest scaled by ``1 / (1 - p)``.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    n = x.numel()
    seed = int(torch.randint(2**62, (), dtype=torch.int64))  # torch's generator decides the mask
    words = torch.from_numpy(np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int64))
    lanes = words.view(torch.int16)[:n].view(x.shape)  # uniform over -32768..32767
    # A float mask holding 0 or 1 / (1 - p): forward and backward are then one multiply each.
    mask = (lanes >= round(p * 65536) - 32768).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * mask


class Dropout(nn.Module):
    """:func:`dropout` as a module, a drop-in for ``nn.Dropout``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention that ignores padding keys.

    As in the original SASRec, dropout acts on the attention weights only, not on the output.

    Args:
        hidden: Model width d.
        heads: Number of heads; divides ``hidden``.
        dropout: Dropout on attention weights (training only).
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, attn_mask: Tensor, last_only: bool = False) -> Tensor:
        """Attend over earlier non-pad positions.

        Args:
            x: Normalised states, ``(B, L, d)``.
            attn_mask: Additive float mask ``(B, 1, L, L)``: 0 where query i may attend to key j, -inf
                elsewhere.
            last_only: Compute the output of the last position only (its keys are still all of ``x``).

        Returns:
            Attention output after the output projection, ``(B, L, d)``, or ``(B, 1, d)``.
        """
        B, L, d = x.shape
        # (B, L, 3, H, d/H) -> three (B, H, L, d/H)
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if last_only:
            q, attn_mask = q[:, :, -1:], attn_mask[:, :, -1:]
        if self.training and self.dropout > 0:
            # SDPA has no fused CPU kernel with dropout and would fall back to this same arithmetic with
            # the slow Bernoulli mask; spelled out, the weights get the fast one.
            scores = (q * (1.0 / math.sqrt(d // self.heads))) @ k.transpose(
                -2, -1
            ) + attn_mask  # (B, H, L, L)
            y = dropout(torch.softmax(scores, dim=-1), self.dropout, True) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, d/H)
        y = y.transpose(1, 2).reshape(B, q.shape[2], d)
        return self.out(y)


class FeedForward(nn.Module):
    """Point-wise feed-forward d → d → d with ReLU, SASRec's pair of 1x1 convolutions.

    Args:
        hidden: Model width d.
        dropout: Dropout after the activation and on the output.
    """

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the feed-forward to every position, ``(B, L, d) -> (B, L, d)``."""
        return self.dropout(self.fc2(self.dropout(F.relu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + FFN(LN(x)).

    Args:
        hidden: Model width d.
        heads: Attention heads.
        dropout: Dropout probability used throughout the block.
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(hidden)
        self.attn = CausalSelfAttention(hidden, heads, dropout)
        self.ln_ffn = nn.LayerNorm(hidden)
        self.ffn = FeedForward(hidden, dropout)

    def forward(self, x: Tensor, attn_mask: Tensor, last_only: bool = False) -> Tensor:
        """Run the block, ``(B, L, d) -> (B, L, d)`` (``(B, 1, d)`` with ``last_only``); ``attn_mask`` and
        ``last_only`` as in :class:`CausalSelfAttention`."""
        y = self.attn(self.ln_attn(x), attn_mask, last_only)
        x = (x[:, -1:] if last_only else x) + y
        return x + self.ffn(self.ln_ffn(x))


class SASRec(nn.Module):
    """Self-attentive sequential recommender with a tied item embedding.

    Inputs are item-id sequences left-padded with 0 to a common width ``L <= max_len``. The state at
    column j summarises items up to and including column j and is scored against every item with
    :meth:`score` to predict the item that follows.

    Args:
        config: Architecture; see :class:`student.config.SASRecConfig`.
    """

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden
        self.item_emb = nn.Embedding(config.num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.emb_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(d, config.heads, config.dropout) for _ in range(config.blocks))
        self.ln_final = nn.LayerNorm(d)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # RecBole's SASRec init: normal(0, 0.02) weights, zero biases, identity LayerNorms.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                # normal_ overwrote the padding row; the tied output relies on it being zero.
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, seq: Tensor, last_only: bool = False) -> Tensor:
        """Encode left-padded item sequences.

        Args:
            seq: Item ids, ``(B, L)`` long, 0 = padding, ``L <= max_len``.
            last_only: Return only the last column's state, ``(B, 1, d)``; the last block then skips
                the other queries and the feed-forward of the other positions (inference, scoring).

        Returns:
            Per-position states after the final LayerNorm, ``(B, L, d)``; zero at padding positions.
        """
        L = seq.shape[1]
        if L > self.config.max_len:
            raise ValueError(f"sequence width {L} exceeds SASRecConfig.max_len={self.config.max_len}")
        keep = seq != 0  # (B, L)
        # Right-aligned positions: the last column always uses the last positional embedding.
        x = self.item_emb(seq) + self.pos_emb.weight[self.config.max_len - L :]  # (B, L, d)
        x = self.emb_dropout(x * keep.unsqueeze(-1))

        # Query i sees keys j <= i that are not padding. Padding queries would then see nothing, and a
        # fully masked softmax row is NaN, so every query may also see itself; padding outputs are
        # zeroed below and padding keys are never visible to real queries, so this changes nothing real.
        # The mask is additive float rather than boolean because CPU SDPA only takes its fused kernel
        # for float masks (4x faster without dropout), and it is built once for all blocks.
        idx = torch.arange(L, device=seq.device)
        causal = idx.unsqueeze(1) >= idx.unsqueeze(0)  # (L, L)
        diagonal = idx.unsqueeze(1) == idx.unsqueeze(0)  # (L, L)
        allowed = (causal & keep[:, None, None, :]) | diagonal  # (B, 1, L, L)
        # Under autocast (student-train --precision bfloat16) the mask takes the autocast dtype, so that
        # the attention scores, their softmax and dropout stay in it rather than being promoted to
        # float32 by the mask and cast back for the product with the values.
        device = seq.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        attn_mask = torch.zeros(allowed.shape, dtype=dtype, device=seq.device)
        attn_mask.masked_fill_(~allowed, float("-inf"))

        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, last_only=last_only and i == last)
        if last_only:
            keep = keep[:, -1:]
        return self.ln_final(x) * keep.unsqueeze(-1)  # (B, L, d) or (B, 1, d)

    def score(self, h: Tensor) -> Tensor:
        """Score states against every item with the tied embedding table.

        Args:
            h: States, ``(..., d)``.

        Returns:
            Dot-product scores, ``(..., num_items + 1)``. Column 0 is padding; callers mask it.
        """
        return h @ self.item_emb.weight.T

    def user_embedding(self, seq: Tensor) -> Tensor:
        """State at the last column of left-padded sequences.

        Args:
            seq: Item ids, ``(B, L)`` long, left-padded with 0.

        Returns:
            ``(B, d)``: the representation that predicts each user's next item.

        Columns that are padding in every row are dropped first: positions are right-aligned and padding
        keys are masked, so the states are the same, and a batch of short histories costs its own width
        (:meth:`distill.scoring.Scorer.evaluate` batches users of similar length together).
        """
        filled = (seq != 0).any(dim=0)  # (L,) columns holding an item in some row
        first = int(filled.int().argmax()) if bool(filled.any()) else seq.shape[1] - 1
        return self.forward(seq[:, first:], last_only=True)[:, 0]

    def item_embeddings(self) -> Tensor:
        """The tied item table, ``(num_items + 1, d)``; row 0 is padding."""
        return self.item_emb.weight

    def item_rows(self, items: Tensor) -> Tensor:
        """Rows ``items`` (item ids, never the padding 0) of the item table, looked up as the input is,
        through ``item_emb``: with a sparse gradient when the table learns by rows, and after the hook
        that brings those rows up to date (:func:`student.optim.student_optimizer`)."""
        return self.item_emb(items)
