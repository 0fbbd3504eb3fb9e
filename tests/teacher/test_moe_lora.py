"""MoE-LoRA invariants on a tiny Llama: identity when fresh, peft equivalence, merge, gates, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig
from torch import nn

from distill.errors import DistillError
from student.sasrec import Dropout
from teacher.backbone import load_backbone
from teacher.e4srec import peft_lora
from teacher.moe_lora_layer import MoELoRALinear, inject_moe_lora, moe_gates, moe_lora_layers

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
E, R, ALPHA = 4, 8, 16.0


@pytest.fixture(scope="module")
def tiny():
    model, _ = load_backbone("tiny", seed=0)
    return model


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(4, 300, (3, 7), generator=generator)  # (B, T)


def _moe(model: nn.Module, *, randomize_b: bool = True) -> nn.Module:
    model = copy.deepcopy(model)
    inject_moe_lora(model, TARGETS, experts=E, r=R, lora_alpha=ALPHA, lora_dropout=0.0)
    if randomize_b:  # a fresh lora_B is zero, which would make every comparison below trivial
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _, layer in moe_lora_layers(model):
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)
    return model


def _gates(batch: int, *, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, E, generator=torch.Generator().manual_seed(seed)).softmax(-1)  # (B, E)


def _hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids).last_hidden_state


def test_inject_wraps_every_target(tiny):
    model = copy.deepcopy(tiny)
    names = inject_moe_lora(model, TARGETS, experts=E, r=R, lora_alpha=ALPHA, lora_dropout=0.1)
    assert len(names) == 2 * len(TARGETS)
    layer = model.get_submodule("layers.0.mlp.down_proj")
    assert isinstance(layer, MoELoRALinear)
    assert layer.lora_A.shape == (E, R // E, 128) and layer.lora_B.shape == (E, 64, R // E)
    assert layer.scaling == ALPHA / R
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0


def test_fresh_adapter_equals_base_model(tiny, inputs):
    model = _moe(tiny, randomize_b=False)
    with torch.no_grad(), moe_gates(model, _gates(len(inputs))):
        torch.testing.assert_close(_hidden(model, inputs), _hidden(tiny, inputs), rtol=0, atol=0)


def _peft_copy(tiny: nn.Module, r: int, lora_alpha: float) -> nn.Module:
    config = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=TARGETS, lora_dropout=0.0)
    return peft_lora(copy.deepcopy(tiny), config)


def _peft_layer(peft_model: nn.Module, name: str) -> nn.Module:
    return peft_model.base_model.model.get_submodule(name)


@pytest.mark.parametrize("expert", [0, 3])
def test_one_hot_gate_equals_one_peft_lora(tiny, inputs, expert):
    """Expert e alone is a peft LoRA of rank r/E with lora_alpha' = lora_alpha / E (same alpha/r)."""
    model = _moe(tiny)
    peft_model = _peft_copy(tiny, r=R // E, lora_alpha=ALPHA / E)
    with torch.no_grad():
        for name, layer in moe_lora_layers(model):
            target = _peft_layer(peft_model, name)
            target.lora_A["default"].weight.copy_(layer.lora_A[expert])
            target.lora_B["default"].weight.copy_(layer.lora_B[expert])
        gates = nn.functional.one_hot(torch.full((len(inputs),), expert), E).float()
        with moe_gates(model, gates):
            ours = _hidden(model, inputs)
        theirs = _hidden(peft_model, inputs)
    assert not torch.allclose(theirs, _hidden(tiny, inputs), atol=1e-3)  # the adapter does something
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_all_ones_gate_equals_rank_r_peft_lora(tiny, inputs):
    """All experts stacked are one peft LoRA of the total rank r with the same lora_alpha."""
    model = _moe(tiny)
    peft_model = _peft_copy(tiny, r=R, lora_alpha=ALPHA)
    with torch.no_grad():
        for name, layer in moe_lora_layers(model):
            target = _peft_layer(peft_model, name)
            target.lora_A["default"].weight.copy_(layer.lora_A.reshape(R, -1))
            target.lora_B["default"].weight.copy_(layer.lora_B.permute(1, 0, 2).reshape(-1, R))
        with moe_gates(model, torch.ones(len(inputs), E)):
            ours = _hidden(model, inputs)
        theirs = _hidden(peft_model, inputs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_gates_are_per_example(tiny, inputs):
    model = _moe(tiny)
    gates = _gates(len(inputs))
    with torch.no_grad():
        with moe_gates(model, gates):
            batch = _hidden(model, inputs)
        with moe_gates(model, gates[1:2]):
            single = _hidden(model, inputs[1:2])
    torch.testing.assert_close(batch[1:2], single, rtol=1e-5, atol=1e-5)


def test_two_dimensional_input():
    layer = MoELoRALinear(nn.Linear(6, 5), experts=2, r=4, lora_alpha=8, lora_dropout=0.0)
    nn.init.normal_(layer.lora_B)
    x, gates = torch.randn(3, 6), _gates(3)[:, :2]
    layer.set_gates(gates)
    expected = layer(x[:, None, :])[:, 0]
    torch.testing.assert_close(layer(x), expected)
    manual = layer.base_layer(x) + layer.scaling * torch.einsum(
        "be,eor,eri,bi->bo", gates, layer.lora_B, layer.lora_A, x
    )
    torch.testing.assert_close(layer(x), manual)


def test_bfloat16_input_computes_the_adapter_in_bfloat16_with_float32_weights():
    layer = MoELoRALinear(nn.Linear(64, 48).bfloat16(), experts=2, r=8, lora_alpha=16, lora_dropout=0.0)
    nn.init.normal_(layer.lora_B)
    x, gates = torch.randn(3, 5, 64).bfloat16(), _gates(3)[:, :2]
    layer.set_gates(gates)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    update = layer.scaling * torch.einsum("be,eor,eri,bti->bto", gates, layer.lora_B, layer.lora_A, x.float())
    exact = layer.base_layer(x).float() + update
    torch.testing.assert_close(out.float(), exact, rtol=0.03, atol=0.03)  # bfloat16's rounding, no more
    out.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.lora_A.grad.abs().sum() > 0


def test_merged_equals_unmerged_for_fixed_gate(tiny, inputs):
    model = _moe(tiny)
    gate = _gates(1)[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        with moe_gates(model, gate.expand(len(inputs), E)):
            unmerged = _hidden(model, inputs)
        layers = [layer for _, layer in moe_lora_layers(model)]
        for layer in layers:
            layer.merge(gate)
        merged = _hidden(model, inputs)  # no gates needed while merged
        for layer in layers:
            layer.unmerge()
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=1e-6)


def test_double_merge_and_unmerged_unmerge_raise():
    layer = MoELoRALinear(nn.Linear(6, 5), experts=2, r=2, lora_alpha=2, lora_dropout=0.0)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge(torch.tensor([0.5, 0.5]))
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge(torch.tensor([0.5, 0.5]))


def test_missing_or_mismatched_gates_raise(tiny, inputs):
    model = _moe(tiny)
    with pytest.raises(RuntimeError, match="without gates"):
        _hidden(model, inputs)
    with pytest.raises(RuntimeError, match="batch of 2"), moe_gates(model, _gates(2)):
        _hidden(model, inputs)
    with pytest.raises(ValueError, match=rf"\(batch, {E}\)"), moe_gates(model, torch.ones(3, E + 1)):
        pass


def test_gates_cleared_on_exit_and_on_exception(tiny, inputs):
    model = _moe(tiny)
    with pytest.raises(KeyError), moe_gates(model, _gates(len(inputs))):
        raise KeyError("boom")
    assert all(layer.gates is None for _, layer in moe_lora_layers(model))
    with moe_gates(model, _gates(3)):
        with moe_gates(model, _gates(1)):
            assert all(layer.gates.shape[0] == 1 for _, layer in moe_lora_layers(model))
        assert all(layer.gates.shape[0] == 3 for _, layer in moe_lora_layers(model))
    assert all(layer.gates is None for _, layer in moe_lora_layers(model))


def test_only_lora_params_train_and_get_gradients(tiny, inputs):
    model = _moe(tiny)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert len(trainable) == 2 * 2 * len(TARGETS)
    with moe_gates(model, _gates(len(inputs))):
        _hidden(model, inputs).pow(2).mean().backward()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_gradient_reaches_gating_network(tiny, inputs):
    model = _moe(tiny)
    gate_logits = torch.zeros(len(inputs), E, requires_grad=True)
    with moe_gates(model, gate_logits.softmax(-1)):
        _hidden(model, inputs).pow(2).mean().backward()
    assert gate_logits.grad is not None and gate_logits.grad.abs().sum() > 0


def test_no_matching_target_raises(tiny):
    model = copy.deepcopy(tiny)
    with pytest.raises(DistillError, match=r"\['qkv'\].*q_proj") as info:
        inject_moe_lora(model, ["qkv"], experts=E, r=R, lora_alpha=ALPHA, lora_dropout=0.0)
    assert "\n" not in str(info.value)


def test_rank_not_divisible_by_experts_raises():
    with pytest.raises(ValueError, match="divisible"):
        MoELoRALinear(nn.Linear(4, 4), experts=3, r=8, lora_alpha=8, lora_dropout=0.0)


def test_both_adapters_draw_the_cheap_dropout_masks(tiny, inputs):
    """MoE-LoRA and peft LoRA draw their adapter dropout with student.sasrec's Dropout, not nn.Dropout
    (whose CPU masks were a fifth of a SmolLM2 step); a seeded training forward is reproducible."""
    moe = copy.deepcopy(tiny)
    inject_moe_lora(moe, TARGETS, experts=E, r=R, lora_alpha=ALPHA, lora_dropout=0.1)
    peft = peft_lora(
        copy.deepcopy(tiny), LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.1)
    )
    for model in (moe, peft):
        dropouts = [m for m in model.modules() if isinstance(m, (nn.Dropout, Dropout))]
        assert dropouts and all(isinstance(m, Dropout) and m.p == 0.1 for m in dropouts)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in moe_lora_layers(moe):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)
    moe.train()
    outputs = []
    for _ in range(2):
        torch.manual_seed(5)
        with torch.no_grad(), moe_gates(moe, _gates(len(inputs))):
            outputs.append(_hidden(moe, inputs))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    with torch.no_grad(), moe_gates(moe, _gates(len(inputs))):
        assert not torch.equal(_hidden(moe, inputs), outputs[0])  # another draw, another mask
