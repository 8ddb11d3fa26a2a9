"""The benchmark's plan, outputs and target logic, without running a measurement."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
try:
    import _worker
    import accuracy
    import report
    import run
finally:
    sys.path.pop(0)


def test_default_output_is_ignored_by_git_and_results_need_the_flag():
    args = run.parse_args([])
    assert os.path.realpath(args.out) == os.path.realpath(os.path.join(ROOT, "benchmarks", "out"))
    probe = os.path.join(args.out, "cpu-2core.json")
    ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT)
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.returncode == 0, "make bench would write where git tracks files"
    assert os.path.realpath(run.parse_args(["--results"]).out) == os.path.realpath(
        os.path.join(ROOT, "benchmarks", "results"))
    with pytest.raises(SystemExit):
        run.parse_args(["--results", "--out", "/tmp/x"])


def test_quick_plan_has_a_few_classes_regime_and_the_soft_rows():
    plan = run.quick_plan(["numpy", "torch", "jax"], gpu=False)
    keys = {(c["impl"], c["backend"], c["loss"], c["b"], c["labels"]) for c in plan}
    assert ("triplet_ref", "numpy", "batch_all", 1024, "two_classes") in keys
    assert ("triplet_ref", "numpy", "batch_semihard", 1024, "two_classes") in keys
    assert ("triplet_ref", "numpy", "batch_all_soft", 1024, None) in keys
    assert ("pml", "torch", "batch_all_soft", 1024, None) in keys
    assert len(plan) <= 40  # about two minutes on two cores (a fresh process per row)


def test_regime_labels_and_inputs():
    assert set(run.REGIMES) >= {"pk4", "two_classes", "all_distinct"}
    y, x = _worker.make_inputs(64, 8, 4, 0, "two_classes")
    assert sorted(set(y.tolist())) == [0, 1] and x.shape == (64, 8)
    y4, _ = _worker.make_inputs(64, 8, 4, 0)  # the base regime: P x K, K = 4
    assert sorted((y4 == c).sum() for c in set(y4.tolist())) == [4] * 16


def _row(loss, labels, t, backend="numpy", b=4096, impl="triplet_ref", mode="forward"):
    return dict(impl=impl, backend=backend, loss=loss, mode=mode, b=b, labels=labels,
                status="ok", time_s=t, peak_bytes=1)


def test_regime_and_soft_targets_are_ratios_of_one_run():
    doc = {"settings": {"device": "cpu", "k": 4, "base_labels": "pk4"}, "results": [
        _row("batch_all", "pk4", 1.0), _row("batch_all", "two_classes", 2.5),
        _row("batch_semihard", "pk4", 1.0), _row("batch_semihard", "two_classes", 1.5),
        _row("batch_all_soft", "pk4", 2.0), _row("batch_all", "pk4", 1.0, b=1024),
        _row("batch_all_soft", "pk4", 3.5, b=1024),
    ]}
    got = {t["target"]: t for t in report.targets(doc)}
    t = got["batch_all fwd B=4096 [numpy] two_classes: ≤ 2× its pk4 time"]
    assert t["status"] == "not met" and t["ratio"] == pytest.approx(2.5)
    assert got["batch_semihard fwd B=4096 [numpy] two_classes: ≤ 2× its pk4 time"]["status"] == "met"
    assert got["batch_all_soft fwd B=4096 [numpy]: ≤ 3× hinge batch_all"]["status"] == "met"
    assert got["batch_all_soft fwd B=1024 [numpy]: ≤ 3× hinge batch_all"]["status"] == "not met"


def test_accuracy_row_plumbing_on_a_tiny_size():
    """benchmarks/accuracy.py on NumPy at B = 16: the errors are the float64 oracle's, every
    separation gets a line, the cost line carries a ratio; a failed mode and a sweep without
    the row are reported as not measured; report.targets includes the lines (no timing
    asserted)."""
    acc = accuracy.measure(("numpy",), B=16, repeats=1, close_ratio=False)
    (row,) = acc["rows"]
    assert row["status"] == "ok", row
    assert set(row["errors"]) == {"0.01", "0.001", "0.0001"}
    for e in row["errors"].values():
        assert 0 <= e["distances"] <= 1e-4 and 0 <= e["losses"] <= 1e-4
    assert row["ratio"] == pytest.approx(row["refined_s"] / row["unrefined_s"])
    lines = accuracy.targets(acc)
    assert [t["status"] for t in lines[:3]] == ["met"] * 3
    assert "refined ≤ 1.2× unrefined" in lines[3]["target"] and lines[3]["status"] in ("met", "not met")
    acc["rows"].append({"mode": "jax.jit", "status": "failed", "reason": "ImportError: no jax"})
    assert accuracy.targets(acc)[-1]["status"] == "not measured"
    assert accuracy.targets(None)[0]["status"] == "not measured"
    doc = {"settings": {"device": "cpu", "k": 4, "base_labels": "pk4"}, "results": [], "accuracy": acc}
    names = [t["target"] for t in report.targets(doc)]
    assert any("pairs 0.0001 apart [numpy]" in n for n in names)
    assert run.parse_args(["--accuracy"]).accuracy and not run.parse_args([]).accuracy
