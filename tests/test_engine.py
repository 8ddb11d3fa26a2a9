"""The mining engine: every implementation of every step, forced, on every backend, in
every label regime, against the oracles — values, info and gradients.

``impl`` forces the steps a loss uses (``triplet_ref.mining.force``): ``"portable"`` runs
the array-API version on any backend (NumPy included), ``"native"`` the backend's native
one (the NumPy kernels: directly on NumPy, as torch custom ops, through JAX
``pure_callback``; torch's own distance kernel).  The NumPy kernels have two bodies
(``triplet_ref.mining.force_body``): ``"native-numpy"`` runs the pure-NumPy one,
``"native-numba"`` the numba-compiled one (skipped without numba).  The label regimes are those of
``triplet_ref.testing.regimes``: P×K with K = 2, 4, 17 (16 positives per anchor: the
kernels' small-K path at its limit) and 64 (the sorted path), two classes and one big
class (sorted path), random labels with singletons, all distinct (no term at all).

Default run: every regime on numpy, array-api-strict and torch; on JAX (eager JAX
compiles every operation per shape) the native path in three regimes at the catalog's
JAX shape; every regime and the portable path on JAX with ``--runslow``.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import triplet_ref as tr
from triplet_ref import mining as M
from triplet_ref import oracles as O
from triplet_ref.mining import _blocks
from triplet_ref.testing.regimes import REGIMES, make_labels
from triplet_ref.testing.strategies import label_vectors

# B per regime: P×K batches of at least two classes; pk17 at B = 34 (two classes of 17:
# exactly 16 positives per anchor), pk64 at B = 130 (two classes); the rest share B = 40
SIZES = {"pk2": 40, "pk4": 40, "pk17": 34, "pk64": 130, "two_classes": 40,
         "big_class_singletons": 40, "random_singletons": 40, "all_distinct": 40}
# JAX (eager JAX compiles each operation per shape): by default three regimes at the
# shape the loss catalog's JAX tests use (B = 8, D = 2), every regime with --runslow
JAX_FAST = ("pk2", "two_classes", "all_distinct")
JAX_FAST_SHAPE = (8, 2)
MARGIN = 0.5
IMPLS = ("portable", "native-numpy", "native-numba")


# steps forced together with a loss's step: batch_semihard's "mean"/"sum" run the fused
# SEMIHARD_SUMS (whose portable version runs the choice step, whose kernel the choice kernel)
COMPANIONS = {"semihard_choice": (M.SEMIHARD_SUMS,)}


def _with(step):
    return (step, *COMPANIONS.get(step.name, ()))


@contextlib.contextmanager
def _force(impl, step):
    """Force ``step`` (and its companions) to ``impl`` (``"native-<body>"``: the native
    implementation, the NumPy kernels with that body)."""
    kind, _, body = impl.partition("-")
    with M.force(kind, *_with(step)), M.force_body(body or "auto"):
        yield


class Loss:
    def __init__(self, id, fn, oracle, step, **kw):
        self.id, self.fn, self.oracle, self.step, self.kw = id, fn, oracle, step, kw

    def __repr__(self):
        return self.id


LOSSES = [
    Loss("batch_all", tr.batch_all, O.batch_all, M.BATCH_ALL_HINGE),
    Loss("batch_all_soft", tr.batch_all, O.batch_all, M.BATCH_ALL_SOFT, soft=True),
    Loss("batch_semihard", tr.batch_semihard, O.batch_semihard, M.SEMIHARD_CHOICE),
    Loss("batch_hard", tr.batch_hard, O.batch_hard, M.SQDIST),
    Loss("batch_contrastive", tr.batch_contrastive, O.batch_contrastive, M.CONTRASTIVE_SUMS),
    # batch_hard's own choice step (the entry above forces the distances)
    Loss("batch_hard_choice", tr.batch_hard, O.batch_hard, M.HARDEST),
    Loss("batch_hard_soft", tr.batch_hard, O.batch_hard, M.HARDEST, soft=True),
]

# which backends have which native steps on CPU: a bridge that stops registering (and
# would silently shrink this suite to the portable path) fails here
NATIVE_ON_CPU = {
    "numpy": {"batch_all_hinge", "batch_all_soft", "semihard_choice", "semihard_sums", "contrastive_sums",
              "hardest"},
    "torch": {"batch_all_hinge", "batch_all_soft", "semihard_choice", "semihard_sums", "sqdist",
              "contrastive_sums", "hardest"},
    "jax": {"batch_all_hinge", "batch_all_soft", "semihard_choice", "semihard_sums", "contrastive_sums",
            "hardest"},
    "array_api_strict": set(),
}


def test_native_implementations_exist_where_expected(xp):
    if xp.name not in NATIVE_ON_CPU or "gpu" in xp.label:
        pytest.skip("CPU backends only")
    like = xp.asarray(np.zeros((2, 2)), "float64")
    have = {name for name, step in M.STEPS.items() if M.has_native(step, xp.backend, like)}
    assert have == NATIVE_ON_CPU[xp.name]


def _data(regime, seed=0, shape=None):
    b, dim = shape if shape is not None else (SIZES[regime], 3)
    y = make_labels(regime, b, seed=seed, sparse_ids=(seed % 2 == 1))
    x = np.random.default_rng([seed, b]).normal(size=(b, dim))
    return y, x


def _shape(request, xp):
    """The data's shape for this case: the catalog's JAX shape on JAX by default."""
    if xp.name == "jax" and not request.config.getoption("--runslow"):
        return JAX_FAST_SHAPE
    return None


@functools.lru_cache(maxsize=None)
def _oracle(loss_id, regime, reduction, shape=None):
    loss = next(v for v in LOSSES if v.id == loss_id)
    y, x = _data(regime, shape=shape)
    return loss.oracle(y, x, MARGIN, reduction=reduction, return_info=True, **loss.kw)


def _skip_if_slow(request, xp, regime, impl):
    if xp.name != "jax" or request.config.getoption("--runslow"):
        return
    if regime not in JAX_FAST:
        pytest.skip("slow: eager jax compiles per shape; every regime on jax runs with --runslow")
    if impl == "portable":
        pytest.skip("slow: the portable path on eager jax (~100 operations compiled per shape) "
                    "runs with --runslow")


def _steps_for(xp, loss, impl, like):
    """The step to force, or None when the backend has no such implementation."""
    if impl.startswith("native") and not M.has_native(loss.step, xp.backend, like):
        return None
    if impl == "native-numba" and (loss.step.kernel is None or not M.numba_available()):
        return None  # no NumPy kernel (torch's own distance kernel): one body only
    return loss.step


def _close(got, want, what):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=1e-9, atol=1e-9, err_msg=what)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("regime", REGIMES)
def test_forced_implementation_matches_the_oracle(request, xp, regime, impl):
    """float64 random data: every reduction's value and the info (counts and indices
    exactly) of each loss with its step forced to ``impl``."""
    _skip_if_slow(request, xp, regime, impl)
    shape = _shape(request, xp)
    y, x = _data(regime, shape=shape)
    X = xp.asarray(x, "float64")
    ran = 0
    for loss in LOSSES:
        step = _steps_for(xp, loss, impl, X)
        if step is None:
            continue
        ran += 1

        def f(z, loss=loss):
            total = loss.fn(y, z, MARGIN, reduction="sum", **loss.kw)
            return (total, *loss.fn(y, z, MARGIN, return_info=True, **loss.kw))

        with _force(impl, step):
            total, mean, info = f(X)
        want_sum, _ = _oracle(loss.id, regime, "sum", shape)
        want, oinfo = _oracle(loss.id, regime, "mean", shape)
        _close(xp.to_numpy(total), want_sum, f"{loss.id} sum")
        _close(xp.to_numpy(mean), want, f"{loss.id} mean")
        for key, w in oinfo.items():
            g = np.asarray(xp.to_numpy(info[key]))
            if isinstance(w, (int, np.integer)) or (isinstance(w, np.ndarray) and w.dtype.kind in "biu"):
                np.testing.assert_array_equal(g, np.asarray(w), err_msg=f"{loss.id} info[{key}]")
            else:
                _close(g, w, f"{loss.id} info[{key}]")
    native = impl == "native-numpy" or (impl == "native-numba" and M.numba_available())
    assert ran >= (1 if native and xp.name in ("numpy", "jax") else 0)


def _grid(regime, seed=1):
    """Small integer coordinates: every squared distance, hinge argument and tie is exact
    in float32 as in float64 (the library subtracts the first row, exactly)."""
    b = SIZES[regime]
    y = make_labels(regime, b, seed=seed)
    x = np.random.default_rng([seed, b, 7]).integers(-3, 4, size=(b, 3)).astype(np.float64)
    return y, x


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("regime", REGIMES)
def test_forced_implementation_float32_ties_exact(request, xp, regime, impl):
    """float32 on an integer grid (``sqeuclidean``: exact, with many exact ties): counts,
    tie-broken indices and values agree with the float64 oracle exactly."""
    if xp.name in ("jax", "array_api_strict") and not request.config.getoption("--runslow"):
        pytest.skip(f"slow: the float32 grid sweep on {xp.name} runs with --runslow")
    y, x = _grid(regime)
    X = xp.asarray(x, "float32")
    for loss in LOSSES:
        step = _steps_for(xp, loss, impl, X)
        if step is None or loss.id in ("batch_all_soft", "batch_contrastive", "batch_hard_soft"):
            continue  # softplus is not exact; contrastive has no metric (its √ is not exact)
        with _force(impl, step):
            got, info = loss.fn(y, X, 1.0, metric="sqeuclidean", return_info=True)
        want, oinfo = loss.oracle(y, x, 1.0, metric="sqeuclidean", return_info=True)
        assert float(xp.to_numpy(got)) == pytest.approx(want, rel=1e-6, abs=1e-6), loss.id
        for key, w in oinfo.items():
            if isinstance(w, (int, np.integer)) or (isinstance(w, np.ndarray) and w.dtype.kind in "biu"):
                np.testing.assert_array_equal(np.asarray(xp.to_numpy(info[key])), np.asarray(w),
                                              err_msg=f"{loss.id} info[{key}]")


# --- gradients -----------------------------------------------------------------------------

_H = 1e-7  # small: B = 130 has ~10⁶ hinge terms, a larger step could cross a kink


@functools.lru_cache(maxsize=None)
def _oracle_directional(loss_id, regime, k, shape=None):
    """Central difference of the float64 oracle (``reduction="sum"``, continuous in x)
    along the direction ``u_k``: the derivative every implementation's gradient must give."""
    loss = next(v for v in LOSSES if v.id == loss_id)
    y, x = _data(regime, shape=shape)
    u = _direction(x.shape, k)
    f = lambda z: loss.oracle(y, z, MARGIN, reduction="sum", **loss.kw)  # noqa: E731
    return (f(x + _H * u) - f(x - _H * u)) / (2 * _H)


def _direction(shape, k):
    return np.random.default_rng([k, *shape]).normal(size=shape)


@pytest.mark.grad
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("regime", REGIMES)
def test_forced_implementation_gradient_matches_the_oracle(request, xp, regime, impl):
    """float64: ⟨∇L, u⟩ equals the oracle's directional derivative for two directions;
    the native and the portable gradients agree to rounding."""
    _skip_if_slow(request, xp, regime, impl)
    shape = _shape(request, xp)
    y, x = _data(regime, shape=shape)
    X = xp.asarray(x, "float64")
    for loss in LOSSES:
        step = _steps_for(xp, loss, impl, X)
        if step is None:
            continue
        with _force(impl, step):
            value, grad = xp.backend.value_and_grad(lambda z, loss=loss: loss.fn(y, z, MARGIN, reduction="sum", **loss.kw), X)
        _close(value, _oracle(loss.id, regime, "sum", shape)[0], f"{loss.id} value")
        assert np.all(np.isfinite(grad))
        for k in range(1 if x.shape[0] > 100 else 2):  # the oracle is O(B³): one direction at B = 130
            want = _oracle_directional(loss.id, regime, k, shape)
            got = float(np.sum(grad * _direction(x.shape, k)))
            assert got == pytest.approx(want, rel=1e-5, abs=1e-4), f"{loss.id} direction {k}"


@pytest.mark.parametrize("regime", ["pk4", "two_classes", "big_class_singletons"])
def test_learnable_margin_gradient_under_each_implementation(regime):
    """``dL/dm`` (``reduction="sum"``) is the oracle's number of positive terms, whichever
    implementation runs (torch: the native op's margin slope; the portable autograd)."""
    torch = pytest.importorskip("torch")
    y, x = _data(regime)
    X = torch.tensor(x)
    for loss in LOSSES[:3]:
        _, info = _oracle(loss.id, regime, "mean")
        expect = info["num_positive"] if loss.id.startswith("batch_all") else \
            round(info["num_valid"] * info["fraction_positive"])
        for impl in IMPLS:
            if impl == "native-numba" and not M.numba_available():
                continue
            m = torch.tensor(MARGIN, dtype=torch.float64, requires_grad=True)
            with _force(impl, loss.step):
                (g,) = torch.autograd.grad(loss.fn(y, X, m, reduction="sum", **loss.kw), (m,))
            if loss.id == "batch_all_soft":  # Σ sigmoid(arg): compare with the oracle's FD in m
                f = lambda mm: O.batch_all(y, x, mm, soft=True, reduction="sum")  # noqa: E731
                assert float(g) == pytest.approx((f(MARGIN + _H) - f(MARGIN - _H)) / (2 * _H), rel=1e-6)
            else:
                assert float(g) == expect, (loss.id, impl)


# --- the kernels' row blocks -------------------------------------------------------------

@pytest.mark.parametrize("rows_per_block", [2, 7])
@pytest.mark.parametrize("regime", ["pk4", "big_class_singletons", "all_distinct"])
def test_native_kernels_in_many_row_blocks(monkeypatch, regime, rows_per_block):
    """The kernels process rows in blocks (one block below B ≈ 1000): shrink the block so
    that batches of this size take many blocks, some without a term (singletons)."""
    y, x = _data(regime)
    monkeypatch.setattr(_blocks, "_BLOCK_ELEMENTS", rows_per_block * x.shape[0])
    monkeypatch.setenv("TRIPLET_REF_NUMBA", "0")  # row blocks are the NumPy body's
    for loss in LOSSES[:3]:
        if loss.id == "batch_all_soft":
            continue
        with M.force("native", *_with(loss.step)):
            got, info = loss.fn(y, x, MARGIN, return_info=True)
        want, oinfo = _oracle(loss.id, regime, "mean")
        _close(got, want, loss.id)
        for key in ("num_positive", "semihard_negative"):
            if key in oinfo:
                np.testing.assert_array_equal(np.asarray(info[key]), np.asarray(oinfo[key]))
    # the portable soft step's anchor blocks (b × B × B elements each, the static-shape
    # version jax.jit runs) likewise: forced here by hiding the labels' values
    from triplet_ref.backends import _scale
    from triplet_ref.mining import batch_all as mba

    monkeypatch.setattr(mba, "_SOFT_BLOCK_ELEMENTS", rows_per_block * x.shape[0] ** 2)
    monkeypatch.setattr(_scale, "concrete_int", lambda v: None)
    with M.force("portable", M.BATCH_ALL_SOFT):
        got = tr.batch_all(y, x, MARGIN, soft=True)
    _close(got, _oracle("batch_all_soft", regime, "mean")[0], "batch_all_soft blocks")
    torch = pytest.importorskip("torch")
    X = torch.tensor(x, requires_grad=True)
    with M.force("native", M.BATCH_ALL_HINGE):
        (g,) = torch.autograd.grad(tr.batch_all(y, X, MARGIN, reduction="sum"), (X,))
    for k in range(2):
        want = _oracle_directional("batch_all", regime, k)
        assert float(np.sum(g.numpy() * _direction(x.shape, k))) == pytest.approx(want, rel=1e-5, abs=1e-5)


def _hardest_loops(d, y, Y, offset):
    """The batch-hard choice by the oracle's rule (``oracles._argbest``: ties to the
    smallest index, the first NaN wins), 0 where a row has no positive / negative."""
    B, R = d.shape
    hp, hn, valid = np.zeros(B, np.int64), np.zeros(B, np.int64), np.zeros(B, bool)
    for a in range(B):
        P = [(j, float(d[a, j])) for j in range(R) if Y[j] == y[a] and j != a + offset]
        N = [(j, float(d[a, j])) for j in range(R) if Y[j] != y[a]]
        hp[a] = O._argbest(P, largest=True)[0] if P else 0
        hn[a] = O._argbest(N, largest=False)[0] if N else 0
        valid[a] = bool(P and N)
    return hp, hn, valid


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hardest_kernel_ties_nan_and_own_columns(monkeypatch, dtype):
    """The batch-hard choice (both kernel bodies, the NumPy body in many row blocks, and
    the portable version) on a rectangular ``(B, R)`` problem with many exact ties (±0
    among them) and NaN distances (either sign bit), against plain loops, for own-column offsets inside, partly beyond and
    wholly beyond the candidates (a reference set: ``offset = R``)."""
    from triplet_ref.backends._base import resolve
    from triplet_ref.mining import hardest as H

    rng = np.random.default_rng(5)
    B, R = 23, 37
    d = rng.integers(0, 4, size=(B, R)).astype(dtype)
    d[rng.random((B, R)) < 0.04] = np.nan
    d[rng.random((B, R)) < 0.02] = -np.float64(np.nan)  # a NaN with its sign bit set
    d[(d == 0) & (rng.random((B, R)) < 0.5)] = -0.0  # ties with +0.0
    y = rng.integers(0, 4, size=B)
    Y = np.concatenate([y, rng.integers(0, 5, size=R - B)])
    Y[-3:] = 9  # a class only among the candidates
    y[:2] = 11  # anchors without a positive
    ctx, D, _ = resolve(d, None, None)
    for offset in (0, 5, 20, R):
        want = _hardest_loops(d, y, Y, offset)
        off = np.asarray(offset, dtype=np.int64)
        got = {"portable": H.choose(ctx, D, y, Y, off)}
        got["numpy"] = H.hardest(d, y, Y, off)
        if M.numba_available():
            got["numba"] = H.CHOICE.kernel.forward.numba(d, y.astype(np.int32), Y.astype(np.int32), off)
        with monkeypatch.context() as mp:
            mp.setattr(H, "_BLOCK", 3 * R)  # 3 rows per block
            got["numpy-blocks"] = H.hardest(d, y, Y, off)
        for body, res in got.items():
            for g, w, what in zip(res, want, ("hp", "hn", "valid")):
                np.testing.assert_array_equal(np.asarray(g), w, err_msg=f"{body} offset={offset} {what}")


def _soft_rows_loops(d, pos, neg, m):
    """Plain loops (float64): the batch-all softplus row sums, their margin slopes and counts."""
    B, R = d.shape
    L, S, C = np.zeros((B, R)), np.zeros((B, R)), np.zeros((B, R), dtype=np.int64)
    for a in range(B):
        for p in range(R):
            if pos[a, p]:
                for n in range(R):
                    if neg[a, n]:
                        t = d[a, p] - d[a, n] + m
                        L[a, p] += np.logaddexp(0.0, t)
                        S[a, p] += 1.0 / (1.0 + np.exp(-t))
                        C[a, p] += 1
    return L, C, S


@pytest.mark.parametrize("regime", ["pk4", "big_class_singletons", "two_classes", "all_distinct"])
def test_portable_soft_rows_per_positive_slot(request, xp, regime):
    """The portable soft step (one pass per positive slot, over the anchors that have one)
    against plain loops, on a rectangular (B, R) problem (a reference set) with anchors of
    very different numbers of positives."""
    if xp.name == "jax" and not request.config.getoption("--runslow"):
        pytest.skip("slow: eager jax compiles every operation per shape (--runslow)")
    from triplet_ref.backends._base import resolve
    from triplet_ref.mining import batch_all as mba

    rng = np.random.default_rng(3)
    y = make_labels(regime, 12, seed=1)
    ry = np.concatenate([y, make_labels(regime, 9, seed=2)])
    d = rng.uniform(0.0, 3.0, size=(12, ry.size))
    pos = (y[:, None] == ry[None, :])
    pos[np.arange(12), np.arange(12)] = False
    neg = y[:, None] != ry[None, :]
    ctx, D, _ = resolve(xp.asarray(d, "float64"), None, None)
    got = mba.soft_rows(ctx, D, xp.asarray(pos), xp.asarray(neg), 0.3)
    for g, w, what in zip(got, _soft_rows_loops(d, pos, neg, 0.3), ("L", "count", "slope")):
        np.testing.assert_allclose(np.asarray(xp.to_numpy(g), dtype=np.float64), w, rtol=1e-12, atol=1e-12,
                                   err_msg=what)


@pytest.mark.parametrize("regime", ["big_class_singletons", pytest.param("pk4", marks=pytest.mark.slow)])
def test_portable_soft_under_jax_jit(regime):
    """Under jax.jit the labels are traced: the portable soft step takes its static-shape
    anchor blocks; value and gradient against the oracle."""
    jax = pytest.importorskip("jax")
    y, x = _data(regime, shape=(12, 3))
    want = O.batch_all(y, x, MARGIN, soft=True, reduction="sum")

    def f(z, lab):
        with M.force("portable", M.BATCH_ALL_SOFT):
            return tr.batch_all(lab, z, MARGIN, soft=True, reduction="sum")

    X = jax.numpy.asarray(x, dtype=jax.numpy.float64)
    value, grad = jax.jit(jax.value_and_grad(f))(X, jax.numpy.asarray(y))
    assert float(value) == pytest.approx(float(want), rel=1e-9, abs=1e-12)
    for k in range(2):
        fd = _oracle_directional("batch_all_soft", regime, k, shape=(12, 3))
        assert float(np.sum(np.asarray(grad) * _direction(x.shape, k))) == pytest.approx(fd, rel=1e-5, abs=1e-6)


# --- the dispatcher ------------------------------------------------------------------------

def test_impl_is_typed_and_unknown_names_raise():
    assert M.Impl.parse("native") is M.Impl.NATIVE
    assert M.Impl.parse(M.Impl.PORTABLE) is M.Impl.PORTABLE
    for bad in ("Native", "numpy", "", None, 1):
        with pytest.raises(ValueError, match="impl: expected one of 'auto', 'portable', 'native'"):
            M.Impl.parse(bad)
    with pytest.raises(ValueError, match="impl"):
        with M.force("fast"):
            pass
    with pytest.raises(TypeError, match="steps"):
        with M.force("portable", "batch_all_hinge"):
            pass
    assert M.forced() is M.Impl.AUTO
    assert repr(M.BATCH_ALL_HINGE) == "<mining step batch_all_hinge>"
    with M.force("portable", M.SEMIHARD_CHOICE):
        assert M.forced(M.SEMIHARD_CHOICE) is M.Impl.PORTABLE
        assert M.forced(M.BATCH_ALL_HINGE) is M.Impl.AUTO  # not forced


def test_forcing_a_native_step_where_there_is_none_raises():
    strict = pytest.importorskip("array_api_strict")
    x = strict.asarray(np.eye(4))
    with M.force("native", M.BATCH_ALL_HINGE):
        with pytest.raises(NotImplementedError, match="batch_all: the array_api_strict backend has no native"):
            tr.batch_all([0, 0, 1, 1], x)
        # a step not forced keeps its default
        assert float(tr.batch_hard([0, 0, 1, 1], x)) == pytest.approx(O.batch_hard([0, 0, 1, 1], np.eye(4)))
    assert M.forced() is M.Impl.AUTO


# --- hypothesis: labels drawn from the regimes ----------------------------------------------

def _examples(request, default, slow):
    return slow if request.config.getoption("--runslow") else default


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hypothesis_native_and_portable_equal_the_oracle(request, dtype):
    """NumPy, labels of every regime and size (1–48, sparse/negative ids), integer-grid
    embeddings (exact in float32): both implementations of every step equal the oracle —
    counts and indices exactly."""

    @settings(max_examples=_examples(request, 12, 300), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(y=label_vectors(min_size=1, max_size=48), seed=st.integers(0, 2**31 - 1),
           margin=st.sampled_from([0.0, 0.5, 1.0, 3.0]), dim=st.integers(1, 4))
    def check(y, seed, margin, dim):
        x = np.random.default_rng(seed).integers(-3, 4, size=(y.size, dim)).astype(np.float64)
        X = x.astype(dtype)
        for loss in (*LOSSES[:3], LOSSES[5]):
            if loss.id == "batch_all_soft" and dtype == "float32":
                continue
            want, oinfo = loss.oracle(y, x, margin, metric="sqeuclidean", return_info=True, **loss.kw)
            for impl in IMPLS:
                if impl.startswith("native") and loss.step.kernel is None:
                    continue
                if impl == "native-numba" and not M.numba_available():
                    continue
                with _force(impl, loss.step):
                    got, info = loss.fn(y, X, margin, metric="sqeuclidean", return_info=True, **loss.kw)
                assert float(got) == pytest.approx(want, rel=1e-6, abs=1e-6), (loss.id, impl)
                for key in ("num_valid", "num_positive", "semihard_negative", "hardest_positive",
                            "hardest_negative", "valid"):
                    if key in oinfo:
                        np.testing.assert_array_equal(np.asarray(info[key]), np.asarray(oinfo[key]),
                                                      err_msg=f"{loss.id} {impl} {key}")

    check()


@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32, np.uint8])
def test_numpy_take_rows_blocked_equals_take_along_axis(monkeypatch, idx_dtype):
    """The NumPy backend's blocked flat ``take_rows`` (small blocks forced) against
    ``take_along_axis``: gathers within rows, a block with a negative (wrapping) index
    and one with an index out of range (the general path: the same result / error)."""
    from triplet_ref.backends import _numpy as bnp

    monkeypatch.setattr(bnp, "_TAKE_BLOCK", 8)
    be = bnp.NumpyBackend()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((13, 7)).astype(np.float32)
    idx = rng.integers(0, 7, size=(13, 5)).astype(idx_dtype)
    np.testing.assert_array_equal(be.take_rows(np, x, idx), np.take_along_axis(x, idx, axis=-1))
    assert be.take_rows(np, x, idx).dtype == x.dtype
    if np.issubdtype(idx_dtype, np.signedinteger):
        neg = idx.copy()
        neg[6, 2] = -1  # wraps to the row's last column, as in take_along_axis
        np.testing.assert_array_equal(be.take_rows(np, x, neg), np.take_along_axis(x, neg, axis=-1))
        assert be.take_rows(np, x, neg)[6, 2] == x[6, -1]
    bad = idx.copy()
    bad[4, 0] = 7
    with pytest.raises(IndexError):
        be.take_rows(np, x, bad)
    # a non-contiguous x takes the general path
    xt = np.asfortranarray(x)
    np.testing.assert_array_equal(be.take_rows(np, xt, idx), np.take_along_axis(x, idx, axis=-1))
