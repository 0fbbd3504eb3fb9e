"""Item text vectors: every title read once through the whole pretrained backbone.

Training the backbone is what costs; reading the catalogue's titles once through all of its layers is
cheap (ML-1M: 3,416 short titles), and it gives the teacher's item side what IDs learn slowly or never
(rare items). The teacher may train on a truncated backbone (``--llm-layers``); the titles are read at
full depth.

An item's vector is the mean of the last hidden states over its title's tokens. Mean pooling, not the
last token: a decoder never tuned to summarise in one token spreads what a title says over all of its
tokens, while its last token weighs its own word most. Items without a title get zeros.

A run computes the vectors once and keeps them in ``RUN/item_text.safetensors`` with a fingerprint of
what made them (the backbone and its file, dtype, pooling, tokens kept, the titles): a run resumed or
rebuilt with another backbone recomputes them, and a moved run needs no backbone pass to score.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from distill.io import is_main_process, log
from teacher.backbone import load_backbone

FILE = "item_text.safetensors"
POOLING = "mean of the last hidden states over the title's tokens, every layer"
MAX_TOKENS = 32  # of a title; titles are short, and a long one says what it is early


def fingerprint(spec: str, dtype: str, titles: Sequence[str | None]) -> str:
    """What the vectors depend on, hashed: the backbone (and the size of a local file or directory's
    config, so a replaced file counts), dtype, pooling, tokens kept and every title."""
    path = Path(spec).expanduser()
    identity: dict = {"spec": path.name if path.exists() else spec}
    if path.is_file():
        identity["bytes"] = path.stat().st_size
    elif (path / "config.json").is_file():
        identity["config"] = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    described = {
        "backbone": identity,
        "dtype": dtype,
        "pooling": POOLING,
        "max_tokens": MAX_TOKENS,
        "titles": hashlib.sha256("\x1f".join(t or "" for t in titles).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def compute(spec: str, dtype: str, titles: Sequence[str | None], batch_size: int = 64) -> torch.Tensor:
    """``(len(titles), H)`` float32: each title's pooled last hidden states (zeros for None or empty)."""
    backbone, tokenizer = load_backbone(spec, layers=None, dtype=dtype)  # every layer
    width = backbone.config.hidden_size
    out = torch.zeros(len(titles), width)
    real = [i for i, t in enumerate(titles) if t and t.strip()]
    for start in range(0, len(real), batch_size):
        rows = real[start : start + batch_size]
        batch = tokenizer(
            [titles[i] for i in rows],
            add_special_tokens=False,
            truncation=True,
            max_length=MAX_TOKENS,
            padding=True,
            return_tensors="pt",
        )
        hidden = backbone(**batch).last_hidden_state.float()  # (B, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        out[rows] = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
    return out


def item_text_vectors(
    run_dir: Path, spec: str, dtype: str, titles: Sequence[str | None], *, write: bool = True
) -> torch.Tensor:
    """The run's item text vectors: read from ``RUN/item_text.safetensors`` when its fingerprint matches,
    otherwise computed and (with ``write``) written there (rank 0 writes; every rank computes the same)."""
    path = Path(run_dir) / FILE
    wanted = fingerprint(spec, dtype, titles)
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("fingerprint") == wanted:
                    return f.get_tensor("vectors")
            log(f"{path} was made from another backbone or other titles: reading the titles again")
        except (SafetensorError, OSError):
            log(f"{path} is damaged: reading the titles again")
    log(f"reading {sum(1 for t in titles if t):,} item titles through every layer of {spec}")
    vectors = compute(spec, dtype, titles)
    if write:
        save_item_text(run_dir, spec, dtype, titles, vectors)
    return vectors


def save_item_text(
    run_dir: Path, spec: str, dtype: str, titles: Sequence[str | None], vectors: torch.Tensor
) -> None:
    """Keep ``vectors`` in ``RUN/item_text.safetensors`` with their fingerprint, whole or not at all
    (rank 0 only)."""
    if not is_main_process():
        return
    path = Path(run_dir) / FILE
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    metadata = {"fingerprint": fingerprint(spec, dtype, titles), "pooling": POOLING}
    try:
        save_file({"vectors": vectors.contiguous()}, str(tmp), metadata=metadata)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
