"""pairwise_distances against the float64 oracle, on every backend, dtype and metric.

Tolerances: the Gram identity ``d² = |x_i|² + |x_j|² − 2<x_i, x_j>`` (on translated rows)
has an absolute rounding error of about ``eps·s²``, ``s`` the data's diameter
``max |x_i − x_j|`` (it bounds the rows' norms after the translation the code applies):
at most 22·eps·s² in ``python tests/measure_tolerance.py`` (docs/semantics.md,
"Tolerances").  The tests allow ``E = 64·eps·s²`` on ``d²``; for the euclidean metric that
is ``sqrt(d² + E) − d`` on ``d`` (``8·sqrt(eps)·s`` at d = 0, ``E / 2d`` far from it).
Cosine is computed on unit rows: ``64·eps`` absolute.
"""
from __future__ import annotations

import math
import zlib

import array_api_compat
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import triplet_ref as tr
from triplet_ref import backends, oracles

METRICS = ("euclidean", "sqeuclidean", "cosine")
EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps)}


# ------------------------------------------------------------------------------ helpers
def spread(x64: np.ndarray) -> float:
    """The data's diameter, max_ij |x_i - x_j| (translation invariant; it bounds the norm of
    the rows after any shift by a row or by the mean, which is what the Gram trick sees)."""
    return float(oracles.pairwise_distances(x64).max())


def allowed_error(ref: np.ndarray, x64: np.ndarray, metric: str, dtype: str) -> np.ndarray:
    """Per-entry error bound (see the module docstring) for a result of ``dtype``."""
    eps = EPS[dtype]
    if metric == "cosine":
        return np.full_like(ref, 64 * eps)
    E = 64 * eps * max(spread(x64), 1e-300) ** 2
    if metric == "sqeuclidean":
        return np.full_like(ref, E) + 16 * eps * ref
    return np.sqrt(ref * ref + E) - ref + 16 * eps * ref


def assert_matches_oracle(got: np.ndarray, x64: np.ndarray, metric: str, dtype: str) -> None:
    ref = oracles.pairwise_distances(x64, metric=metric)
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == ref.shape
    bound = allowed_error(ref, x64, metric, dtype)
    err = np.abs(got - ref)
    bad = ~(err <= bound)  # NaN counts as bad
    assert not bad.any(), (
        f"{metric}/{dtype}: {bad.sum()} entries off; worst err {np.nanmax(err):.3g} "
        f"at {np.unravel_index(np.argmax(np.where(bad, err, -1)), err.shape)}, "
        f"bound there {bound[bad].min():.3g}")


def assert_exact_properties(d: np.ndarray) -> None:
    """diagonal exactly 0, d >= 0, exactly symmetric."""
    assert np.all(np.diagonal(d) == 0), np.diagonal(d)
    assert np.all(d >= 0), d.min()
    np.testing.assert_array_equal(d, d.T)


FRAMEWORK_MODULES = {"numpy": ("numpy",), "torch": ("torch",), "jax": ("jax", "jaxlib"),
                     "cupy": ("cupy",), "array_api_strict": ("array_api_strict",)}


def assert_same_framework(d, case) -> None:
    """``d`` is an array of the case's framework (judged by its type's module)."""
    top = type(d).__module__.split(".")[0]
    assert top in FRAMEWORK_MODULES[case.name], f"{case.label}: got a {type(d)}"


def run(case, x_np: np.ndarray, metric: str, dtype: str):
    """Call pairwise_distances on this backend; check kind, dtype, device, exact properties
    and the oracle.  Returns the result as NumPy."""
    x = case.asarray(x_np, dtype=dtype)
    d = tr.pairwise_distances(x, metric=metric)
    assert_same_framework(d, case)
    assert d.dtype == x.dtype
    assert array_api_compat.device(d) == array_api_compat.device(x)
    assert tuple(d.shape) == (x_np.shape[0], x_np.shape[0])
    dn = case.to_numpy(d)
    assert_exact_properties(dn)
    x64 = case.to_numpy(x).astype(np.float64)  # the values actually passed, exactly
    assert_matches_oracle(dn, x64, metric, dtype)
    return dn


# Shapes are few on purpose: JAX compiles every operation anew for each shape and dtype
# (about 1 s per distance call, 4 s per gradient), so the tests reuse (8, 5), (6, 4) and the
# B = 1, B = 2 and D = 1 edge shapes.
def adversarial(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return rng.standard_normal((8, 5))
    if kind == "duplicates":  # rows 0 = 1 = 5, 2 = 7
        x = rng.standard_normal((8, 5))
        x[1] = x[0]
        x[5] = x[0]
        x[7] = x[2]
        return x
    if kind == "zero_rows":
        x = rng.standard_normal((8, 5))
        x[0] = 0
        x[3] = 0
        return x
    if kind == "all_equal":
        return np.tile(rng.standard_normal((1, 5)), (8, 1))
    if kind == "offset_1e3":  # a common translation must not hurt (the code centres rows)
        return 1e3 + rng.standard_normal((8, 5))
    if kind == "offset_1e3_neg":  # and per-column offsets / scales
        return np.array([-1e3, 1e3, 0, 5e2, -2e3]) + rng.standard_normal((8, 5)) * np.array([1, 1e-2, 1, 3, 1])
    if kind == "B1":
        return rng.standard_normal((1, 5))
    if kind == "B2":
        return rng.standard_normal((2, 5))
    if kind == "D1":
        return rng.standard_normal((8, 1))
    if kind == "large_scale":
        return 1e4 * rng.standard_normal((8, 5))
    if kind == "small_scale":
        return 1e-4 * rng.standard_normal((8, 5))
    raise AssertionError(kind)


KINDS = ("random", "duplicates", "zero_rows", "all_equal", "offset_1e3", "offset_1e3_neg",
         "B1", "B2", "D1", "large_scale", "small_scale")


# ------------------------------------------------------------------------------ values
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_oracle(xp, dtype, metric, kind):
    rng = np.random.default_rng(zlib.crc32(f"{kind}-{metric}".encode()))
    run(xp, adversarial(kind, rng), metric, dtype)


def test_hand_computed_values(xp, dtype):
    # points on a line: d = |x_i - x_j|, d² = (x_i - x_j)² (exact in binary for these values)
    pts = np.array([0.0, 3.0, 4.0, -1.0, 10.0, 2.5, 7.0, -6.0])
    x = pts[:, None]
    for metric, expect in [("euclidean", np.abs(pts[:, None] - pts[None, :])),
                           ("sqeuclidean", (pts[:, None] - pts[None, :]) ** 2)]:
        d = run(xp, x, metric, dtype)
        np.testing.assert_allclose(d, expect, rtol=16 * EPS[dtype], atol=64 * EPS[dtype] * 16 ** 2)
    # axis-aligned rows: cos is +1 (same axis and sign), -1 (opposite), 0 (other axis or a zero row)
    axis = [0, 1, 0, None, 2, 1, 3, 0]
    coef = [1.0, 2.0, -3.0, 0.0, 0.5, -1.0, 1.0, 4.0]
    y = np.zeros((8, 5))
    for i, (a, c) in enumerate(zip(axis, coef)):
        if a is not None:
            y[i, a] = c
    expect = np.ones((8, 8))
    for i in range(8):
        for j in range(8):
            if i == j:
                expect[i, j] = 0.0
            elif axis[i] is not None and axis[i] == axis[j]:
                expect[i, j] = 1.0 - np.sign(coef[i]) * np.sign(coef[j])
    d = run(xp, y, "cosine", dtype)
    np.testing.assert_allclose(d, expect, rtol=0, atol=4 * EPS[dtype])


@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_and_zero_rows_are_exactly_zero(xp, dtype, metric):
    """Equal rows are at distance exactly 0 for the euclidean metrics (not a Gram rounding
    residue ~sqrt(eps)·|x|); for cosine within a few eps (1 − cos of two equal unit rows);
    two zero rows are at cosine distance 1 by definition."""
    rng = np.random.default_rng(3)
    x = adversarial("duplicates", rng) * 7.0 + 3.0
    d = run(xp, x, metric, dtype)
    for i, j in [(0, 1), (0, 5), (1, 5), (2, 7)]:
        if metric == "cosine":
            assert d[i, j] <= 4 * EPS[dtype], (i, j, d[i, j])
        else:
            assert d[i, j] == 0 and d[j, i] == 0, (i, j, d[i, j])
    z = adversarial("zero_rows", rng)
    dz = run(xp, z, metric, dtype)
    assert dz[0, 3] == (1.0 if metric == "cosine" else 0.0)


def test_default_metric_is_euclidean(xp):
    x = np.random.default_rng(5).standard_normal((8, 5))
    a = xp.to_numpy(tr.pairwise_distances(xp.asarray(x)))
    b = xp.to_numpy(tr.pairwise_distances(xp.asarray(x), metric="euclidean"))
    np.testing.assert_array_equal(a, b)


def test_list_input_is_numpy():
    d = tr.pairwise_distances([[0.0, 0.0], [3.0, 4.0]])
    assert isinstance(d, np.ndarray) and d.dtype == np.float64
    np.testing.assert_array_equal(d, [[0, 5], [5, 0]])


LOW = [("float16", 2.0 ** -11), ("bfloat16", 2.0 ** -8)]  # unit round-off of the result


def _supports(case, dtype):
    xp = case.xp
    return hasattr(xp, dtype) and not (case.name == "array_api_strict")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("low,u", LOW)
def test_low_precision_computed_in_float32(xp, metric, low, u):
    if not _supports(xp, low):
        pytest.skip(f"{xp.label} has no {low}")
    rng = np.random.default_rng(11)
    x_np = rng.standard_normal((8, 5))
    x_np[2] = x_np[4]
    x = xp.asarray(x_np, dtype=low)
    d = tr.pairwise_distances(x, metric=metric)
    assert d.dtype == x.dtype
    assert_same_framework(d, xp)
    assert array_api_compat.device(d) == array_api_compat.device(x)
    vals = xp.to_numpy(x).astype(np.float64)  # the low-precision values, exactly
    # computed in float32, then cast: equal to the float32 result of the same values, cast
    x32 = xp.xp.astype(x, xp.xp.float32)
    d32 = tr.pairwise_distances(x32, metric=metric)
    np.testing.assert_array_equal(xp.to_numpy(d).astype(np.float64),
                                  xp.to_numpy(xp.xp.astype(d32, x.dtype)).astype(np.float64))
    dn = xp.to_numpy(d).astype(np.float64)
    assert_exact_properties(dn)
    assert dn[2, 4] == 0 or metric == "cosine" and dn[2, 4] <= 4 * EPS["float32"]
    ref = oracles.pairwise_distances(vals, metric=metric)
    # one rounding to the low dtype (relative u) on top of the float32 error
    np.testing.assert_allclose(dn, ref, rtol=u * 1.01, atol=1e-5 * max(1.0, spread(vals)))


# ------------------------------------------------------------------------------ hypothesis
_value = st.floats(-100, 100, width=32, allow_subnormal=False).map(
    lambda v: v if abs(v) >= 1e-3 else 0.0)  # embeddings: zero or not tiny (see below)


@st.composite
def embeddings(draw):
    B = draw(st.sampled_from([1, 2, 3, 8]))  # few shapes: see adversarial()
    D = draw(st.sampled_from([1, 3, 5]))
    rows = [draw(st.lists(_value, min_size=D, max_size=D)) for _ in range(B)]
    # copy some rows onto others: duplicates are the adversarial case of the Gram trick
    for _ in range(draw(st.integers(0, 2))):
        i, j = draw(st.integers(0, B - 1)), draw(st.integers(0, B - 1))
        rows[j] = list(rows[i])
    offset = draw(st.sampled_from([0.0, 0.0, 1e3, -250.0]))
    return np.asarray(rows, dtype=np.float64) + offset


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(x=embeddings(), metric=st.sampled_from(METRICS))
def test_hypothesis_matches_oracle(xp, dtype, x, metric):
    # (|x| < 1e-3 is mapped to 0: a float32 row of norm < 1e-19 squares to 0 and is then a
    # zero row for cosine, while the oracle's exact norm is not 0 — documented, not a bug.)
    run(xp, x, metric, dtype)


# ------------------------------------------------------------------------------ gradients
def _analytic_grad(x: np.ndarray, W: np.ndarray, metric: str) -> np.ndarray:
    """d/dx of sum_ij W_ij d(x_i, x_j), float64, from the textbook derivatives."""
    B = x.shape[0]
    g = np.zeros_like(x)
    for i in range(B):
        for j in range(B):
            if i == j:
                continue
            w = W[i, j] + W[j, i]  # d_ij = d_ji: x_i gets both terms
            diff = x[i] - x[j]
            if metric == "sqeuclidean":
                g[i] += w * 2 * diff
            elif metric == "euclidean":
                n = math.sqrt(float(diff @ diff))
                if n > 0:
                    g[i] += w * diff / n
            else:
                ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
                if ni > 0 and nj > 0:
                    ui, uj = x[i] / ni, x[j] / nj
                    g[i] += w * -(uj - (ui @ uj) * ui) / ni
    return g


def _fd_grad(x: np.ndarray, W: np.ndarray, metric: str, h: float = 1e-6) -> np.ndarray:
    """Central differences of the float64 oracle."""
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += h
        xm[idx] -= h
        fp = float((W * oracles.pairwise_distances(xp_, metric=metric)).sum())
        fm = float((W * oracles.pairwise_distances(xm, metric=metric)).sum())
        g[idx] = (fp - fm) / (2 * h)
    return g


@pytest.mark.parametrize("metric", METRICS)
def test_analytic_gradient_helper_matches_oracle_finite_differences(metric):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3))
    W = rng.uniform(0.5, 1.5, (5, 5))
    np.testing.assert_allclose(_analytic_grad(x, W, metric), _fd_grad(x, W, metric),
                               rtol=1e-6, atol=1e-7)


def _weighted_sum(case, W, metric):
    Wb = case.asarray(W)

    def f(x):
        d = tr.pairwise_distances(x, metric=metric)
        return case.xp.sum(d * case.xp.astype(Wb, d.dtype))

    return f


@pytest.mark.grad
@pytest.mark.parametrize("metric", METRICS)
def test_gradient_matches_analytic(xp, dtype, metric):
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal((6, 4))
    W = rng.uniform(0.5, 1.5, (6, 6))
    x = xp.asarray(x_np, dtype=dtype)
    val, g = xp.backend.value_and_grad(_weighted_sum(xp, W, metric), x)
    x64 = xp.to_numpy(x).astype(np.float64)
    np.testing.assert_allclose(val, (W * oracles.pairwise_distances(x64, metric=metric)).sum(),
                               rtol=1e-5 if dtype == "float32" else 1e-12)
    expect = _analytic_grad(x64, W, metric)
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == "float32" else dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(g, expect, **tol)


@pytest.mark.grad
@pytest.mark.parametrize("metric", METRICS)
def test_gradient_finite_with_duplicate_and_zero_rows(xp, dtype, metric):
    rng = np.random.default_rng(2)
    x_np = rng.standard_normal((6, 4))
    x_np[1] = x_np[0]
    x_np[4] = 0
    x_np[5] = 0
    W = rng.uniform(0.5, 1.5, (6, 6))
    x = xp.asarray(x_np, dtype=dtype)
    val, g = xp.backend.value_and_grad(_weighted_sum(xp, W, metric), x)
    assert np.isfinite(val) and np.all(np.isfinite(g)), g
    # and equal to the analytic gradient (whose subgradient at d = 0 is 0 for euclidean)
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == "float32" else dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(g, _analytic_grad(xp.to_numpy(x).astype(np.float64), W, metric), **tol)


@pytest.mark.grad
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_gradient_exactly_zero_at_zero_distance(xp, dtype, metric):
    rng = np.random.default_rng(4)
    x_np = rng.standard_normal((6, 4)) * 3 + 1
    x_np[1] = x_np[0]
    x = xp.asarray(x_np, dtype=dtype)
    # d[0, 1] of two equal rows: value 0, gradient exactly 0
    val, g = xp.backend.value_and_grad(lambda z: tr.pairwise_distances(z, metric=metric)[0, 1], x)
    assert val == 0
    np.testing.assert_array_equal(g, np.zeros_like(g))
    # the diagonal: d[i, i] = 0 with gradient exactly 0
    val, g = xp.backend.value_and_grad(
        lambda z: xp.xp.sum(xp.xp.linalg.diagonal(tr.pairwise_distances(z, metric=metric))), x)
    assert val == 0
    np.testing.assert_array_equal(g, np.zeros_like(g))
    # sum(d) for a batch of identical rows: all 0
    same = xp.asarray(np.tile(x_np[:1], (6, 1)), dtype=dtype)
    val, g = xp.backend.value_and_grad(lambda z: xp.xp.sum(tr.pairwise_distances(z, metric=metric)), same)
    assert val == 0
    np.testing.assert_array_equal(g, np.zeros_like(g))


@pytest.mark.grad
def test_cosine_gradient_of_zero_row_is_finite_and_zero(xp, dtype):
    # a zero row has distance 1 to everything, whatever direction it moves in: the
    # (sub)gradient the code uses there is 0
    x_np = np.random.default_rng(8).standard_normal((6, 4))
    x_np[0] = 0
    x = xp.asarray(x_np, dtype=dtype)
    val, g = xp.backend.value_and_grad(lambda z: xp.xp.sum(tr.pairwise_distances(z, metric="cosine")[0, :]), x)
    assert val == 5.0
    np.testing.assert_array_equal(g[0], np.zeros(4))
    assert np.all(np.isfinite(g))


@pytest.mark.grad
@pytest.mark.parametrize("metric", METRICS)
def test_torch_and_jax_gradients_agree(metric):
    if not (backends.is_installed("torch") and backends.is_installed("jax")):
        pytest.skip("needs torch and jax")
    rng = np.random.default_rng(6)
    x_np = rng.standard_normal((6, 4))
    x_np[2] = x_np[3]
    x_np[5] = 0
    W = rng.uniform(0.5, 1.5, (6, 6))
    out = []
    for name in ("torch", "jax"):
        be = backends.get_backend(name)
        from conftest import Case

        case = Case(be, None, name)
        out.append(be.value_and_grad(_weighted_sum(case, W, metric), case.asarray(x_np, dtype="float64")))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-12)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------ compilers
@pytest.mark.jit
def test_compiled_equals_eager(xp):
    """jax.jit / torch.compile(fullgraph=True) of all three metrics in one compiled function."""
    rng = np.random.default_rng(7)
    x_np = rng.standard_normal((6, 4)) + 10.0
    x_np[3] = x_np[1]
    x_np[5] = 0
    x = xp.asarray(x_np, dtype="float64")

    def f(z):
        return tuple(tr.pairwise_distances(z, metric=m) for m in METRICS)

    compiled = xp.backend.jit(f)(x)
    eager = f(x)
    for m, c, e in zip(METRICS, compiled, eager):
        cn, en = xp.to_numpy(c), xp.to_numpy(e)
        assert c.dtype == e.dtype
        assert_exact_properties(cn)
        assert cn[1, 3] == 0 or m == "cosine" and cn[1, 3] < 1e-15
        np.testing.assert_allclose(cn, en, rtol=1e-12, atol=1e-12, err_msg=m)
        assert_matches_oracle(cn, x_np, m, "float64")


# ------------------------------------------------------------------ close pairs (issue 9.4)
# Gram-formula distances lose all relative accuracy for pairs much closer than their norm;
# the close pairs are recomputed from the coordinates, so every pair is accurate.
CLOSE_DELTAS = (1e-2, 1e-3, 1e-4)


def close_batch(seed: int = 0, B: int = 24, D: int = 8):
    """L2-normalised float32 rows in classes of 4 whose members are 1e-2, 1e-3 or 1e-4
    apart (by class), and their labels.  Returned as the float32 values, in float64."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(B // 4), 4)
    c = rng.standard_normal((B // 4, D))
    delta = np.array([CLOSE_DELTAS[k % 3] for k in range(B // 4)])[labels]
    x = c[labels] / np.linalg.norm(c[labels], axis=1, keepdims=True)
    x = x + delta[:, None] * rng.standard_normal((B, D)) / np.sqrt(D)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32).astype(np.float64), labels


def assert_relative(d: np.ndarray, x64: np.ndarray, metric: str, rtol: float = 1e-4) -> None:
    """Every off-diagonal entry within ``rtol`` relative of the float64 oracle."""
    ref = oracles.pairwise_distances(x64, metric=metric)
    off = ~np.eye(len(ref), dtype=bool)
    rel = np.abs(np.asarray(d, dtype=np.float64) - ref)[off] / ref[off]
    assert rel.max() <= rtol, (metric, float(rel.max()))


@pytest.mark.parametrize("metric", METRICS)
def test_close_pairs_float32_relative_accuracy(xp, metric):
    x64, _ = close_batch()
    d = tr.pairwise_distances(xp.asarray(x64, dtype="float32"), metric=metric)
    assert_relative(xp.to_numpy(d), x64, metric)


@pytest.mark.jit
def test_close_pairs_float32_relative_accuracy_compiled(xp):
    x64, _ = close_batch()

    def f(z):
        return tuple(tr.pairwise_distances(z, metric=m) for m in METRICS)

    for m, d in zip(METRICS, xp.backend.jit(f)(xp.asarray(x64, dtype="float32"))):
        assert_relative(xp.to_numpy(d), x64, m)


LOSS_MARGINS = {"euclidean": 1.5, "sqeuclidean": 2.5, "cosine": 1.2}


@pytest.mark.parametrize("metric", METRICS)
def test_close_pairs_float32_losses(xp, metric):
    """Every loss of the close batch in float32 agrees with the float64 oracle to 1e-4."""
    x64, y = close_batch()
    x = xp.asarray(x64, dtype="float32")
    m = LOSS_MARGINS[metric]
    cases = [("batch_all", {"metric": metric}), ("batch_hard", {"metric": metric}),
             ("batch_hard", {"metric": metric, "soft": True}), ("batch_semihard", {"metric": metric})]
    if metric == "euclidean":
        cases.append(("batch_contrastive", {}))  # always euclidean
    for name, kw in cases:
        got = float(np.asarray(xp.to_numpy(getattr(tr, name)(xp.asarray(y), x, m, **kw))))
        want = float(getattr(oracles, name)(y, x64, m, **kw))
        assert got == pytest.approx(want, rel=1e-4, abs=1e-7), (name, kw)


def test_close_pairs_dense_branch(xp, dtype):
    """Almost every pair close (a tight cluster far from the first row, the row every
    distance is shifted by): more close pairs than the sparse budget of the static-shape
    (JAX) version, whole blocks in the portable one; duplicates inside the cluster."""
    rng = np.random.default_rng(12)
    x = np.zeros((40, 8))
    x[0] = 1.0
    x[1:] = 1e-3 * rng.standard_normal((39, 8))
    x[7] = x[5]
    x[30] = x[5]
    x = xp.to_numpy(xp.asarray(x, dtype=dtype)).astype(np.float64)
    for metric in ("euclidean", "sqeuclidean"):
        d = run(xp, x, metric, dtype)
        ref = oracles.pairwise_distances(x, metric=metric)
        off = ~np.eye(40, dtype=bool)
        dup = np.zeros((40, 40), dtype=bool)
        for i in (5, 7, 30):
            for j in (5, 7, 30):
                dup[i, j] = True
        ok = off & ~dup
        rel = np.abs(d - ref)[ok] / ref[ok]
        # float64: pairs left to the Gram formula are within 0.08·sqrt(eps) relative on d²
        assert rel.max() <= (1e-4 if dtype == "float32" else 1e-9), (metric, rel.max())
        assert np.all(d[dup] == 0)
        np.testing.assert_array_equal(d[5], d[7])
        np.testing.assert_array_equal(d[5], d[30])


# ------------------------------------------------------------------ duplicates (issue 13.3)
def duplicate_batch(B: int, distinct: int, D: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((distinct, D)) * 3 + 1
    idx = rng.permutation(np.arange(B) % distinct)
    return base[idx], idx


@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_rows_exactly_zero_and_equidistant(xp, dtype, metric):
    """Bitwise-equal rows: distance exactly 0 between them and bitwise-equal distances to
    every other row (float64 NumPy gave 1.19e-7 for some of the duplicate pairs of such a
    batch, torch a duplicate's distances 1 ulp apart)."""
    x, idx = duplicate_batch(300, 20, 16)
    d = xp.to_numpy(tr.pairwise_distances(xp.asarray(x, dtype=dtype), metric=metric))
    assert_exact_properties(d)
    for k in range(20):
        rows = np.nonzero(idx == k)[0]
        assert np.all(d[np.ix_(rows, rows)] == 0), (k, d[np.ix_(rows, rows)].max())
        assert np.all(d[rows] == d[rows[0]]), k


@pytest.mark.slow
@pytest.mark.parametrize("dtype_", ["float64"])
def test_duplicate_rows_semihard_matches_oracle(xp, dtype_):
    x, idx = duplicate_batch(60, 12, 6, seed=1)
    y = idx % 4
    got = float(np.asarray(xp.to_numpy(tr.batch_semihard(xp.asarray(y), xp.asarray(x, dtype=dtype_), 1.0))))
    assert got == pytest.approx(float(oracles.batch_semihard(y, x, 1.0)), rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------ cosine scale (issue 13.4)
SCALES = {"float32": (1e-23, 1e20), "float64": (1e-170, 1e160)}


def test_cosine_is_scale_invariant(xp, dtype):
    """Rows whose squared norm under- or overflows are not zero rows: cosine distances
    and cosine losses are unchanged by the scale."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((8, 5))
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    base = xp.to_numpy(tr.pairwise_distances(xp.asarray(x, dtype=dtype), metric="cosine"))
    for s in SCALES[dtype]:
        xs = xp.asarray(x * s, dtype=dtype)
        vals = xp.to_numpy(xs).astype(np.float64)
        d = xp.to_numpy(tr.pairwise_distances(xs, metric="cosine"))
        assert_matches_oracle(d, vals, "cosine", dtype)
        np.testing.assert_allclose(d, base, atol=64 * EPS[dtype])
        got = float(np.asarray(xp.to_numpy(tr.batch_hard(xp.asarray(y), xs, 0.2, metric="cosine"))))
        assert got == pytest.approx(float(oracles.batch_hard(y, vals, 0.2, metric="cosine")), abs=1e-5)
        a, p, n = xs[:4, :], xs[2:6, :], xs[4:8, :]
        got = xp.to_numpy(tr.triplet_loss(a, p, n, 0.2, metric="cosine", reduction="none"))
        want = oracles.triplet_loss(vals[:4], vals[2:6], vals[4:8], 0.2, metric="cosine", reduction="none")
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, atol=1e-5)


# ------------------------------------------------------------------ compile at large B (13.9)
def _torch_case():
    if not backends.is_installed("torch"):
        pytest.skip("needs torch")
    import torch

    return torch


def test_torch_compile_fullgraph_large_batch():
    """torch.compile(fullgraph=True) at B = 1024 (it failed from B = 258 with
    "Attempted to call op with non-contiguous out= tensor"): distances and their gradient.
    Every loss compiled at B = 1024: test_compiled_losses_large_batch (slow)."""
    torch = _torch_case()
    rng = np.random.default_rng(14)
    x = torch.from_numpy(rng.standard_normal((1024, 8)).astype(np.float32))

    def f(z):
        return tr.pairwise_distances(z)

    # aot_eager: the failure was in tracing, which this backend does in full; inductor's
    # code generation (the slow test) adds a minute on two loaded cores
    compiled = torch.compile(f, fullgraph=True, dynamic=False, backend="aot_eager")
    xc = x.clone().requires_grad_(True)
    d = compiled(xc)
    (g,) = torch.autograd.grad(d.sum(), xc)
    xe = x.clone().requires_grad_(True)
    de = f(xe)
    (ge,) = torch.autograd.grad(de.sum(), xe)
    np.testing.assert_array_equal(d.detach().numpy(), de.detach().numpy())
    # float32 sums of ~1000 terms, reordered by the compiler: relative to the largest entry
    np.testing.assert_allclose(g.numpy(), ge.numpy(), rtol=1e-4, atol=1e-5 * float(ge.abs().max()))


EUCLIDEAN_LOSSES = [("batch_all", {}), ("batch_all", {"soft": True}), ("batch_hard", {}),
                    ("batch_hard", {"soft": True}), ("batch_semihard", {}), ("batch_contrastive", {})]


@pytest.mark.slow
@pytest.mark.jit
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_compiled_losses_large_batch(xp, metric):
    """Every euclidean/sqeuclidean loss and pairwise_distances compiled at B = 1024."""
    rng = np.random.default_rng(15)
    x_np = rng.standard_normal((1024, 8))
    y_np = np.repeat(np.arange(256), 4)
    x, y = xp.asarray(x_np, dtype="float32"), xp.asarray(y_np)
    for name, kw in EUCLIDEAN_LOSSES:
        if name == "batch_contrastive":  # euclidean by definition: no metric argument
            if metric != "euclidean":
                continue
        else:
            kw = {**kw, "metric": metric}

        def f(z, name=name, kw=kw):
            return getattr(tr, name)(y, z, 1.0, **kw)

        got = float(np.asarray(xp.to_numpy(xp.backend.jit(f)(x))))
        assert got == pytest.approx(float(np.asarray(xp.to_numpy(f(x)))), rel=1e-5), name
    d = xp.backend.jit(lambda z: tr.pairwise_distances(z, metric=metric))(x)
    np.testing.assert_allclose(xp.to_numpy(d), xp.to_numpy(tr.pairwise_distances(x, metric=metric)),
                               rtol=1e-6, atol=1e-6)
