"""Scoring the catalogue a block of items at a time: when, and that a block's top-k and normaliser are
the whole catalogue's."""

from __future__ import annotations

import pytest
import torch

from distill.scoring import BLOCK_VALUES, SCORE_BUDGET, item_block, logsumexp_in_blocks, top_k_in_blocks


def blocks_of(scores: torch.Tensor):
    def score(start: int, stop: int) -> torch.Tensor:
        assert 1 <= start < stop <= scores.shape[1]
        return scores[:, start:stop].clone()

    return score


def test_the_whole_catalogue_while_a_batch_fits_the_budget():
    assert item_block(256, 3706) is None  # ML-1M: the full path, as always
    assert item_block(256, SCORE_BUDGET // 256 - 1) is None
    assert item_block(256, SCORE_BUDGET // 256) == BLOCK_VALUES // 256  # one value over: blocks
    assert item_block(256, 10**6) == BLOCK_VALUES // 256  # 256 x 8,192 scores at a time
    assert item_block(SCORE_BUDGET * 2, 10) == 1
    assert item_block(256, 10**6, option=0) is None  # the option forces either way
    assert item_block(256, 10, option=3) == 3


@pytest.mark.parametrize("size", [1, 3, 7, 40, 41, 500])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_running_top_k_equals_the_top_k_of_the_whole_catalogue(size, k):
    gen = torch.Generator().manual_seed(size * 100 + k)
    scores = torch.randn(9, 41, generator=gen)  # random floats: no ties to order
    values, ids, normaliser = top_k_in_blocks(blocks_of(scores), 40, k, size)
    top = scores[:, 1:].topk(k, dim=-1)
    assert torch.equal(ids, top.indices + 1) and torch.equal(values, top.values)
    torch.testing.assert_close(normaliser, scores[:, 1:].logsumexp(dim=-1))


@pytest.mark.parametrize("size", [1, 4, 40])
def test_logsumexp_in_blocks_is_the_softmax_normaliser(size):
    scores = torch.randn(5, 41, dtype=torch.float64) * 10
    got = logsumexp_in_blocks(blocks_of(scores), 40, size)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, scores[:, 1:].float().logsumexp(dim=-1))
