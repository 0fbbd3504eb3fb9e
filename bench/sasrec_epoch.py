"""One real training epoch of SASRec: full-softmax CE in float32 and in mixed bfloat16 (``student-train
--precision bfloat16``) versus BCE with one negative, in one process.

All models see the same batches of a prepared dataset (``distill prepare``), the same architecture
and optimizer; the three variants alternate batch by batch so that a busy machine slows them alike.
Each step is forward + loss + backward + Adam step, as ``distill student-train`` does it, with the
backward split at the model's output so that the loss's own share (its forward and backward) is timed
apart from the transformer's.

The report also gives floors for the full-softmax loss and for the whole CE epoch (issue: an epoch as a
multiple of the floor the machine's matmul rate sets): its three (positions x items x d) matrix
products at the best matrix-multiply rate this machine reaches on a large square product (float32,
and bfloat16 for a mixed-precision kernel), plus one softmax over the epoch's (positions x items)
logits in cache-sized chunks; everything else (the loss, the one-hot, conversions) for free. The same
products are then timed alone at the shapes and layouts the epoch gives them: the floor these shapes
allow, apart from all the work that is not a product.

    python -m bench.sasrec_epoch DATASET_DIR [--batch-size 128] [--max-len 200] [--hidden 64] [--threads 2]
        [--length-group 1]

Writes ``bench/results/sasrec_epoch.md``, keeping the ``## Reading`` written by hand at its end.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections import Counter
from pathlib import Path

import torch

from bench import write_results
from distill.data import Dataset
from student.config import SASRecConfig
from student.losses import bce_loss, ce_loss, sample_negatives
from student.sasrec import SASRec

ROOT = Path(__file__).resolve().parents[1]
# The timed variants, alternating batch by batch: the full CE in float32 and under --precision bfloat16
# (the transformer under autocast, the CE's products in bfloat16), and BCE with one negative.
VARIANTS = ("ce", "ce-bf16", "bce")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--length-group", type=int, default=1, help="as student-train --length-group")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    data = Dataset(args.data)
    cfg = SASRecConfig(num_items=data.num_items, max_len=args.max_len, hidden=args.hidden, blocks=2, heads=1)
    models, optimizers = {}, {}
    seconds, loss_seconds = dict.fromkeys(VARIANTS, 0.0), dict.fromkeys(VARIANTS, 0.0)
    for name in seconds:
        torch.manual_seed(0)
        models[name] = SASRec(cfg).train()
        optimizers[name] = torch.optim.Adam(models[name].parameters(), lr=1e-3, betas=(0.9, 0.98))
    negatives_rng = torch.Generator().manual_seed(0)
    shuffle = torch.Generator().manual_seed(0)
    batches = list(
        data.train_batches(args.batch_size, args.max_len, generator=shuffle, length_group=args.length_group)
    )
    positions = sum(int((b.targets != 0).sum()) for b in batches)
    cells = sum(b.targets.numel() for b in batches)
    for batch in batches:
        inputs, targets = batch.inputs, batch.targets
        for name in seconds:
            model, optimizer = models[name], optimizers[name]
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            mixed = name == "ce-bf16"  # as student-train --precision bfloat16 trains
            with torch.autocast("cpu", torch.bfloat16, enabled=mixed):
                h = model(inputs)
            h_out = h.detach().requires_grad_()
            loss_started = time.perf_counter()
            if name != "bce":
                loss = ce_loss(model, h_out, targets, matmul_dtype=torch.bfloat16 if mixed else torch.float32)
            else:
                negatives = sample_negatives(targets, data.num_items, 1, negatives_rng)
                loss = bce_loss(model, h_out, targets, negatives)
            loss.backward()
            loss_seconds[name] += time.perf_counter() - loss_started
            h.backward(h_out.grad)
            optimizer.step()
            seconds[name] += time.perf_counter() - started
    ratio = seconds["ce"] / seconds["bce"]
    work = 3 * 2 * positions * data.num_items * args.hidden  # FLOPs of the three products
    model_work = transformer_flops(batches, args.hidden, cfg.blocks)
    fp32, bf16 = matmul_flops(torch.float32), matmul_flops(torch.bfloat16)
    softmax = softmax_seconds(positions, data.num_items)
    floors = {"float32": work / fp32 + softmax, "bfloat16": work / bf16 + softmax}
    verdict = (
        "both above"
        if min(floors.values()) > loss_seconds["bce"]
        else "not both above: a faster CE kernel could in principle meet the bar"
    )
    epoch_floor = {  # the transformer's products plus the loss's floor, each at one rate
        "float32": model_work / fp32 + floors["float32"],
        "bfloat16": model_work / bf16 + floors["bfloat16"],
    }
    # The same products timed alone at the shapes the epoch gives them (float32): how far the epoch's
    # floor is from a rate these shapes can reach, apart from the work that is not a product.
    alone_model = transformer_product_seconds(batches, args.hidden, cfg.blocks)
    alone_loss = loss_product_seconds(positions, data.num_items, args.hidden) + softmax
    alone = alone_model + alone_loss
    lines = [
        "# SASRec: one training epoch, full-softmax CE (float32 and mixed bfloat16) vs BCE with one negative",
        "",
        f"- command: `python -m bench.sasrec_epoch {args.data} --batch-size {args.batch_size} "
        f"--max-len {args.max_len} --hidden {args.hidden} --threads {args.threads} "
        f"--length-group {args.length_group}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}; load average {load_before[0]:.2f} before, "
        f"{os.getloadavg()[2]:.2f} over the last 15 minutes after",
        f"- data: {data.num_users:,} users, {data.num_items:,} items; {len(batches)} batches, "
        f"{positions:,} non-pad training positions per epoch ({cells:,} cells with padding); "
        f"d={args.hidden}, 2 blocks, 1 head, dropout 0.2",
        "- the three variants alternate batch by batch in this one process, from the same initial weights",
        "",
        "| loss | epoch seconds | vs BCE | vs CE float32 | of which the loss (forward + backward) |",
        "|---|---:|---:|---:|---:|",
        f"| full-softmax CE (fused, chunked), float32 | {seconds['ce']:.1f} | {ratio:.2f} | 1.00 "
        f"| {loss_seconds['ce']:.1f} |",
        f"| the same, `--precision bfloat16` | {seconds['ce-bf16']:.1f} "
        f"| {seconds['ce-bf16'] / seconds['bce']:.2f} | {seconds['ce-bf16'] / seconds['ce']:.2f} "
        f"| {loss_seconds['ce-bf16']:.1f} |",
        f"| BCE, 1 negative | {seconds['bce']:.1f} | 1.00 | {seconds['bce'] / seconds['ce']:.2f} "
        f"| {loss_seconds['bce']:.1f} |",
        "",
        f"Floor for the CE loss: its 3 products of {positions:,} x {data.num_items:,} x {args.hidden} take "
        f"{work / fp32:.1f} s per epoch at this machine's best float32 matmul rate ({fp32 / 1e9:.0f} GFLOP/s "
        f"on 4096^3) or {work / bf16:.1f} s in bfloat16 ({bf16 / 1e9:.0f} GFLOP/s), and one softmax over "
        f"the epoch's logits takes {softmax:.1f} s: floors of {floors['float32']:.1f} s (float32) and "
        f"{floors['bfloat16']:.1f} s (bfloat16) against {loss_seconds['bce']:.1f} s for the whole BCE loss: "
        f"{verdict}.",
        "",
        f"Floor for the whole CE epoch: the transformer's matrix products over every cell of every batch "
        f"(padding included, as computed: per cell and block 12·d² for the projections and feed-forward "
        f"and 4·L·d for attention, times 3 for forward and backward) are {model_work / 1e12:.2f} TFLOP, "
        f"{model_work / fp32:.1f} s at {fp32 / 1e9:.0f} GFLOP/s; with the loss's {floors['float32']:.1f} s "
        f"the epoch's float32 floor is {epoch_floor['float32']:.1f} s, and the measured float32 CE "
        f"epoch is **{seconds['ce'] / epoch_floor['float32']:.2f}x** it (the transformer "
        f"part, epoch minus loss, {(seconds['ce'] - loss_seconds['ce']) / (model_work / fp32):.2f}x its "
        f"products; the loss {loss_seconds['ce'] / floors['float32']:.2f}x its floor). In bfloat16 the "
        f"same products and softmax set a floor of {epoch_floor['bfloat16']:.1f} s; the mixed-precision "
        f"epoch is **{seconds['ce-bf16'] / epoch_floor['bfloat16']:.2f}x** that floor and "
        f"{seconds['ce-bf16'] / epoch_floor['float32']:.2f}x the float32 one. Everything else "
        "(embeddings, layer norms, dropout masks, softmax of attention, Adam) is counted as free.",
        "",
        f"The same products timed alone at their own shapes (float32, each distinct shape once, the "
        f"best of 5 or 10, the q/k/v views as the model slices them): the transformer's {alone_model:.1f} s "
        f"({alone_model / (model_work / fp32):.2f}x their figure at the peak rate), the loss's "
        f"{alone_loss - softmax:.1f} s plus the softmax's {softmax:.1f} s "
        f"({alone_loss / floors['float32']:.2f}x its floor): **{alone:.1f} s, "
        f"{alone / epoch_floor['float32']:.2f}x the float32 floor**, which no rearrangement of the "
        f"remaining work can get under at these shapes. The measured float32 epoch is "
        f"**{seconds['ce'] / alone:.2f}x** that; the {seconds['ce'] - alone:.1f} s beyond it are the work "
        f"that is not a product (attention masks, softmax and dropout over (B, L, L), layer norms, "
        f"dropout masks, copies, Adam): the transformer part "
        f"{(seconds['ce'] - loss_seconds['ce']) / alone_model:.2f}x its products alone, the loss "
        f"{loss_seconds['ce'] / alone_loss:.2f}x.",
        "",
    ]
    print(write_results(ROOT / "bench" / "results" / "sasrec_epoch.md", lines))


def transformer_flops(batches: list, d: int, blocks: int) -> float:
    """FLOPs of the transformer's matrix products over an epoch's batches, forward and backward (3x the
    forward): per cell of a ``(B, L)`` batch and per block, ``12·d²`` (the q/k/v and output projections,
    the two feed-forward layers) and ``4·L·d`` (scores and the weighted sum over ``L`` keys)."""
    total = 0
    for batch in batches:
        rows, width = batch.inputs.shape
        total += rows * width * (12 * d * d + 4 * width * d)
    return 3 * blocks * total  # a multiply-add counts 2, as in 12·d² and 4·L·d


def best_of(products: list, repeats: int = 3) -> float:
    """The best of ``repeats`` timings of calling every function of ``products`` once, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for product in products:
            product()
        best = min(best, time.perf_counter() - started)
    return best


def transformer_product_seconds(batches: list, d: int, blocks: int) -> float:
    """Seconds the transformer's matrix products of an epoch take alone, float32: each distinct batch
    shape's :func:`block_products` timed (best of 5), times its batches and the blocks."""
    shapes = Counter(tuple(batch.inputs.shape) for batch in batches)
    return sum(count * blocks * best_of(block_products(*shape, d), 5) for shape, count in shapes.items())


def block_products(rows: int, width: int, d: int) -> list:
    """One block's matrix products on a ``(rows, width)`` batch, as functions to time: forward (q/k/v,
    scores, weighted sum, output and the two feed-forward layers) and backward (each Linear's input and
    weight gradients, the two gradients of each attention product), with q and k strided views of one
    (B, L, 3, d) tensor as the model slices them."""
    n = rows * width
    x, grad, grad3 = torch.randn(n, d), torch.randn(n, d), torch.randn(n, 3 * d)
    w, w3, b, b3 = torch.randn(d, d), torch.randn(3 * d, d), torch.randn(d), torch.randn(3 * d)
    qkv = torch.randn(rows, width, 3, d)
    q, k = qkv[:, :, 0], qkv[:, :, 1]  # (B, L, d) views with a row stride of 3d
    weights = torch.randn(rows, width, width)
    return [
        lambda: torch.addmm(b3, x, w3.T),  # q/k/v projection
        lambda: q @ k.transpose(1, 2),  # scores
        lambda: weights @ q,  # weighted sum of the values
        *[lambda: torch.addmm(b, x, w.T)] * 3,  # output projection, feed-forward
        lambda: grad3 @ w3,  # q/k/v: input gradient
        lambda: grad3.T @ x,  # q/k/v: weight gradient
        *[lambda: grad @ w, lambda: grad.T @ x] * 3,
        lambda: weights @ k,  # d(scores) -> dq
        lambda: weights.transpose(1, 2) @ q,  # d(scores) -> dk
        lambda: q @ k.transpose(1, 2),  # d(weighted sum) -> d(weights)
        lambda: weights.transpose(1, 2) @ q,  # d(weighted sum) -> dv
    ]


def loss_product_seconds(positions: int, num_items: int, d: int, chunk: int = 256) -> float:
    """Seconds the full-softmax CE's three products take alone over an epoch's ``positions``, float32, in
    chunks of ``chunk`` rows as :func:`student.losses.ce_loss` runs them: logits, the gradient w.r.t.
    the states and the summed gradient w.r.t. the item table."""
    h, table = torch.randn(chunk, d), torch.randn(num_items, d)
    probs, grad_h = torch.randn(chunk, num_items), torch.empty(chunk, d)
    grad_table = torch.zeros(d, num_items)
    products = [
        lambda: h @ table.T,
        lambda: torch.mm(probs, table, out=grad_h),
        lambda: grad_table.addmm_(h.T, probs),
    ]
    return best_of(products * 10, repeats=10) * positions / (10 * chunk)  # a chunk alone is too short to time


def matmul_flops(dtype: torch.dtype, n: int = 4096) -> float:
    """This machine's matrix-multiply rate in ``dtype``, FLOP/s, from the best of ten n x n products."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def softmax_seconds(rows: int, columns: int, chunk: int = 256) -> float:
    """Seconds for a float32 softmax over ``rows`` x ``columns`` logits, ``chunk`` rows at a time."""
    logits = torch.randn(chunk, columns)
    torch.softmax(logits, dim=-1)
    started = time.perf_counter()
    for _ in range(-(-rows // chunk)):
        torch.softmax(logits, dim=-1)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
