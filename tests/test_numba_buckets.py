"""The numba body's bucket pass: rows with more than ``_numba.COMPILED_K`` positives
(issue #9 item 3, "no cliff").

Such a row's negatives are counting-sorted into buckets by value and every threshold
(hinge), negative (backward) or term (semi-hard) is answered from the buckets below its
own plus an exact scan of its one bucket.  Checked here against the oracles and a dense
definition (values, counts, gradients, chosen indices), against the NumPy body, and
against the compiled pass per positive on rows whose values defeat the buckets: all
equal, one far outlier, a range of a few subnormals, ±0.0, ±inf, NaN, exact ties and a
margin below the distances' rounding step; float32 and float64.
"""
from __future__ import annotations

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import mining, oracles
from triplet_ref.mining import _numba
from triplet_ref.mining.batch_all import HINGE
from triplet_ref.mining.semihard import CHOICE
from triplet_ref.testing.regimes import make_labels

pytest.importorskip("numba")

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _masks(y):
    pos = (y[:, None] == y[None]) & ~np.eye(y.size, dtype=bool)
    neg = y[:, None] != y[None]
    return pos, neg


def _kernels(d, pos, neg, margin, g, compiled_k, monkeypatch):
    """The numba body's hinge forward, backward and semi-hard choice with ``COMPILED_K``."""
    monkeypatch.setattr(_numba, "COMPILED_K", compiled_k)
    m = np.asarray(margin, dtype=d.dtype)
    L, count = HINGE.kernel.forward.numba(d, pos, neg, m)
    grad = HINGE.kernel.backward.numba(d, pos, neg, m, g, count)
    term = pos & neg.any(axis=1)[:, None]
    chosen, semi = CHOICE.kernel.forward.numba(d, neg, term)
    return L, count, grad, chosen, semi


def _dense(d, pos, neg, margin, g):
    """The definition, dense: ``L``, the counts (the rule in ``d``'s dtype, as the
    oracle's on these distances), ``∂ Σ g ⊙ L / ∂d`` (float64) and the semi-hard choice."""
    m = d.dtype.type(margin)
    on = ((d[:, :, None] - d[:, None, :]) + m > 0) & pos[:, :, None] & neg[:, None, :]  # (a, p, n)
    d64 = d.astype(np.float64)
    L = np.where(on, d64[:, :, None] - d64[:, None, :] + float(m), 0.0).sum(2)
    count = on.sum(2)
    grad = np.where(pos, g * count, 0.0) - np.einsum("ap,apn->an", g.astype(np.float64), on.astype(np.float64))
    B, C = d.shape
    chosen = np.zeros((B, C), dtype=np.int64)
    semi = np.zeros((B, C), dtype=bool)
    for a in range(B):
        nc = np.flatnonzero(neg[a])
        if nc.size == 0:
            continue
        far = nc[np.argmax(d[a, nc])]  # the first farthest
        for p in np.flatnonzero(pos[a]):
            beyond = nc[d[a, nc] > d[a, p]]
            if beyond.size:
                chosen[a, p] = beyond[np.argmin(d[a, beyond])]  # the first nearest
                semi[a, p] = True
            else:
                chosen[a, p] = far
    return L, count, grad, chosen, semi


def _distances(kind, B, dtype, rng):
    x = rng.standard_normal((B, 6))
    if kind == "ties":  # a coarse grid: many exactly equal distances (exact in float32)
        x = np.round(x * 2) / 2
        return ((x[:, None] - x[None]) ** 2).sum(-1).astype(dtype)
    return np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("regime", ["two_classes", "big_class_singletons", "pk64"])
def test_bucket_pass_matches_the_definition(monkeypatch, regime, dtype):
    # B = 150: two classes give ~74 positives per anchor, more than COMPILED_K (48)
    B = 150 if regime != "pk64" else 200
    rng = np.random.default_rng(7)
    y = make_labels(regime, B, seed=3)
    pos, neg = _masks(y)
    assert (pos.sum(1) > _numba.COMPILED_K).any()
    for kind in ("plain", "ties"):
        d = _distances(kind, B, dtype, rng)
        g = rng.standard_normal(d.shape).astype(dtype)
        for margin in (0.5, 0.0, 1e-20):
            want = _dense(d, pos, neg, margin, g)
            for compiled_k in (_numba.COMPILED_K, 0):
                L, count, grad, chosen, semi = _kernels(d, pos, neg, margin, g, compiled_k, monkeypatch)
                what = f"{kind} margin={margin} COMPILED_K={compiled_k}"
                np.testing.assert_array_equal(count, want[1], err_msg=what)
                np.testing.assert_allclose(L, want[0], rtol=TOL[dtype], atol=TOL[dtype], err_msg=what)
                np.testing.assert_allclose(grad, want[2], rtol=TOL[dtype], atol=TOL[dtype], err_msg=what)
                np.testing.assert_array_equal(chosen, want[3], err_msg=what)
                np.testing.assert_array_equal(semi, want[4], err_msg=what)
                assert L.dtype == grad.dtype == dtype and count.dtype == np.int32
            # the NumPy body gives the same (its sorted branch for these rows)
            m = np.asarray(margin, dtype=dtype)
            nL, ncount = HINGE.kernel.forward.numpy(d, pos, neg, m)
            np.testing.assert_array_equal(ncount, count)
            np.testing.assert_allclose(nL, L, rtol=TOL[dtype], atol=TOL[dtype])


def _degenerate(kind, B, dtype, rng):
    """Rows whose values defeat the buckets, or are not finite."""
    f = np.finfo(dtype)
    if kind == "equal":
        return np.full((B, B), 0.75, dtype=dtype)
    if kind == "two_values":
        return rng.choice([0.25, 3.0], size=(B, B)).astype(dtype)
    if kind == "outlier":  # one far value per row: every other one in the lowest bucket
        d = rng.random((B, B)).astype(dtype)
        d[np.arange(B), rng.integers(0, B, B)] = 1e30
        return d
    if kind == "subnormal":  # a range of a few subnormals: the bucket scale overflows
        return (rng.integers(0, 4, size=(B, B)) * f.smallest_subnormal).astype(dtype)
    if kind == "signed_zero":
        return rng.choice([0.0, -0.0, 1.0, 1.0 + f.eps], size=(B, B)).astype(dtype)
    if kind == "inf":
        d = rng.random((B, B)).astype(dtype)
        d[rng.random((B, B)) < 0.15] = np.inf
        return d
    if kind == "nan":
        d = rng.random((B, B)).astype(dtype)
        d[rng.random((B, B)) < 0.01] = np.nan
        return d
    raise AssertionError(kind)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["equal", "two_values", "outlier", "subnormal", "signed_zero", "inf", "nan"])
def test_bucket_pass_on_degenerate_rows(monkeypatch, kind, dtype):
    # the bucket pass (every row, COMPILED_K = 0) against the pass per positive (no row);
    # B = 90: 45 negatives per row, more than _CROWDED in one bucket (the outlier rows)
    B = 90
    rng = np.random.default_rng(11)
    y = make_labels("two_classes", B, seed=1)
    pos, neg = _masks(y)
    d = _degenerate(kind, B, dtype, rng)
    g = rng.standard_normal(d.shape).astype(dtype)
    for margin in (0.5, 0.0, 1e-20):
        got = _kernels(d, pos, neg, margin, g, 0, monkeypatch)
        ref = _kernels(d, pos, neg, margin, g, 10**9, monkeypatch)
        what = f"{kind} margin={margin}"
        for i, name in ((1, "count"), (3, "chosen"), (4, "semi")):
            np.testing.assert_array_equal(got[i], ref[i], err_msg=f"{what} {name}")
        # values: NaN where the pass per positive has NaN; +inf distances at a positive
        # pair are left out (the pass per positive reads Σ (τ − x) + c·(v − τ) = NaN as 0)
        at = np.isfinite(d) | np.isnan(d)
        for i, name in ((0, "L"), (2, "grad")):
            np.testing.assert_array_equal(np.isnan(got[i][at]), np.isnan(ref[i][at]), err_msg=f"{what} {name}")
            np.testing.assert_allclose(got[i][at], ref[i][at], rtol=TOL[dtype], atol=TOL[dtype],
                                       err_msg=f"{what} {name}")
        if kind in ("equal", "two_values", "outlier", "subnormal", "signed_zero"):
            want = _dense(d, pos, neg, margin, g)
            np.testing.assert_array_equal(got[1], want[1], err_msg=what)
            np.testing.assert_array_equal(got[3], want[3], err_msg=what)
            np.testing.assert_allclose(got[0], want[0], rtol=TOL[dtype], atol=TOL[dtype], err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_with_two_classes_match_the_oracle(dtype):
    # the losses through the engine, numba body, every anchor on the bucket pass
    B = 110
    y = make_labels("two_classes", B, seed=4)
    x = np.random.default_rng(4).standard_normal((B, 5))
    tol = 2e-5 if dtype == np.float32 else 1e-10
    with mining.force_body("numba"):
        ba, bi = tr.batch_all(y, x.astype(dtype), 0.5, return_info=True)
        sh, si = tr.batch_semihard(y, x.astype(dtype), 0.5, return_info=True)
    wa, wai = oracles.batch_all(y, x, 0.5, return_info=True)
    ws, wsi = oracles.batch_semihard(y, x, 0.5, return_info=True)
    assert float(ba) == pytest.approx(wa, rel=tol, abs=tol)
    assert float(sh) == pytest.approx(ws, rel=tol, abs=tol)
    if dtype == np.float64:  # float32 distances may round a term across the hinge
        assert int(bi["num_positive"]) == wai["num_positive"]
        np.testing.assert_array_equal(si["semihard_negative"], wsi["semihard_negative"])


def test_large_calls_split_rows_among_threads(monkeypatch):
    # _run_rows: the rows in contiguous slices, one thread each (here 3, uneven); the
    # same results as one call, bit for bit
    from triplet_ref.mining import _blocks

    B = 101
    rng = np.random.default_rng(5)
    y = make_labels("big_class_singletons", B, seed=2)
    pos, neg = _masks(y)
    d = _distances("plain", B, np.float32, rng)
    g = rng.standard_normal(d.shape).astype(np.float32)
    one = _kernels(d, pos, neg, 0.5, g, 3, monkeypatch)
    started = []
    real = _numba.threading.Thread
    monkeypatch.setattr(_numba.threading, "Thread", lambda *a, **k: started.append(1) or real(*a, **k))
    monkeypatch.setattr(_blocks, "THREAD_MIN_ELEMENTS", 0)
    monkeypatch.setattr(_blocks, "cpu_count", lambda: 3)
    monkeypatch.setattr(_numba, "_MIN_ROWS", 1)
    split = _kernels(d, pos, neg, 0.5, g, 3, monkeypatch)
    assert len(started) == 3 * 2  # two more threads per kernel call
    for a, b in zip(one, split):
        np.testing.assert_array_equal(a, b)
    # an error in a thread reaches the caller
    with pytest.raises(ValueError, match="boom"):
        _numba._run_rows(lambda *a: (_ for _ in ()).throw(ValueError("boom")), d, pos)
