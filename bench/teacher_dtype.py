"""The teacher's backbone in float32 vs bfloat16: scoring and training speed, and what bf16 changes.

Loads the trained MoE-LoRA teacher of ``bench/teachers_ml100k.py`` (SmolLM2-135M) twice, once per
backbone dtype (the adapters, projector and gate stay float32 either way), and in one process:

- scores the same batches of training prefixes with both, alternating batch by batch (export's work);
- takes the same training steps with both (forward + backward, no optimizer step, so both stay equal);
- compares their scores: agreement of the top-10 items and validation NDCG@10 on a fixed user subset.

    python -m bench.teacher_dtype [--batches 6] [--batch-size 16] [--eval-users 200]

Writes ``bench/results/teacher_dtype.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.config import from_dict
from distill.io import recorded_path
from distill.runs import load_checkpoint, read_run_config, run_dataset
from student.run import load_run
from teacher.config import TeacherTrainConfig
from teacher.model import backbone_spec, build_teacher, item_text_of, load_trainable, teacher_scorer

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "bench" / "out" / "ml100k" / "moe-lora"
RESULTS = ROOT / "bench" / "results" / "teacher_dtype.md"
DTYPES = ("float32", "bfloat16")


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-users", type=int, default=200)
    args = parser.parse_args()
    if not (RUN / "metrics.json").is_file():
        print("skipped: run `python -m bench.teachers_ml100k` first (it trains the teacher compared here)")
        return
    # The run read as teacher.model.load_teacher reads it, built once per backbone dtype.
    config = read_run_config(RUN)
    data = run_dataset(RUN)
    sasrec = load_run(recorded_path(RUN, config.get("sasrec_run"), "its SASRec run (sasrec_run)"), data)
    weights, _, _ = load_checkpoint(RUN / "best")
    # Runs from before teacher-train's --prompt-items record the prompt width as max_len.
    train = {("prompt_items" if k == "max_len" else k): v for k, v in config["train"].items()}
    train.setdefault("item_text", False)  # runs from before item text vectors had none
    own = from_dict(TeacherTrainConfig, train, f"{RUN}/config.json")
    own = dataclasses.replace(own, llm=backbone_spec(config, own.llm, RUN))
    text = item_text_of(own, data, RUN)  # the run's own vectors: an input of both dtypes alike
    teachers = {}
    for dtype in DTYPES:
        cfg = from_dict(TeacherTrainConfig, {**train, "dtype": dtype}, f"{RUN}/config.json")
        cfg = dataclasses.replace(cfg, llm=backbone_spec(config, cfg.llm, RUN))
        teachers[dtype] = build_teacher(cfg, data, sasrec, torch.device("cpu"), text)
        load_trainable(teachers[dtype].model, weights, RUN / "best")
    width = teachers["float32"].width
    samples = data.prefix_samples(4, width)
    rows = np.random.default_rng(0).permutation(len(samples.targets))[: args.batches * args.batch_size]
    batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]

    score_seconds = dict.fromkeys(DTYPES, 0.0)
    overlap = []
    with torch.no_grad():
        for dtype in DTYPES:  # one warm-up batch each
            teachers[dtype].model.eval()
            teachers[dtype](torch.from_numpy(samples.histories[batches[0][:2]]))
        for idx in batches:
            top = {}
            for dtype in DTYPES:
                started = time.perf_counter()
                scores = teachers[dtype](torch.from_numpy(samples.histories[idx]))  # (B, N + 1)
                score_seconds[dtype] += time.perf_counter() - started
                top[dtype] = scores[:, 1:].float().topk(10).indices
            for a, b in zip(top["float32"].tolist(), top["bfloat16"].tolist(), strict=True):
                overlap.append(len(set(a) & set(b)) / 10)

    train_seconds = dict.fromkeys(DTYPES, 0.0)
    for dtype in DTYPES:
        teachers[dtype].model.train()
    for idx in batches[: max(1, args.batches // 2)]:
        idx = idx[: args.batch_size // 2]
        for dtype in DTYPES:
            teacher = teachers[dtype]
            started = time.perf_counter()
            scores = teacher(torch.from_numpy(samples.histories[idx]))
            loss = F.cross_entropy(scores[:, 1:].float(), torch.from_numpy(samples.targets[idx] - 1))
            loss.backward()
            train_seconds[dtype] += time.perf_counter() - started
            teacher.model.zero_grad(set_to_none=True)

    users = np.sort(np.random.default_rng(0).permutation(data.eval_users())[: args.eval_users])
    valid = {
        dtype: teacher_scorer(teachers[dtype], config["kind"]).evaluate(data, "valid", 16, users)
        for dtype in DTYPES
    }

    scored = len(rows)
    trained = sum(len(b[: args.batch_size // 2]) for b in batches[: max(1, args.batches // 2)])
    after = os.getloadavg()
    lines = [
        "# MoE-LoRA teacher: float32 vs bfloat16 backbone (SmolLM2-135M, ML-100K)",
        "",
        f"- command: `python -m bench.teacher_dtype --batches {args.batches} --batch-size {args.batch_size} "
        f"--eval-users {args.eval_users}`",
        f"- date: {datetime.date.today()}; 2 CPU cores, torch {torch.__version__}, load average "
        f"{before[0]:.2f} before, {after[0]:.2f}/{after[2]:.2f} (1/15 min) after; teacher "
        f"`bench/out/ml100k/moe-lora` ({width} history items with titles per prompt); adapters, "
        "projector and gate float32 in both; both dtypes alternate batch by batch in one process",
        "",
        "| backbone | scoring prefixes/s | training samples/s (fwd + bwd) | valid NDCG@10 "
        f"({args.eval_users} users) |",
        "|---|---:|---:|---:|",
    ]
    for dtype in DTYPES:
        lines.append(
            f"| {dtype} | {scored / score_seconds[dtype]:.1f} | {trained / train_seconds[dtype]:.1f} | "
            f"{valid[dtype]['ndcg@10']:.4f} |"
        )
    lines += [
        "",
        f"bfloat16 / float32: scoring {score_seconds['float32'] / score_seconds['bfloat16']:.2f}x, "
        f"training {train_seconds['float32'] / train_seconds['bfloat16']:.2f}x as fast; the two agree on "
        f"{np.mean(overlap):.0%} of each prefix's top-10 items (mean over {len(overlap)} prefixes).",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
