"""The benchmark runner keeps working: a tiny sweep end to end (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")

pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, RUN, "--sizes", "16,32", "--backends", "numpy,torch",
           "--impls", "triplet_ref,pml", "--losses", "batch_all", "--modes", "forward",
           "--repeats", "1", "--min-repeats", "1", "--min-time-s", "0",
           "--tag", "smoke", "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(out / "smoke.json") as f:
        return out, json.load(f), proc.stdout


def _rows(doc):
    return {(r["impl"], r["backend"], r["loss"], r["mode"], r["b"]): r for r in doc["results"]}


def test_every_planned_row_is_present_and_measured(sweep):
    _, doc, _ = sweep
    rows = _rows(doc)
    expected = {("triplet_ref", be, "batch_all", "forward", b) for be in ("numpy", "torch") for b in (16, 32)}
    expected |= {("pml", "torch", "batch_all", "forward", b) for b in (16, 32)}
    assert set(rows) == expected
    for key, r in rows.items():
        assert r["status"] == "ok", (key, r)
        assert r["time_s"] > 0 and r["repeats"] == 1
        assert isinstance(r["peak_bytes"], int) and r["baseline_bytes"] > 0


def test_values_agree_with_numpy_where_semantics_coincide(sweep):
    _, doc, _ = sweep
    for key, r in _rows(doc).items():
        a = r["agreement"]
        assert a["status"] == "ok", (key, a)
        assert a["rel_diff"] <= 1e-4
        assert r["value"] == pytest.approx(a["reference"], rel=1e-4)


def test_reference_value_is_the_textbook_loss(sweep):
    # independent check of the NumPy reference: the batch-all loss by plain loops in float64
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import _worker
    finally:
        sys.path.pop(0)
    _, doc, _ = sweep
    s = doc["settings"]
    y, x = _worker.make_inputs(16, s["dim"], s["k"], s["seed"])
    x = x.astype(np.float64)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    total, count = 0.0, 0
    for a in range(16):
        for p in range(16):
            if p == a or y[p] != y[a]:
                continue
            for n in range(16):
                if y[n] != y[a]:
                    v = max(d[a, p] - d[a, n] + 1.0, 0.0)
                    total += v
                    count += v > 0
    expected = total / count
    assert _rows(doc)[("triplet_ref", "numpy", "batch_all", "forward", 16)]["value"] == pytest.approx(expected, rel=1e-5)
    assert _rows(doc)[("pml", "torch", "batch_all", "forward", 16)]["value"] == pytest.approx(expected, rel=1e-5)


def test_outputs_written(sweep):
    out, doc, stdout = sweep
    assert doc["machine"]["versions"]["numpy"] == np.__version__
    assert doc["settings"]["threads"] >= 1
    assert {"target", "status"} <= set(doc["targets"][0])
    md = (out / "smoke.md").read_text()
    assert "| batch_all | triplet_ref [numpy] | fwd |" in md
    assert "≥ 50× faster than pytorch-metric-learning" in md
    assert "pytorch-metric-learning [torch]" in md
    for png in ("smoke-time.png", "smoke-memory.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Targets:" in stdout


def test_report_rerenders_from_the_json(sweep):
    out, doc, _ = sweep
    md = out / "smoke.md"
    md.write_text("stale")
    proc = subprocess.run([sys.executable, RUN, "--report", str(out / "smoke.json"), "--no-plots"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = md.read_text()
    assert text.startswith("# triplet_ref benchmark") and "| batch_all | pytorch-metric-learning [torch] | fwd |" in text


def test_dense_peer_runs_and_memory_budget_skips_with_the_prediction(tmp_path):
    # the dense B^3 method: B=16 fits a 1 MiB budget and agrees with triplet_ref; B=64 is
    # predicted over it, so it is skipped and reported with its prediction, never run
    cmd = [sys.executable, RUN, "--sizes", "16,64", "--backends", "numpy", "--impls", "dense,triplet_ref",
           "--losses", "batch_semihard", "--modes", "forward", "--mem-budget-gib", str(1 / 1024),
           "--repeats", "1", "--min-repeats", "1", "--min-time-s", "0",
           "--tag", "skip", "--out", str(tmp_path), "--no-plots", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "skip.json").read_text())
    rows = _rows(doc)
    small = rows[("dense", "numpy", "batch_semihard", "forward", 16)]
    assert small["status"] == "ok" and small["agreement"]["status"] == "ok"
    big = rows[("dense", "numpy", "batch_semihard", "forward", 64)]
    assert big["status"] == "skipped"
    assert big["predicted_bytes"] > 2**20  # the dense method's B^3 arrays
    assert "GiB > budget" in big["reason"]
    assert "time_s" not in big  # never run
    assert rows[("triplet_ref", "numpy", "batch_semihard", "forward", 64)]["status"] == "ok"


def test_bad_arguments_are_named():
    proc = subprocess.run([sys.executable, RUN, "--backends", "nump"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "unknown backend: nump" in proc.stderr
