"""Item text vectors: titles read once at full depth, pooled, cached in the run with a fingerprint."""

from __future__ import annotations

import torch

from distill.data import Dataset
from teacher import text
from teacher.backbone import load_backbone
from teacher.model import item_text_of
from tests.teacher.test_teachers import config

TITLES = [None, "the dark night", "a red fire", "", "the dark night of the king"]


def test_a_vector_is_the_mean_of_the_last_hidden_states_over_the_title():
    vectors = text.compute("tiny", "float32", TITLES)
    backbone, tokenizer = load_backbone("tiny")
    ids = tokenizer("a red fire", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        expected = backbone(**ids).last_hidden_state[0].mean(0)
    torch.testing.assert_close(vectors[2], expected)
    assert vectors[0].abs().sum() == 0 and vectors[3].abs().sum() == 0  # no title: zeros
    assert not torch.equal(vectors[1], vectors[4])


def test_vectors_are_cached_in_the_run_and_recomputed_for_another_backbone(tmp_path, monkeypatch):
    first = text.item_text_vectors(tmp_path, "tiny", "float32", TITLES)
    assert (tmp_path / text.FILE).is_file()
    calls = []
    real = text.compute
    monkeypatch.setattr(text, "compute", lambda *a, **k: calls.append(a) or real(*a, **k))
    torch.testing.assert_close(text.item_text_vectors(tmp_path, "tiny", "float32", TITLES), first)
    assert calls == []  # read from the run
    text.item_text_vectors(tmp_path, "tiny", "bfloat16", TITLES)
    text.item_text_vectors(tmp_path, "tiny", "bfloat16", TITLES[:-1])
    assert len(calls) == 2  # another dtype, other titles: read again


def test_the_fingerprint_names_the_backbone_file(tmp_path):
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for path, size in ((a, 10), (b, 11)):
        path.parent.mkdir()
        path.write_bytes(b"x" * size)
    assert text.fingerprint(str(a), "float32", TITLES) != text.fingerprint(str(b), "float32", TITLES)
    moved = tmp_path / "c" / "model.gguf"
    moved.parent.mkdir()
    moved.write_bytes(b"x" * 10)
    assert text.fingerprint(str(a), "float32", TITLES) == text.fingerprint(str(moved), "float32", TITLES)
    assert text.fingerprint("tiny", "float32", TITLES) != text.fingerprint(str(a), "float32", TITLES)


def test_a_teacher_run_keeps_its_text_vectors_and_can_do_without(teacher_run, setup):
    assert (teacher_run / text.FILE).is_file()  # the fixture's teacher read the fixture's titles
    cfg = config(setup, item_text=False)
    assert item_text_of(cfg, Dataset(setup / "data"), teacher_run) is None
