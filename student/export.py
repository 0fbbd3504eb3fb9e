"""``distill export-model``: a student's scoring path as ONNX, usable without this package.

The graph maps ``history`` (B, L) int64 item ids, left-padded with 0 (a negative id is read as 0), any
B and any L (only the last ``max_len`` columns are read) to ``scores`` (B, num_items) float32, where
column j scores item id j + 1. Beside ``model.onnx`` lies ``model.items.json``: the id convention,
``max_len``, the dataset fingerprint, and one row per item id (raw id, title). Masking seen items and
taking the top k is the caller's (a few lines of numpy; see the README).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.io import record_path
from distill.runs import run_dataset
from student.config import ExportModelConfig
from student.run import load_run, sasrec_scorer
from student.sasrec import SASRec

FORMAT_VERSION = 1  # of the vocabulary file
# Opsets the graph can be written in: attention (scaled_dot_product_attention) needs 14; torch's
# TorchScript exporter writes up to 23.
OPSETS = range(14, 24)


class Scorer(nn.Module):
    """A SASRec's next-item scores for the last column of each history: what the ONNX file computes."""

    def __init__(self, model: SASRec) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, L)`` item ids, left-padded with 0 → ``(B, num_items)`` scores of item ids 1..num_items,
        and the ``(B, d)`` query whose dot products with the item vectors are those scores."""
        history = history[:, -self.model.config.max_len :]  # right-aligned positions: the tail is enough
        history = history.clamp(min=0)  # a negative id is padding (an ONNX Gather would wrap it around)
        # not user_embedding: its trim of all-padding columns reads the data, which a traced graph would
        # freeze at the example's width
        query = self.model(history, last_only=True)[:, 0]
        return self.model.score(query)[:, 1:], query


def vocabulary_path(onnx_path: str | Path) -> Path:
    """Where the vocabulary of ``model.onnx`` lies: ``model.items.json``."""
    path = Path(onnx_path)
    return path.with_name(path.stem + ".items.json")


def vectors_path(onnx_path: str | Path) -> Path:
    """Where the item vectors of ``model.onnx`` lie: ``model.vectors.npy``, ``(num_items, d)`` float32,
    row ``j`` item id ``j + 1`` (what a vector index over the catalogue is built from)."""
    path = Path(onnx_path)
    return path.with_name(path.stem + ".vectors.npy")


def export_onnx(model: SASRec, path: str | Path, opset: int = 18) -> None:
    """Write ``model``'s scoring path to ``path`` as ONNX (dynamic batch and length) and check it.

    Raises:
        DistillError: the ``onnx`` extra is not installed.
    """
    try:
        import onnx
    except ImportError:
        raise DistillError("ONNX export needs the onnx extra: pip install 'distill[onnx]'") from None
    scorer = Scorer(model.cpu()).eval()  # export restores the mode it found: eval, not Scorer's train
    example = torch.randint(1, model.config.num_items + 1, (2, min(8, model.config.max_len)))
    with warnings.catch_warnings():
        # The tracer warns of SASRec's `L > max_len` check (always false after the slice in Scorer) and
        # of unpacking q, k, v (always 3): both are constants of the graph by design.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            scorer,
            (example,),
            str(path),
            input_names=["history"],
            output_names=["scores", "query"],
            dynamic_axes={
                "history": {0: "batch", 1: "length"},
                "scores": {0: "batch"},
                "query": {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def run(cfg: ExportModelConfig) -> dict:
    """Export ``cfg.run`` to ``cfg.output`` and its vocabulary beside it; returns the vocabulary header."""
    output, vocab, vectors = Path(cfg.output), vocabulary_path(cfg.output), vectors_path(cfg.output)
    if cfg.opset not in OPSETS:
        raise DistillError(f"--opset {cfg.opset}: the student exports to opsets {OPSETS[0]} to {OPSETS[-1]}")
    for path in (output, vocab, vectors):
        if path.is_dir():
            raise DistillError(f"{path} is a directory; give a file name for the model (--output model.onnx)")
        if path.exists() and not cfg.overwrite:
            raise DistillError(f"{path} already exists (use --overwrite to replace it)")
    if cfg.overwrite and any(p.exists() for p in (output, vocab, vectors)) and not _ours(output, vocab):
        raise DistillError(
            f"{output} was not written by distill export-model (no {vocab.name} beside it that names it); "
            "refusing to replace it"
        )
    data = run_dataset(cfg.run, cfg.data)
    model = load_run(cfg.run, data, "cpu")
    sasrec_scorer(model).check_finite(data, cfg.run)
    made = [p for p in reversed(output.parent.absolute().parents) if not p.exists()]
    made += [] if output.parent.exists() else [output.parent.absolute()]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DistillError(f"cannot write {output}: {e.strerror or e}") from None
    header = {
        "format_version": FORMAT_VERSION,
        "model": output.name,
        "run": record_path(output.parent, cfg.run),
        "dataset": data.identity(output.parent),
        "input": "history: (batch, length) int64 item ids, oldest first, left-padded with 0",
        "output": "scores: (batch, num_items) float32; column j scores item id j + 1; query: (batch, d) "
        "float32, whose dot product with row j of the vectors is that score",
        "vectors": vectors.name,
        "max_len": model.config.max_len,
        "num_items": data.num_items,
    }
    items = [
        {"id": i, "raw_id": data.raw_item(i), "title": data.title(i)} for i in range(1, data.num_items + 1)
    ]
    # Every file goes to a temporary name first: a failed export leaves nothing behind.
    tmp_model, tmp_vocab, tmp_vectors = (
        p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in (output, vocab, vectors)
    )
    try:
        export_onnx(model, tmp_model, cfg.opset)
        with open(tmp_vectors, "wb") as f:
            np.save(f, model.item_embeddings()[1:].detach().float().numpy())
        tmp_vocab.write_text(json.dumps({**header, "items": items}, ensure_ascii=False, indent=1) + "\n")
        tmp_model.replace(output)
        tmp_vectors.replace(vectors)
        tmp_vocab.replace(vocab)
    except OSError as e:
        raise DistillError(f"cannot write {output}: {e.strerror or e}") from None
    finally:
        for tmp in (tmp_model, tmp_vocab, tmp_vectors):
            tmp.unlink(missing_ok=True)
        if not output.exists():  # failed: the directories this export created go too
            for directory in reversed(made):
                with contextlib.suppress(OSError):
                    directory.rmdir()
    return {**header, "vocabulary": str(vocab), "vectors": str(vectors)}


def _ours(output: Path, vocab: Path) -> bool:
    """Whether ``output`` is a model this command wrote: the vocabulary beside it names it."""
    try:
        header = json.loads(vocab.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(header, dict)
        and header.get("format_version") == FORMAT_VERSION
        and (header.get("model") == output.name)
    )
