"""Invariants of the SASRec student: shapes, causality, padding, tied output, config checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from student.config import SASRecConfig
from student.sasrec import SASRec, dropout

NUM_ITEMS = 20
HIDDEN = 8


def make_model(dropout: float = 0.0, heads: int = 2, max_len: int = 12) -> SASRec:
    torch.manual_seed(0)
    config = SASRecConfig(
        num_items=NUM_ITEMS, max_len=max_len, hidden=HIDDEN, blocks=2, heads=heads, dropout=dropout
    )
    return SASRec(config).eval()


def left_pad(items: list[int], width: int) -> list[int]:
    return [0] * (width - len(items)) + items


def test_shapes() -> None:
    model = make_model()
    seq = torch.tensor([left_pad([1, 2, 3], 6), left_pad([4, 5, 6, 7, 8, 9], 6)])  # (2, 6)
    h = model(seq)
    assert h.shape == (2, 6, HIDDEN)
    assert model.score(h).shape == (2, 6, NUM_ITEMS + 1)
    assert model.user_embedding(seq).shape == (2, HIDDEN)
    assert model.item_embeddings().shape == (NUM_ITEMS + 1, HIDDEN)


def test_causal_later_items_do_not_change_earlier_states() -> None:
    model = make_model()
    seq = torch.tensor([left_pad([1, 2, 3, 4, 5], 8)])
    changed = seq.clone()
    changed[0, 6] = 17
    changed[0, 7] = 18
    with torch.no_grad():
        h, h_changed = model(seq), model(changed)
    torch.testing.assert_close(h[:, :6], h_changed[:, :6])
    assert not torch.allclose(h[:, 6:], h_changed[:, 6:])


def test_left_padding_leaves_real_states_unchanged() -> None:
    model = make_model()
    items = [3, 1, 4, 1, 5]
    short = torch.tensor([left_pad(items, 6)])
    wide = torch.tensor([left_pad(items, 12)])
    with torch.no_grad():
        torch.testing.assert_close(model.user_embedding(short), model.user_embedding(wide))
        torch.testing.assert_close(model(short)[:, 1:], model(wide)[:, 7:])


def test_padding_gives_zero_states_and_no_nan_even_for_an_all_padding_row() -> None:
    model = make_model(dropout=0.2).train()
    seq = torch.tensor([left_pad([2, 3], 6), [0] * 6])
    h = model(seq)
    assert torch.isfinite(h).all()
    assert (h[0, :4] == 0).all() and (h[1] == 0).all()
    h.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_user_embedding_is_the_last_state_of_the_full_forward() -> None:
    model = make_model(dropout=0.3)  # eval mode: the last-only path must give the same state
    seq = torch.tensor([left_pad([1, 2, 3], 7), left_pad([4, 5, 6, 7, 8, 9, 10], 7), [0] * 7])
    with torch.no_grad():
        last = model.user_embedding(seq)
        torch.testing.assert_close(last, model(seq)[:, -1])
    assert (last[2] == 0).all()  # an all-padding row stays zero


def test_user_embedding_encodes_a_batch_at_the_width_of_its_longest_history() -> None:
    model = make_model()
    widths = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[1]))
    seq = torch.tensor([left_pad([1, 2, 3], 12), left_pad([4, 5], 12)])
    with torch.no_grad():
        last = model.user_embedding(seq)
        torch.testing.assert_close(last, model(seq)[:, -1])  # the same states as the full width
        assert widths == [3, 12]
        assert (model.user_embedding(torch.zeros(2, 12, dtype=torch.long)) == 0).all()
    assert widths[-1] == 1  # all padding: one column


def test_training_attention_matches_the_fused_kernel_when_dropout_keeps_everything() -> None:
    # In training with dropout the attention is spelled out by hand; a drop probability that rounds to 0
    # (below 1/65536) keeps every weight, so the result must equal the SDPA path used in eval.
    model = make_model(dropout=1e-7)
    seq = torch.tensor([left_pad([1, 2, 3], 6), left_pad([4, 5, 6, 7, 8, 9], 6)])
    with torch.no_grad():
        torch.testing.assert_close(model.train()(seq), model.eval()(seq))


@pytest.mark.parametrize("training", [False, True])
def test_under_autocast_the_states_stay_close_and_padding_stays_masked(training: bool) -> None:
    """--precision bfloat16: the attention mask takes autocast's dtype (the scores, softmax and dropout
    stay in bfloat16); real states move by bfloat16 rounding only, padding keys stay invisible, causality
    holds, and an all-padding row is still finite and zero."""
    model = make_model(dropout=1e-7).train(training)  # a drop rate that rounds to 0: no masks
    seq = torch.tensor([left_pad([1, 2, 3], 8), left_pad([4, 5, 6, 7, 8, 9, 10, 11], 8), [0] * 8])
    changed = seq.clone()
    changed[1, 7] = 19
    with torch.no_grad():
        expected = model(seq)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h, h_changed = model(seq), model(changed)
    assert torch.isfinite(h).all() and (h[2] == 0).all() and (h[0, :5] == 0).all()
    torch.testing.assert_close(h.float(), expected, atol=0.05, rtol=0.05)
    torch.testing.assert_close(h[1, :7], h_changed[1, :7])


def test_causal_in_training_mode_with_dropout() -> None:
    model = make_model(dropout=0.3).train()
    seq = torch.tensor([left_pad([1, 2, 3, 4, 5], 8)])
    changed = seq.clone()
    changed[0, 7] = 18
    torch.manual_seed(1)
    h = model(seq)
    torch.manual_seed(1)  # the same dropout masks
    h_changed = model(changed)
    torch.testing.assert_close(h[:, :7], h_changed[:, :7])


def test_dropout_keeps_the_expected_fraction_and_rescales() -> None:
    torch.manual_seed(0)
    x = torch.ones(1_000_003, requires_grad=True)  # not a multiple of 4 lanes
    y = dropout(x, 0.2, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.002
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1.25))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # gradient: the same mask and scale
    assert dropout(x, 0.2, training=False) is x
    assert dropout(x, 0.0, training=True) is x


def test_dropout_masks_follow_the_torch_seed() -> None:
    x = torch.randn(3, 50)
    torch.manual_seed(7)
    first = dropout(x, 0.5, training=True)
    torch.manual_seed(7)
    torch.testing.assert_close(dropout(x, 0.5, training=True), first)
    assert not torch.equal(dropout(x, 0.5, training=True), first)


def test_score_uses_the_tied_item_table() -> None:
    model = make_model()
    assert model.item_embeddings() is model.item_emb.weight
    assert (model.item_emb.weight[0] == 0).all()
    h = torch.randn(3, HIDDEN)
    torch.testing.assert_close(model.score(h), h @ model.item_emb.weight.T)


def test_rejects_sequences_longer_than_max_len() -> None:
    model = make_model(max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, 5, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_items": 0}, "num_items"),
        ({"max_len": 0}, "max_len"),
        ({"hidden": 0}, "hidden"),
        ({"blocks": 0}, "blocks"),
        ({"heads": 0}, "heads"),
        ({"hidden": 10, "heads": 3}, "divide"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SASRecConfig(**{"num_items": 5, **kwargs})


def test_config_module_does_not_import_torch() -> None:
    root = Path(__file__).resolve().parents[2]
    code = "import sys, student.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
