"""The tiled euclidean distance kernels with tiny tiles, so that a small batch crosses many
of them: torch's stripes (``_torch._GEMM_ROWS`` rows per GEMM, computed bottom-up and
mirrored below the diagonal; both bodies: the numba stripe pass with ``_torch._NUMBA_TILE``
columns per tile, the stripe's columns split among threads and its close-pair buffers
overflowing, and the torch operations with ``_torch._BLOCK`` rows per epilogue block) and JAX's
CPU mirror (``_jax._MIRROR_TILE``-square tiles copied transposed below the diagonal, the
close-pair test on the tiles above it), with batch sizes that leave partial tiles.

Against the float64 oracle (``tests/test_distances.py``'s bounds), with exact symmetry, an
exact zero diagonal, duplicates in different tiles exactly 0 apart and equidistant, a
close pair across tiles refined (relative accuracy), and gradients equal to the analytic
gradient of the oracle.
"""
from __future__ import annotations

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import oracles

from test_distances import _analytic_grad, assert_exact_properties, assert_matches_oracle

B = 23


def tiled_batch(seed: int = 0) -> np.ndarray:
    """23 rows in 6-d: rows 3, 17 and 20 equal, rows 2 and 11 1e-3 apart (relative), the
    rest generic; float32-representable, so float32 and float64 see the same values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, 6)) * 2 + 1
    x[17] = x[3]
    x[20] = x[3]
    x[11] = x[2] * (1 + 1e-3 * rng.standard_normal(6))
    return x.astype(np.float32).astype(np.float64)


def check(d: np.ndarray, x64: np.ndarray, metric: str, dtype: str) -> None:
    assert_exact_properties(d)
    assert_matches_oracle(d, x64, metric, dtype)
    for a, b in ((3, 17), (3, 20), (17, 20)):
        assert d[a, b] == 0 and d[b, a] == 0
    np.testing.assert_array_equal(d[3], d[17])
    np.testing.assert_array_equal(d[3], d[20])
    ref = oracles.pairwise_distances(x64, metric=metric)
    # the close pair is refined: relative accuracy, not the Gram formula's absolute error
    assert abs(d[2, 11] - ref[2, 11]) <= 1e-5 * ref[2, 11], (d[2, 11], ref[2, 11])


# ------------------------------------------------------------------------------ torch
def _cases(fast, sizes):
    """Every (size, metric, dtype) combination; those outside ``fast`` run with --runslow."""
    out = []
    for size in sizes:
        for metric in ("euclidean", "sqeuclidean"):
            for dtype in ("float32", "float64"):
                c = (size, metric, dtype)
                out.append(c if c in fast else pytest.param(*c, marks=pytest.mark.slow))
    return out


TORCH_CASES = _cases({((8, 3), "euclidean", "float32"), ((5, 5), "sqeuclidean", "float64")},
                     [(8, 3), (5, 5), (4, 16)])


@pytest.mark.parametrize("body", ["numpy", "numba"])
@pytest.mark.parametrize("tiles,metric,dtype", TORCH_CASES)
def test_torch_stripes(monkeypatch, tiles, metric, dtype, body):
    """``tiles``: (rows per GEMM stripe, rows per torch epilogue block = columns per numba
    tile).  The numba body also splits every stripe's columns among 3 threads and, for
    sqeuclidean, stores no close pair (the overflow: one search of the result instead)."""
    torch = pytest.importorskip("torch")
    from triplet_ref.backends import _torch
    from triplet_ref.mining import force_body

    if body == "numba":
        pytest.importorskip("numba")
    monkeypatch.setattr(_torch, "_GEMM_ROWS", tiles[0])
    monkeypatch.setattr(_torch, "_BLOCK", tiles[1])
    monkeypatch.setattr(_torch, "_NUMBA_TILE", tiles[1])
    monkeypatch.setattr(_torch, "_THREAD_MIN", 1)
    monkeypatch.setattr(_torch.torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(_torch._blocks, "cpu_count", lambda: 3)
    if metric == "sqeuclidean":
        monkeypatch.setattr(_torch, "_FOUND_PER_ROW", 0)
    with force_body(body):
        _check_torch_stripes(torch, metric, dtype)


def _check_torch_stripes(torch, metric, dtype):
    x64 = tiled_batch()
    x = torch.tensor(x64, dtype=getattr(torch, dtype), requires_grad=True)
    d = tr.pairwise_distances(x, metric=metric)
    check(d.detach().numpy().astype(np.float64), x64, metric, dtype)
    W = np.random.default_rng(1).uniform(0.5, 1.5, (B, B))
    (d * torch.tensor(W, dtype=d.dtype)).sum().backward()
    assert torch.isfinite(x.grad).all()
    # duplicates: the analytic gradient is that of a kink; compare on a batch without them
    x2 = tiled_batch(2)
    x2[17] += 0.5
    x2[20] -= 0.5
    xt = torch.tensor(x2, dtype=getattr(torch, dtype), requires_grad=True)
    (tr.pairwise_distances(xt, metric=metric) * torch.tensor(W, dtype=xt.dtype)).sum().backward()
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == "float32" else dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(xt.grad.numpy(), _analytic_grad(x2, W, metric), **tol)


# ------------------------------------------------------------------------------ NumPy
@pytest.mark.parametrize("body", ["numpy", "numba"])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_stripes(monkeypatch, metric, dtype, body):
    """NumPy's in-place finish of the (syrk) Gram matrix: the pure-NumPy blocks, or the
    numba stripe pass (8-row stripes, 3-column tiles, the columns split among 3 threads;
    for sqeuclidean no close pair stored: the overflow's search of the result)."""
    from triplet_ref.backends import _numpy
    from triplet_ref.mining import _blocks, force_body

    if body == "numba":
        pytest.importorskip("numba")
    monkeypatch.setattr(_numpy, "_NUMBA_ROWS", 8)
    monkeypatch.setattr(_numpy, "_NUMBA_TILE", 3)
    monkeypatch.setattr(_numpy, "_NUMBA_THREAD_MIN", 1)
    monkeypatch.setattr(_blocks, "cpu_count", lambda: 3)
    if metric == "sqeuclidean":
        monkeypatch.setattr(_numpy, "_FOUND_PER_ROW", 0)
    x64 = tiled_batch()
    with force_body(body):
        d = tr.pairwise_distances(x64.astype(dtype), metric=metric)
    check(d.astype(np.float64), x64, metric, dtype)


# ------------------------------------------------------------------------------ JAX
@pytest.mark.parametrize("body", ["numpy", "numba"])
@pytest.mark.parametrize("tile,metric,dtype", _cases(
    {(5, "euclidean", "float32")}, [4, 5, 128]))
def test_jax_mirror(monkeypatch, tile, metric, dtype, body):
    """``body``: ``numpy``, the XLA epilogue and tile mirror (``_MIRROR_TILE``);
    ``numba``, the numba stripe pass in place on G's buffer (``_NUMBA_ROWS`` rows per
    stripe, ``_NUMBA_TILE`` columns per tile, the columns split among 3 threads)."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from triplet_ref.backends import _jax
    from triplet_ref.mining import force_body

    if body == "numba":
        pytest.importorskip("numba")
    monkeypatch.setattr(_jax, "_MIRROR_TILE", tile)
    monkeypatch.setattr(_jax, "_NUMBA_ROWS", tile + 2)
    monkeypatch.setattr(_jax, "_NUMBA_TILE", tile)
    monkeypatch.setattr(_jax, "_NUMBA_THREAD_MIN", 1)
    from triplet_ref.mining import _blocks

    monkeypatch.setattr(_blocks, "cpu_count", lambda: 3)
    with force_body(body):
        _check_jax_mirror(jax, jnp, metric, dtype)


def _check_jax_mirror(jax, jnp, metric, dtype):
    x64 = tiled_batch()
    x = jnp.asarray(x64, dtype=dtype)

    def f(z):
        return tr.pairwise_distances(z, metric=metric)

    for fn in (f, jax.jit(f)):  # a fresh jax.jit: traced with this tile size
        check(np.asarray(fn(x), dtype=np.float64), x64, metric, dtype)
    W = np.random.default_rng(1).uniform(0.5, 1.5, (B, B))
    x2 = tiled_batch(2)
    x2[17] += 0.5
    x2[20] -= 0.5
    Wj = jnp.asarray(W, dtype=dtype)
    g = jax.grad(lambda z: jnp.sum(f(z) * Wj))(jnp.asarray(x2, dtype=dtype))
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == "float32" else dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(g), _analytic_grad(x2, W, metric), **tol)


def test_jax_close_test_matches_full_test():
    """The close-pair test on the tiles the mirror reads (upper tiles only) answers as the
    full fused test does, and the matrix comes back mirrored."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from triplet_ref.backends import _jax

    upper = jax.jit(_jax._mirror_upper_close, static_argnums=(2, 3))

    rng = np.random.default_rng(3)
    seen = set()
    tile = 4
    for n in (3, 9):  # no whole tile; whole tiles and some past the last
        for _ in range(12):
            a = rng.random((n, n))
            d = jnp.asarray(a + a.T)
            w = jnp.asarray(rng.random(n) * 0.25)
            for sqrt in (False, True):
                want = bool(_jax._any_close(d, w, 1.0, sqrt))
                junk = rng.random((n, n))  # below the diagonal: the test reads the upper part
                full = jnp.asarray(np.where(np.tri(n, k=-1, dtype=bool), junk, np.asarray(d)))
                got, close = upper(full, w * 1.0, sqrt, tile)
                assert bool(close) == want, (n, sqrt)
                np.testing.assert_array_equal(np.asarray(got), np.asarray(d))
                seen.add(want)
    assert seen == {False, True}  # both answers were exercised


def test_jax_mirror_derivatives_do_not_transpose_the_loop(monkeypatch):
    """Reverse mode goes through the mirror's ``where`` derivative, not the transpose of its
    tile loop (that transpose copied the whole (B, B) carry at every step: jax.grad of the
    distances took 8x longer at B = 4096).  The gradient's jaxpr has no more loops than the
    forward's, and forward and reverse mode agree with the mirror's definition."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from triplet_ref.backends import _jax

    monkeypatch.setattr(_jax, "_MIRROR_TILE", 4)  # 23 rows: 5 whole tiles and a rest

    def subs(v):
        if hasattr(v, "eqns"):  # a Jaxpr or ClosedJaxpr (jit, custom_jvp_call, while, cond)
            yield v
        elif isinstance(v, (tuple, list)):
            for u in v:
                yield from subs(u)

    def loops(jaxpr) -> int:
        n = 0
        for eqn in jaxpr.eqns:
            n += eqn.primitive.name in ("while", "scan")  # fori_loop: a scan when its bounds are static
            for v in eqn.params.values():
                n += sum(loops(sub) for sub in subs(v))
        return n

    x = jnp.asarray(tiled_batch(), dtype="float32")

    def f(z):
        return jnp.sum(tr.pairwise_distances(z) * jnp.arange(B * B, dtype=z.dtype).reshape(B, B))

    from triplet_ref.mining import force_body

    with force_body("numpy"):  # the XLA mirror (the numba body's pass is one host call)
        fwd = loops(jax.make_jaxpr(f)(x).jaxpr)
        assert fwd >= 1  # the mirror's (and the close test's) loops are in the forward
        assert loops(jax.make_jaxpr(jax.grad(f))(x).jaxpr) == fwd
    # the mirror's derivatives, both modes, against its definition on a tiny tile
    d = jnp.asarray(np.random.default_rng(3).standard_normal((B, B)), dtype="float32")
    t = jnp.asarray(np.random.default_rng(4).standard_normal((B, B)), dtype="float32")
    upper = np.triu(np.ones((B, B), dtype=bool))

    def mirror(z):
        return _jax._mirror_upper(z, 4)

    np.testing.assert_array_equal(np.asarray(mirror(d)), np.where(upper, np.asarray(d), np.asarray(d).T))
    _, tan = jax.jvp(mirror, (d,), (t,))
    np.testing.assert_array_equal(np.asarray(tan), np.where(upper, np.asarray(t), np.asarray(t).T))
    (cot,) = jax.vjp(mirror, d)[1](t)
    tn = np.asarray(t)
    want = np.where(np.triu(upper, 1), tn + tn.T, 0) + np.diag(np.diag(tn))
    np.testing.assert_allclose(np.asarray(cot), want, rtol=1e-6)
