"""``distill export-model``: the ONNX file scores as PyTorch does, with its vocabulary beside it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from student.export import Scorer, vectors_path, vocabulary_path
from student.run import load_run
from tests.conftest import RING

ort = pytest.importorskip("onnxruntime")


def test_onnx_scores_equal_pytorch(ring_run, tmp_path):
    run, data = ring_run
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(main, ["export-model", "--run", str(run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    from distill.data import Dataset

    model = load_run(run, Dataset(data))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    # any batch, any length (longer than max_len: the tail is read), left padding
    for shape in [(1, 1), (3, 5), (2, model.config.max_len), (4, 3 * model.config.max_len)]:
        history = torch.randint(1, RING + 1, shape, generator=generator)
        history[0, : shape[1] // 2] = 0
        expected = Scorer(model)(history)[0].detach().numpy()
        (scores,) = session.run(["scores"], {"history": history.numpy()})
        assert scores.shape == (shape[0], RING)
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)

    # A negative id is padding, not an item counted from the end (ONNX's Gather would wrap it).
    plain = session.run(["scores"], {"history": np.array([[0, 0, 3, 4]], dtype=np.int64)})[0]
    negative = session.run(["scores"], {"history": np.array([[-1, -7, 3, 4]], dtype=np.int64)})[0]
    np.testing.assert_array_equal(negative, plain)

    vocab = json.loads(vocabulary_path(out).read_text())
    assert vocab["num_items"] == RING and vocab["max_len"] == model.config.max_len
    assert [row["id"] for row in vocab["items"]] == list(range(1, RING + 1))
    # The file alone recommends: m4 -> column of m5 is the best.
    ids = {row["raw_id"]: row["id"] for row in vocab["items"]}
    scores, query = session.run(None, {"history": np.array([[ids["m3"], ids["m4"]]], dtype=np.int64)})
    assert vocab["items"][int(scores[0].argmax())]["raw_id"] == "m5"
    # The item vectors beside it: the query's dot products with them are the scores (an index's input).
    vectors = np.load(vectors_path(out))
    assert vocab["vectors"] == vectors_path(out).name and vectors.shape == (RING, model.config.hidden)
    np.testing.assert_allclose(query @ vectors.T, scores, rtol=1e-4, atol=1e-5)


def test_export_refuses_to_overwrite(ring_run, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_text("mine")
    result = CliRunner().invoke(main, ["export-model", "--run", str(ring_run[0]), "-o", str(out)])
    assert result.exit_code == 1 and "already exists" in result.output
    assert out.read_text() == "mine" and not vocabulary_path(out).exists()


def test_without_the_onnx_extra_the_error_says_what_to_install(ring_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(main, ["export-model", "--run", str(ring_run[0]), "-o", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == "Error: ONNX export needs the onnx extra: pip install 'distill[onnx]'"
    assert not list(tmp_path.iterdir())  # nothing half-written
