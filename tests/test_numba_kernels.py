"""The kernels' numba body against their pure-NumPy body, and the body selection.

The NumPy body is checked against the oracles elsewhere (``test_mining_kernels.py``,
``test_engine.py``, which also run the losses under each body); here the numba body must
give the NumPy body's results on the kernels' own inputs: every label regime, float32
and float64, exact ties, ``-0.0``, NaN, reference sets (``d`` of shape (B, R)), margins
below the distances' rounding step, and rows on the compiled bucket pass (more
positives than ``_numba.COMPILED_K``; more on it in ``test_numba_buckets.py``).  Counts and indices exactly; sums within rounding.
"""
from __future__ import annotations

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import mining as M
from triplet_ref import oracles
from triplet_ref.mining import _numba
from triplet_ref.mining.batch_all import HINGE, SOFT
from triplet_ref.mining.semihard import CHOICE
from triplet_ref.testing.regimes import REGIMES, make_labels

pytest.importorskip("numba")

TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _inputs(regime, dtype, seed, ties=False, refs=0):
    """``d`` (B, B + refs) of a regime's labels, its masks and a gradient."""
    b = 29
    y = make_labels(regime, b, seed=seed)
    rng = np.random.default_rng(seed)
    yr = np.concatenate([y, rng.integers(0, 4, size=refs)]) if refs else y
    x = rng.standard_normal((b + refs, 3))
    if ties:  # a coarse grid: many exactly equal distances (exact in float32)
        x = np.round(x * 2) / 2
        d = ((x[:b, None] - x[None]) ** 2).sum(-1)
    else:
        d = np.sqrt(((x[:b, None] - x[None]) ** 2).sum(-1))
    d = d.astype(dtype)
    pos = (y[:, None] == yr[None]) & ~np.eye(b, b + refs, dtype=bool)
    neg = y[:, None] != yr[None]
    g = rng.standard_normal(d.shape).astype(dtype)
    return d, pos, neg, g


def _same(a, b, dtype, what):
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=what)
        np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype], err_msg=what)
        assert a.dtype == b.dtype, what
    else:
        np.testing.assert_array_equal(a, b, err_msg=what)
        assert a.dtype == b.dtype, what


def _check_all(d, pos, neg, g, margin, dtype, soft=True):
    m = np.asarray(margin, dtype=dtype)
    k = HINGE.kernel
    a, b = k.forward.numba(d, pos, neg, m), k.forward.numpy(d, pos, neg, m)
    for u, v, what in zip(a, b, ("L", "count")):
        _same(u, v, dtype, f"hinge {what}")
    _same(k.backward.numba(d, pos, neg, m, g, a[1]), k.backward.numpy(d, pos, neg, m, g, b[1]), dtype,
          "hinge backward")
    if soft:
        k = SOFT.kernel
        a, b = k.forward.numba(d, pos, neg, m), k.forward.numpy(d, pos, neg, m)
        for u, v, what in zip(a, b, ("L", "count", "slope")):
            _same(u, v, dtype, f"soft {what}")
        _same(k.backward.numba(d, pos, neg, m, g, a[2]), k.backward.numpy(d, pos, neg, m, g, b[2]), dtype,
              "soft backward")
    term = pos & neg.any(axis=1)[:, None]
    a, b = CHOICE.kernel.forward.numba(d, neg, term), CHOICE.kernel.forward.numpy(d, neg, term)
    _same(a[0], b[0], dtype, "semi-hard chosen")
    _same(a[1], b[1], dtype, "semi-hard flag")


# COMPILED_K: every row on the pass per positive (128), rows with more than 3 positives
# on the bucket pass (3)
@pytest.mark.parametrize("small_k", [128, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("regime", REGIMES)
def test_numba_body_equals_numpy_body(monkeypatch, regime, dtype, small_k):
    monkeypatch.setattr(_numba, "COMPILED_K", small_k)
    for seed, ties, refs in ((0, False, 0), (1, True, 0), (2, True, 7)):
        d, pos, neg, g = _inputs(regime, dtype, seed, ties, refs)
        for margin in (1.0, 0.0, 1e-20):
            _check_all(d, pos, neg, g, margin, dtype, soft=margin == 1.0)


def test_rows_with_many_positives_stay_compiled(monkeypatch):
    # one class of 6 (5 positives per anchor) among pairs, and a class of 20: with
    # COMPILED_K = 3 those rows take the compiled bucket pass; the NumPy body never runs
    monkeypatch.setattr(_numba, "COMPILED_K", 3)
    kernels = (HINGE.kernel.forward, HINGE.kernel.backward, CHOICE.kernel.forward)
    calls = {k: [] for k in kernels}
    for k in kernels:
        body = k.numpy
        monkeypatch.setattr(k, "numpy", lambda *a, k=k, body=body: (calls[k].append(a[0].shape[0]), body(*a))[1])
    y_mixed = np.concatenate([np.zeros(6, int), np.repeat(np.arange(1, 12), 2)])
    y_most = np.concatenate([np.zeros(20, int), np.arange(1, 9)])
    for y in (y_mixed, y_most):
        x = np.random.default_rng(1).standard_normal((y.size, 3))
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        pos = (y[:, None] == y[None]) & ~np.eye(y.size, dtype=bool)
        neg = y[:, None] != y[None]
        g = np.random.default_rng(2).standard_normal(d.shape)
        _check_all(d, pos, neg, g, 0.5, np.float64, soft=False)
        # only the checks' own NumPy-body call, with every row
        for k in kernels:
            assert calls[k] == [y.size], (k, calls[k])
            calls[k].clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_negative_zero_and_ties_go_to_the_smallest_index(dtype):
    # −0.0 equals +0.0: a tie (smallest index), never "beyond" 0.0
    d = np.array([[0.0, 0.0, -0.0, 1.0, 1.0, -0.0],
                  [0.0, 0.0, 2.0, 2.0, 0.5, 0.5],
                  [-0.0, 2.0, 0.0, 2.0, 1.0, 1.0]], dtype=dtype)
    pos = np.zeros(d.shape, bool)
    pos[0, 1] = pos[1, 0] = pos[2, 2] = pos[0, 5] = True
    neg = ~pos & ~np.eye(*d.shape, dtype=bool)
    g = np.ones(d.shape, dtype)
    _check_all(d, pos, neg, g, 0.0, dtype)
    _check_all(d, pos, neg, g, 1.0, dtype)
    chosen, semi = CHOICE.kernel.forward.numba(d, neg, pos)
    # row 0, term (0, 1) at 0.0: negatives 2 (−0.0), 3 (1.0), 4 (1.0): the first 1.0
    assert chosen[0, 1] == 3 and semi[0, 1]
    # row 2, term (2, 2) at 0.0: negatives 0 (−0.0), 1, 3 (2.0), 4, 5 (1.0): the first 1.0
    assert chosen[2, 2] == 4 and semi[2, 2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_distances(dtype):
    d, pos, neg, g = _inputs("pk4", dtype, seed=3)
    d[2, 5] = np.nan  # a negative or positive of row 2
    d[7, :] = np.nan  # every candidate of row 7
    m = np.asarray(0.5, dtype)
    a, b = HINGE.kernel.forward.numba(d, pos, neg, m), HINGE.kernel.forward.numpy(d, pos, neg, m)
    clean = ~np.isnan(d).any(axis=1)
    # a row reading a NaN distance: NaN at its positive pairs, in both bodies
    for rows in (a[0], b[0]):
        assert np.isnan(rows[~clean][pos[~clean]]).all()
    _same(a[0][clean], b[0][clean], dtype, "L, rows without NaN")
    _same(a[1][clean], b[1][clean], dtype, "count, rows without NaN")
    s = SOFT.kernel.forward.numba(d, pos, neg, m)
    assert np.isnan(s[0][~clean][pos[~clean]]).all()
    term = pos & neg.any(axis=1)[:, None]
    chosen, _ = CHOICE.kernel.forward.numba(d, neg, term)
    want = CHOICE.kernel.forward.numpy(d, neg, term)[0]
    np.testing.assert_array_equal(chosen[clean], want[clean])
    # the loss is NaN whichever body runs (docs/semantics.md, NaN)
    y = make_labels("pk4", 6, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(dtype)
    x[1, 0] = np.nan
    with M.force_body("numba"):
        assert np.isnan(tr.batch_all(y, x)) and np.isnan(tr.batch_semihard(y, x))


def test_losses_under_the_numba_body_match_the_oracle():
    # a P×K batch large enough for several compiled rows per anchor class and a
    # float32 value within the documented tolerance
    y = make_labels("pk4", 64, seed=5)
    x = np.random.default_rng(5).standard_normal((64, 8))
    for dtype, tol in ((np.float32, 2e-5), (np.float64, 1e-10)):
        with M.force_body("numba"):
            got = [tr.batch_all(y, x.astype(dtype), 0.5, return_info=True),
                   tr.batch_semihard(y, x.astype(dtype), 0.5, return_info=True),
                   tr.batch_all(y, x.astype(dtype), 0.5, soft=True)]
        want = [oracles.batch_all(y, x, 0.5, return_info=True),
                oracles.batch_semihard(y, x, 0.5, return_info=True),
                oracles.batch_all(y, x, 0.5, soft=True)]
        for (g, gi), (w, wi) in zip(got[:2], want[:2]):
            assert float(g) == pytest.approx(w, rel=tol, abs=tol)
        assert int(got[0][1]["num_positive"]) == want[0][1]["num_positive"]
        np.testing.assert_array_equal(got[1][1]["semihard_negative"], want[1][1]["semihard_negative"])
        assert float(got[2]) == pytest.approx(want[2], rel=tol, abs=tol)


# --- the selection ---------------------------------------------------------------------

def test_body_is_typed_and_the_environment_is_checked(monkeypatch):
    assert M.Body.parse("numba") is M.Body.NUMBA
    for bad in ("Numba", "1", "", None, True):
        with pytest.raises(ValueError, match="body: expected one of 'auto', 'numpy', 'numba'"):
            M.Body.parse(bad)
    with pytest.raises(ValueError, match="body"):
        with M.force_body("fast"):
            pass
    for raw, want in (("", M.Body.AUTO), ("1", M.Body.NUMBA), ("0", M.Body.NUMPY), (" 1 ", M.Body.NUMBA)):
        monkeypatch.setenv("TRIPLET_REF_NUMBA", raw)
        assert M.body() is want
    monkeypatch.delenv("TRIPLET_REF_NUMBA")
    assert M.body() is M.Body.AUTO
    monkeypatch.setenv("TRIPLET_REF_NUMBA", "yes")
    with pytest.raises(ValueError, match="TRIPLET_REF_NUMBA: expected 0, 1 or unset, got 'yes'"):
        tr.batch_all([0, 0, 1], np.eye(3))
    with M.force_body("numpy"):  # force_body overrides the environment
        assert M.body() is M.Body.NUMPY
        assert float(tr.batch_all([0, 0, 1], np.eye(3))) == pytest.approx(oracles.batch_all([0, 0, 1], np.eye(3)))


class _Spy:
    """Records which body of a kernel ran."""

    def __init__(self, monkeypatch, kernel):
        self.ran = []
        numba_run, numpy_body = kernel._run, kernel.numpy
        monkeypatch.setattr(kernel, "_run", lambda *a: (self.ran.append("numba"), numba_run(*a))[1])
        monkeypatch.setattr(kernel, "numpy", lambda *a: (self.ran.append("numpy"), numpy_body(*a))[1])


def test_which_body_runs(monkeypatch):
    monkeypatch.delenv("TRIPLET_REF_NUMBA", raising=False)
    hinge = _Spy(monkeypatch, HINGE.kernel.forward)
    soft = _Spy(monkeypatch, SOFT.kernel.forward)
    y, x = [0, 0, 1, 1], np.random.default_rng(0).standard_normal((4, 2))
    tr.batch_all(y, x), tr.batch_all(y, x, soft=True)
    # auto: numba for the kernels it makes faster; the soft rows stay NumPy
    assert hinge.ran == ["numba"] and soft.ran == ["numpy"]
    tr.batch_all(y, x.astype(np.longdouble))  # a dtype numba does not run: NumPy
    assert hinge.ran[-1] == "numpy"
    monkeypatch.setenv("TRIPLET_REF_NUMBA", "1")
    tr.batch_all(y, x, soft=True)
    assert soft.ran[-1] == "numba"
    # forced numba on a dtype it does not run: a clear error from the first kernel of the
    # call (the distances' stripe pass, then the batch-all rows), never a silent fallback
    with pytest.raises(NotImplementedError, match="pairwise_distances: the numba body runs float32/float64"):
        tr.batch_all(y, x.astype(np.longdouble))
    d = np.asarray(tr.pairwise_distances(x), dtype=np.longdouble)
    yy = np.asarray(y)
    pos = (yy[:, None] == yy[None, :]) & ~np.eye(4, dtype=bool)
    with pytest.raises(NotImplementedError, match="batch_all_forward: the numba body runs float32/float64"):
        HINGE.kernel.forward(d, pos, yy[:, None] != yy[None, :], np.longdouble(1.0))
    monkeypatch.setenv("TRIPLET_REF_NUMBA", "0")
    tr.batch_all(y, x)
    assert hinge.ran[-1] == "numpy"


def test_without_numba(monkeypatch):
    # numba missing: auto runs NumPy; selecting numba raises, naming the variable
    monkeypatch.setattr(_numba, "_kernels", None)
    monkeypatch.setattr(_numba, "_import_error", ImportError("No module named 'numba'"))
    y, x = [0, 0, 1, 1], np.random.default_rng(0).standard_normal((4, 2))
    want = oracles.batch_all(y, x)
    assert float(tr.batch_all(y, x)) == pytest.approx(want)
    assert not M.numba_available()
    monkeypatch.setenv("TRIPLET_REF_NUMBA", "1")
    with pytest.raises(ImportError, match="TRIPLET_REF_NUMBA=1 or force_body.*No module named 'numba'"):
        tr.batch_all(y, x)
