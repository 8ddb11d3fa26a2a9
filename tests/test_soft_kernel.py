"""The soft batch-all kernel (``BATCH_ALL_SOFT``'s NumPy kernel) against float64 loops.

The NumPy body computes each term as ``log1p(e^{v−c}·e^{c−d(a,n)})`` with a per-row shift
``c`` and takes the direct form ``max(t, 0) + log1p(e^{−|t|})`` on rows whose range is too
wide (or not finite) for the factors: both branches, alone and mixed in one call, at huge
and tiny distances and margins, with ties, non-finite distances, rows ordered by their
number of positives, rows without negatives, reference sets and sub-block boundaries —
values, margin slopes, counts and gradients, float32 and float64, under both bodies
(``force_body``).  The reference is a plain float64 loop over the kernel's own inputs.

Tolerance: a term's argument ``t`` is off by about ``eps·M`` (``M`` the largest magnitude
in the row, margin included: the rounding of ``v = d(a,p) + m``, of ``t`` or of the
factors' arguments), so a softplus or sigmoid term by ``eps·M·σ(t)``; sums add their
rounding.  Where every term is tiny the bound is relative, so a kernel that flushed
``e^t`` to 0 would fail.
"""
from __future__ import annotations

import numpy as np
import pytest

from triplet_ref import mining, oracles
import triplet_ref as tr
from triplet_ref.mining import batch_all as mba
from triplet_ref.mining.batch_all import SOFT
from triplet_ref.testing.regimes import make_labels


@pytest.fixture(params=["numpy", "numba"])
def body(request):
    if request.param == "numba" and not mining.numba_available():
        pytest.skip("numba is not installed (pip install 'triplet_ref[numba]')")
    with mining.force_body(request.param):
        yield request.param


def _sigmoid(t):
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(-np.abs(t))
        return np.where(t >= 0, 1 / (1 + e), e / (1 + e))


def _reference(d, pos, neg, m, g):
    """float64 loops: ``(L, count, slope, grad)`` and the error bounds of L/slope and grad."""
    dt = d.dtype
    eps, tiny = float(np.finfo(dt).eps), float(np.finfo(dt).tiny)
    d64, m64, g64 = d.astype(np.float64), float(dt.type(m)), g.astype(np.float64)
    R, C = d.shape
    L, slope, grad = (np.zeros((R, C)) for _ in range(3))
    count = np.zeros((R, C), dtype=np.int32)
    tol, gtol = np.zeros((R, C)), np.zeros((R, C))
    for a in range(R):
        ps, ns = np.flatnonzero(pos[a]), np.flatnonzero(neg[a])
        if ps.size == 0:
            continue
        v = d64[a, ps] + m64
        finite = d64[a][np.isfinite(d64[a])]
        M = max(np.max(np.abs(finite), initial=0.0), np.max(np.abs(v[np.isfinite(v)]), initial=0.0)) + 1
        t = v[:, None] - d64[a, ns][None, :]  # (positives, negatives)
        with np.errstate(invalid="ignore"):  # NaN distances: NaN terms
            sp, sg = np.logaddexp(0.0, t), _sigmoid(t)
        L[a, ps], slope[a, ps] = sp.sum(1), sg.sum(1)
        count[a, ps] = ns.size
        # the argument's error, times the derivative, plus the rounding of the sums
        # (relative) and a few subnormal steps per term
        tol[a, ps] = 16 * eps * M * sg.sum(1) + 8 * eps * sp.sum(1) + 4 * tiny * ns.size
        w = g64[a, ps]
        grad[a, ps] = w * slope[a, ps]
        grad[a, ns] = -(w[:, None] * sg).sum(0)
        gtol[a, ns] = (np.abs(w)[:, None] * (16 * eps * M * sg + 8 * eps * sg)).sum(0) + 4 * tiny * ps.size
        gtol[a, ps] = np.abs(w) * tol[a, ps] + 2 * eps * np.abs(grad[a, ps])
    return L, count, slope, grad, tol, gtol


def _close(got, want, tol, what):
    got = got.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)
    np.testing.assert_array_equal(np.isinf(got) & (got > 0), np.isinf(want) & (want > 0), err_msg=what)
    ok = np.isfinite(want)
    with np.errstate(invalid="ignore"):
        bad = ok & ~(np.abs(got - want) <= tol)
    assert not bad.any(), (f"{what}: got {got[bad][:4]} want {want[bad][:4]} (tol {tol[bad][:4]}) "
                           f"at {np.argwhere(bad)[:4].tolist()}")


def _check(d, pos, neg, m, seed=0):
    """The kernel (the selected body) against the reference: forward and backward."""
    g = np.random.default_rng(seed).standard_normal(d.shape).astype(d.dtype)
    L, count, slope, grad, tol, gtol = _reference(d, pos, neg, m, g)
    k = SOFT.kernel
    mm = np.asarray(m, dtype=d.dtype)
    out = k.forward(d, pos, neg, mm)
    assert [o.dtype for o in out] == [d.dtype, np.dtype(np.int32), d.dtype]
    _close(out[0], L, tol, "L")
    np.testing.assert_array_equal(out[1], count, err_msg="count")
    _close(out[2], slope, tol, "slope")
    gd = k.backward(d, pos, neg, mm, g, out[2])
    assert gd.dtype == d.dtype
    _close(gd, grad, gtol, "grad")
    return out


def _masks(y, yr=None):
    yr = y if yr is None else yr
    pos = (y[:, None] == yr[None, :]) & ~np.eye(y.size, yr.size, dtype=bool)
    return pos, y[:, None] != yr[None, :]


def _direct_rows(d, pos, neg, m):
    """The rows (block-local, in the kernel's order) the NumPy body takes the direct form on."""
    return mba._SoftRows(d, pos, neg, d.dtype.type(m)).direct


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_factored_and_direct_rows_in_one_call(body, dtype):
    """Unit-scale rows (factored) and rows whose range is wider than the factors allow
    (direct), in one batch, with margins 0, 1 and one wider than float32's span."""
    rng = np.random.default_rng(1)
    B = 24
    y = make_labels("pk4", B, seed=1)
    pos, neg = _masks(y)
    d = rng.random((B, B)) * 2
    span = mba._soft_span(dtype)
    d[::5] *= 1.5 * span  # every fifth row: a range of ~3 spans
    d = ((d + d.T) / 2).astype(dtype)
    np.fill_diagonal(d, 0)
    direct = _direct_rows(d, pos, neg, 1.0)
    assert 0 < direct.size < B  # both branches run
    for m in (0.0, 1.0, 100.0):
        _check(d, pos, neg, m)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_row_direct_matches(body, dtype, monkeypatch):
    """The direct form alone (every row too wide) gives the same values."""
    monkeypatch.setattr(mba, "_soft_span", lambda dt: -1.0)
    rng = np.random.default_rng(2)
    y = make_labels("random_singletons", 20, seed=2)
    pos, neg = _masks(y)
    d = (rng.random((20, 20)) * 3).astype(dtype)
    assert _direct_rows(d, pos, neg, 0.5).size == np.count_nonzero(pos.any(1))
    _check(d, pos, neg, 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["easy", "hard", "tiny", "edge-below", "edge-above", "ties"])
def test_extreme_values(body, dtype, case):
    """Every term tiny (t ≈ −50: a relative check), every term large (t ≈ 70), distances
    and margins near 0 (t ≈ 0), a row range just below and just above the span, ties."""
    B = 16
    y = make_labels("pk4", B, seed=3)
    pos, neg = _masks(y)
    rng = np.random.default_rng(3)
    u = rng.random((B, B))
    span = mba._soft_span(dtype)
    m = 0.0
    if case == "easy":  # positives ~0.5, negatives ~50: softplus ≈ e^{−50} ≈ 2e-22
        d = np.where(pos, 0.5 + 0.1 * u, 50 + u)
    elif case == "hard":  # positives ~70, negatives ~1: softplus ≈ t
        d = np.where(pos, 70 + u, 1 + u)
    elif case == "tiny":  # distances ~1e-30, t ≈ 0: softplus ≈ log 2
        d, m = 1e-30 * u, 1e-35
    else:  # the widest row: 0 on the diagonal to the farthest negative
        d = np.where(neg, 0.25 * span * (1 + u), u)
        far = span * (0.999 if case == "edge-below" else 1.001)
        d[np.arange(B), np.argmax(np.where(neg, u, -1), axis=1)] = far
        if case == "ties":
            d = np.round(np.where(neg, 4 * u, 2 * u)) / 2  # many exactly equal distances
            m = 0.5
    d = d.astype(dtype)
    np.fill_diagonal(d, 0)
    direct = _direct_rows(d, pos, neg, m).size
    if case == "edge-below" or case in ("easy", "hard", "tiny", "ties"):
        assert direct == 0, case  # the factored form runs
    else:
        assert direct == B, case
    L = _check(d, pos, neg, m)[0]
    if case == "easy":  # relative accuracy of tiny values (not flushed to 0)
        assert np.all(L[pos] > 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_distances(body, dtype):
    """NaN in a negative: that anchor's sums (and its gradient) are NaN, the other rows
    exact; NaN where the anchor has neither a positive nor a negative: ignored; a
    negative at +inf adds 0; a positive at +inf: L = +inf."""
    B = 12
    y = make_labels("pk4", B, seed=4)
    yr = np.concatenate([y, [-1]])  # column B: a reference no anchor shares a label with... nor
    pos, neg = _masks(y, yr)
    neg[:, B] = False  # ...is a negative of: neither, like the anchor itself
    d = (np.random.default_rng(4).random((B, B + 1)) * 2).astype(dtype)
    n0 = np.flatnonzero(neg[0])[0]
    d[0, n0] = np.nan  # row 0: NaN negative
    d[1, B] = np.nan  # row 1: NaN off its terms
    d[2, np.flatnonzero(neg[2])[0]] = np.inf  # row 2: a negative at +inf
    d[3, np.flatnonzero(pos[3])[0]] = np.inf  # row 3: a positive at +inf
    out = _check(d, pos, neg, 1.0)
    assert np.isnan(out[0][0, pos[0]]).all() and np.isfinite(out[0][1:3][pos[1:3]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sub", [None, 1, 40])
def test_irregular_rows_reference_sets_and_sub_blocks(body, dtype, sub, monkeypatch):
    """Rows with 0…many positives (ordered by their count), rows without a negative, a
    reference set (d of shape (B, R)), and sub-blocks of 1 row or of a few rows that end
    inside a slot's rows."""
    if sub is not None:
        monkeypatch.setattr(mba, "_SOFT_SUB_ELEMENTS", sub * 37)
    rng = np.random.default_rng(5)
    y = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 4, 5, 5, 6, 6, 6, 7])
    rng.shuffle(y)
    yr = np.concatenate([y, rng.integers(0, 9, size=19)])  # R = 37 columns
    pos, neg = _masks(y, yr)
    neg[y == 7] = False  # anchors with positives (in the references) but no negative
    d = (rng.random((y.size, yr.size)) * 3).astype(dtype)
    assert len(set(np.count_nonzero(pos, 1))) > 3
    for m in (0.0, 0.7):
        _check(d, pos, neg, m)


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_at_large_scale_matches_the_oracle(body, dtype):
    """The loss with embeddings far apart (rows wider than float32's span) and close
    (factored), against the float64 oracle: values and the sum's gradient by finite
    differences of the oracle."""
    rng = np.random.default_rng(6)
    B = 16
    y = make_labels("pk4", B, seed=6)
    x = rng.standard_normal((B, 3)) * np.where(np.arange(B) % 4 == 0, 40.0, 1.0)[:, None]
    xd = x.astype(dtype)
    want = oracles.batch_all(y, xd.astype(np.float64), 1.0, soft=True, reduction="none")
    got = np.asarray(tr.batch_all(y, xd, 1.0, soft=True, reduction="none"), dtype=np.float64)
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_blocks_without_a_term(body, dtype, monkeypatch):
    """Row blocks of two rows, the first of which holds no positive pair (two singletons)."""
    from triplet_ref.mining import _blocks

    monkeypatch.setattr(_blocks, "_BLOCK_ELEMENTS", 2 * 8)
    y = np.array([0, 1, 2, 2, 3, 3, 3, 4])
    pos, neg = _masks(y)
    d = (np.random.default_rng(7).random((8, 8)) * 2).astype(dtype)
    out = _check(d, pos, neg, 0.3)
    assert not out[0][:2].any() and out[0][2:7][pos[2:7]].all()


# --- the portable soft step under jax.jit (traced labels: a loop over the positive slots) ----

def _jit_soft_sum(jax):
    def f(z, lab):
        with mining.force("portable", SOFT):
            return tr.batch_all(lab, z, 0.7, soft=True, reduction="sum")
    return f


def test_portable_soft_slots_under_jax_jit():
    """Traced labels: one pass per positive slot (``lax.map`` over ``lax.cond``, the slots
    past the largest count skipped), in one compiled function: value, gradient (along two
    directions, against central differences of the float64 oracle) and a Hessian-vector
    product (translations leave the loss unchanged: H·1 = 0, and the slope of the value
    along 1 is 0)."""
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(8)
    y = make_labels("random_singletons", 12, seed=8)
    x = rng.standard_normal((12, 3))
    f = _jit_soft_sum(jax)
    X, Y = jax.numpy.asarray(x), jax.numpy.asarray(y)
    both = jax.jit(lambda z: jax.jvp(lambda w: jax.value_and_grad(f)(w, Y), (z,), (jax.numpy.ones_like(z),)))
    (value, grad), (dvalue, hv) = both(X)
    assert float(value) == pytest.approx(oracles.batch_all(y, x, 0.7, soft=True, reduction="sum"), rel=1e-12)
    h = 1e-6
    for k in range(2):
        u = np.random.default_rng(k).standard_normal(x.shape)
        fd = (oracles.batch_all(y, x + h * u, 0.7, soft=True, reduction="sum")
              - oracles.batch_all(y, x - h * u, 0.7, soft=True, reduction="sum")) / (2 * h)
        assert float(np.sum(np.asarray(grad) * u)) == pytest.approx(fd, rel=1e-6, abs=1e-8)
    scale = float(np.abs(np.asarray(grad)).max())
    assert abs(float(dvalue)) <= 1e-9 * scale
    np.testing.assert_allclose(np.asarray(hv), 0.0, atol=1e-9 * scale)
    assert scale > 1e-3  # a gradient that is not trivially 0


def test_portable_soft_under_jax_jit_memory_is_quadratic():
    """XLA's temporaries for the compiled loss with its gradient (B = 64, float64): O(B²)
    (measured 0.5 MiB), below the B³ elements (2 MiB) of even one (B, B, B) block."""
    jax = pytest.importorskip("jax")
    B = 64
    y = jax.numpy.asarray(make_labels("pk4", B, seed=0))
    x = jax.numpy.asarray(np.random.default_rng(0).standard_normal((B, 4)))
    mem = jax.jit(jax.value_and_grad(_jit_soft_sum(jax))).lower(x, y).compile().memory_analysis()
    if mem is None:
        pytest.skip("this jaxlib reports no memory analysis")
    assert mem.temp_size_in_bytes <= B**3 * 8 // 2, mem.temp_size_in_bytes / 2**10
