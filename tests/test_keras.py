"""triplet_ref.keras on the jax and torch Keras backends, each in a fresh interpreter with
KERAS_BACKEND set (tests/keras_check.py): values against the oracles for labels of several
dtypes and shapes, errors, serialisation, one small model.fit with save/load of the compiled
model, and (torch) the Keras semi-hard example on a tiny budget. The two interpreters run at
the same time."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from triplet_ref import oracles as O

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = [b for b in ("jax", "torch") if importlib.util.find_spec(b) is not None]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras is not installed")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    procs = {}
    for backend in BACKENDS:
        work = tmp_path_factory.mktemp(f"keras_{backend}")
        env = dict(os.environ, KERAS_BACKEND=backend)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        args = [sys.executable, str(ROOT / "tests" / "keras_check.py"), str(work)]
        if backend == "torch":
            args.append("--example")
        procs[backend] = (work, subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, text=True))
    out = {}
    for backend, (work, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-4000:]
        line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
        out[backend] = (work, json.loads(line[len("RESULT "):]), stdout)
    return out


@pytest.fixture(params=BACKENDS)
def run(request, results):
    return results[request.param]


def test_values_equal_the_oracles_for_every_label_form(run):
    _, r, _ = run
    assert r["backend"] in ("jax", "torch")
    y, x = r["inputs"]["y"], np.array(r["inputs"]["x"])
    want = {"BatchAllLoss": O.batch_all(y, x, 0.5, metric="sqeuclidean"),
            "BatchHardLoss": O.batch_hard(y, x, 0.5, soft=True),
            "BatchSemiHardLoss": O.batch_semihard(y, x, 0.5),
            "BatchContrastiveLoss": O.batch_contrastive(y, x, 1.5)}
    for name, value in want.items():
        got = r["online"][name]  # int64 (B,), float32 (B, 1), int32 (B, 1) labels
        assert got == pytest.approx([value] * 3, rel=1e-5), name
        if r["backend"] == "torch":  # chunk_size=5
            assert r["online_chunked"][name] == pytest.approx(value, rel=1e-5), name
    t = np.array(r["inputs"]["t"])
    assert r["triplet"] == pytest.approx(O.triplet_loss(t[:, 0], t[:, 1], t[:, 2], 0.3, metric="cosine"), rel=1e-5)
    same = [1, 0, 0, 1, 1, 0]
    assert r["contrastive"] == pytest.approx(O.contrastive_loss(t[:, 0], t[:, 1], same, 2.0), rel=1e-5)
    if r["backend"] == "jax":  # under jax.jit: checked labels cannot raise, a fractional one gives NaN
        assert r["traced"][0] == pytest.approx(O.batch_semihard(y, x, 1.0), rel=1e-5)
        assert math.isnan(r["traced"][1])


def test_errors_name_the_argument(run):
    e = run[1]["errors"]
    assert e["fractional"].startswith("ValueError: y_true: expected whole numbers")
    assert e["shape"] == "ValueError: y_true: expected shape (12,) or (12, 1), got (12, 2)"
    assert e["same"].startswith("ValueError: y_true: expected 0 or 1")
    assert e["weights"].startswith("ValueError: sample_weight:")
    assert e["metric"].startswith("ValueError: metric:")
    assert e["chunk_size"].startswith("ValueError: chunk_size:")
    assert e["triplet_shape"].startswith("ValueError: y_pred: expected shape (N, 3, D)")
    assert "'tensorflow' is not supported" in e["tensorflow"]


def test_config_round_trip(run):
    configs = run[1]["configs"]
    assert set(configs) == {"BatchAllLoss", "BatchHardLoss", "BatchSemiHardLoss", "BatchContrastiveLoss",
                            "TripletLoss", "ContrastiveLoss"}
    for name, (cfg, back, same) in configs.items():
        assert back == name and same and cfg["margin"] == 0.25
    assert configs["BatchHardLoss"][0] == {"name": "batch_hard_loss", "margin": 0.25, "metric": "euclidean",
                                           "soft": False}
    cfg, back = run[1]["chunked_config"]
    assert cfg == back == {"name": "batch_hard_loss", "margin": 0.25, "metric": "euclidean", "soft": False,
                           "chunk_size": 4}


def test_fit_save_load(run):
    _, r, _ = run
    assert np.isfinite(r["fit_loss"]).all() and r["fit_loss"][-1] < r["fit_loss"][0]
    assert r["loaded_loss"] == ["BatchSemiHardLoss", {"name": "batch_semihard_loss", "margin": 0.5,
                                                      "metric": "euclidean"}]
    Y = np.arange(48) % 4
    want = O.batch_semihard(Y, np.array(r["pred"]), 0.5)
    # evaluate() of the trained and of the loaded model: the loss of the predictions
    assert r["eval"] == pytest.approx([want, want], rel=1e-5)


def test_keras_semihard_example_writes_projector_files(results):
    if "torch" not in results:
        pytest.skip("torch is not installed")
    pytest.importorskip("sklearn")
    work, r, stdout = results["torch"]
    assert r["example_rc"] == 0
    from examples.keras_semihard.train import load_digits_split

    y_test = load_digits_split(0)[3]
    vecs = np.loadtxt(work / "proj" / "vecs.tsv", delimiter="\t")
    meta = np.loadtxt(work / "proj" / "meta.tsv", dtype=int)
    assert vecs.shape == (450, 64) and meta.tolist() == y_test.tolist()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert "test set, trained" in stdout and "backend torch" in stdout


def test_migration_guide_keras_blocks_print_what_the_guide_shows(run):
    from test_migrating import check_pairs, sections

    expected = [text for blocks in sections().values() for keras_block, _, text in blocks if keras_block]
    got = run[1]["doc_outputs"]
    assert len(got) == len(expected) >= 1
    for g, e in zip(got, expected):
        assert g == e
        check_pairs(g)
        lines = g.splitlines()  # the Keras loss prints the function's value
        assert lines[0].split()[-1] == lines[1].split()[-1]
