"""The fused loss steps (issue #9 item 6): one pass from the distances to the loss's sums.

* ``CONTRASTIVE_SUMS``: the NumPy kernel's two bodies and the portable step against plain
  float64 loops on rectangular problems with zero, NaN and infinite distances (float32
  and float64), the kernel's gradient against the loops' derivative, the learnable
  margin's gradient under every implementation (torch), and the torch double backward
  forced native;
* ``SEMIHARD_SUMS``: both bodies against loops given the choice kernel's choice (a
  rectangular problem with an anchor of more than ``COMPILED_K`` terms), the margin's
  gradient and the torch double backward under every implementation.

The losses themselves (every backend, regime, dtype, reduction, gradient) run these steps
in ``tests/test_engine.py`` (forced with the choice step there) and the loss suites.
"""
from __future__ import annotations

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import mining as M
from triplet_ref import oracles as O
from triplet_ref.mining import contrastive as C
from triplet_ref.testing.regimes import make_labels

BODIES = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not M.numba_available(), reason="no numba"))]


def _problem(dtype, special, seed=0, shape=(23, 37)):
    """A (B, R) problem: squared distances (with zeros, and NaN/inf if ``special``) and
    masks with pairs in neither (the anchor itself)."""
    rng = np.random.default_rng(seed)
    d2 = rng.uniform(0, 4, size=shape) ** 2 / 4
    d2[rng.random(shape) < 0.05] = 0.0
    if special:
        d2[1, 3] = np.nan
        d2[2, 5] = np.inf
        d2[4, 0] = np.inf
    y, z = rng.integers(0, 4, shape[0]), rng.integers(0, 4, shape[1])
    eq = y[:, None] == z[None, :]
    same = rng.random(shape) < 0.1
    return d2.astype(dtype), eq & ~same, ~eq


def _loops(d2, pos, neg, m):
    """Plain float64 loops: (total, slope, n_pos) and ∂total/∂d² (0 where e = 0)."""
    total = slope = 0.0
    n_pos = 0
    grad = np.zeros(d2.shape)
    for (a, j), v in np.ndenumerate(d2.astype(np.float64)):
        if pos[a, j]:
            t = 0.5 * v
            grad[a, j] = 0.5
        elif neg[a, j]:
            e = np.sqrt(v)
            g = max(m - e, 0.0) if not np.isnan(e) else np.nan
            t = 0.5 * g * g
            slope += g
            grad[a, j] = -g / (2 * e) if e > 0 else 0.0
        else:
            continue
        total += t
        n_pos += t > 0
    return (total, slope, n_pos), grad


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("special", [False, True])
def test_contrastive_kernel_bodies_equal_loops(body, dtype, special):
    d2, pos, neg = _problem(dtype, special)
    m = 1.3
    want, want_grad = _loops(d2, pos, neg, m)
    k = C.SUMS.kernel
    fwd = getattr(k.forward, body)
    got = fwd(d2, pos, neg, np.asarray(m, dtype=dtype))
    assert all(np.asarray(v).shape == () and np.asarray(v).dtype == d2.dtype for v in got)
    rtol = 1e-6 if dtype == "float32" else 1e-12
    for g, w, name in zip(got, want, ("total", "slope", "n_pos")):
        if np.isnan(w):
            assert np.isnan(g), name
        else:
            np.testing.assert_allclose(float(g), w, rtol=rtol, err_msg=name)
    if not special:
        assert float(got[2]) == want[2]  # the count exactly
    gd = getattr(k.backward, body)(d2, pos, neg, np.asarray(m, dtype=dtype), np.asarray(2.5, dtype=dtype), got[1])
    assert gd.shape == d2.shape and gd.dtype == d2.dtype
    np.testing.assert_allclose(gd, 2.5 * want_grad, rtol=10 * rtol, atol=10 * rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_contrastive_portable_step_equals_kernel(dtype):
    from triplet_ref.backends import resolve

    d2, pos, neg = _problem(dtype, special=False, seed=3)
    ctx, _, _ = resolve(np.zeros((2, 2), dtype=dtype), np.zeros(2, dtype=np.int64), None)
    m = np.asarray(0.8, dtype=dtype)
    got = C.pair_sums(ctx, d2, pos, neg, m)
    want = C.SUMS.kernel.forward.numpy(d2, pos, neg, m)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    for g, w in zip(got, want):
        np.testing.assert_allclose(float(g), float(w), rtol=rtol)


IMPLS = ["portable", "native-numpy", pytest.param("native-numba", marks=pytest.mark.skipif(
    not M.numba_available(), reason="no numba"))]


def _force(impl):
    import contextlib

    kind, _, body = impl.partition("-")
    stack = contextlib.ExitStack()
    stack.enter_context(M.force(kind, M.CONTRASTIVE_SUMS))
    stack.enter_context(M.force_body(body or "auto"))
    return stack


@pytest.mark.parametrize("impl", IMPLS)
def test_contrastive_margin_and_second_order_torch(impl):
    """torch, float64: the learnable margin's gradient equals the oracle's finite
    difference, and a create_graph Hessian-vector product equals a finite difference of
    the gradient, with the step forced to each implementation."""
    torch = pytest.importorskip("torch")
    y = make_labels("pk4", 16, seed=2)
    x = np.random.default_rng(5).normal(size=(16, 3))
    h = 1e-6
    with _force(impl):
        m = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
        X = torch.tensor(x, requires_grad=True)
        (gm,) = torch.autograd.grad(tr.batch_contrastive(y, X, m, reduction="sum"), (m,))
        f = lambda mm: O.batch_contrastive(y, x, mm, reduction="sum")  # noqa: E731
        assert float(gm) == pytest.approx((f(1.5 + h) - f(1.5 - h)) / (2 * h), rel=1e-6)

        def grad_of(z):
            z = z.clone().requires_grad_(True)
            return torch.autograd.grad(tr.batch_contrastive(y, z, 1.5), (z,))[0]

        u = torch.tensor(np.random.default_rng(6).normal(size=x.shape))
        (g,) = torch.autograd.grad(tr.batch_contrastive(y, X, 1.5), (X,), create_graph=True)
        (hv,) = torch.autograd.grad((g * u).sum(), (X,))
        x0 = torch.tensor(x)
        fd = (grad_of(x0 + h * u) - grad_of(x0 - h * u)) / (2 * h)
    torch.testing.assert_close(hv, fd, rtol=1e-5, atol=1e-6)


# --- SEMIHARD_SUMS -------------------------------------------------------------------------

def _semihard_loops(d, neg, term, chosen, m):
    """Plain float64 loops over the terms, given the choice: (total, active) and ∂total/∂d."""
    total, active = 0.0, 0
    grad = np.zeros(d.shape)
    for a, p in zip(*np.nonzero(term)):
        n = chosen[a, p]
        assert neg[a, n]
        arg = float(d[a, p] - d[a, n]) + m
        total += max(arg, 0.0)
        if arg > 0:
            active += 1
            grad[a, p] += 1.0
            grad[a, n] -= 1.0
    return (total, active), grad


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_semihard_kernel_bodies_equal_loops(body, dtype):
    """Both bodies on a rectangular problem (a reference set: R != C) whose anchors have
    few and many terms: the choice equals the choice step's kernel, the sums and the
    gradient the loops'."""
    from triplet_ref.mining import semihard_sums as S

    rng = np.random.default_rng(4)
    R, Cn = 21, 150
    d = rng.uniform(0, 3, size=(R, Cn)).astype(dtype)
    d[rng.random(d.shape) < 0.05] = 0
    y, z = rng.integers(0, 5, R), rng.integers(0, 5, Cn)
    y[0] = 7  # an anchor without a term
    z[:140] = np.where(np.arange(140) < 130, y[3], z[:140])  # anchor 3: > 128 terms (the NumPy hand-off)
    eq = y[:, None] == z[None, :]
    neg = ~eq
    term = eq & neg.any(axis=1)[:, None]
    m = 0.4
    k = S.SUMS.kernel
    total, act, n_semi, chosen = getattr(k.forward, body)(d, neg, term, np.asarray(m, dtype=dtype))
    want_ch, want_semi = M.SEMIHARD_CHOICE.kernel.forward.numpy(d, neg, term)
    np.testing.assert_array_equal(np.where(term, chosen, -1), np.where(term, want_ch, -1))
    (w_total, w_act), w_grad = _semihard_loops(d, neg, term, want_ch, m)
    assert all(np.asarray(v).shape == () and np.asarray(v).dtype == d.dtype for v in (total, act, n_semi))
    np.testing.assert_allclose(float(total), w_total, rtol=1e-6 if dtype == "float32" else 1e-12)
    assert float(act) == w_act and float(n_semi) == np.count_nonzero(want_semi & term)
    g = getattr(k.backward, body)(d, neg, term, np.asarray(m, dtype=dtype), np.asarray(1.5, dtype=dtype), act, chosen)
    assert g.dtype == d.dtype
    np.testing.assert_array_equal(g, (1.5 * w_grad).astype(dtype))


@pytest.mark.parametrize("impl", IMPLS)
def test_semihard_margin_and_second_order_torch(impl):
    """torch, float64, the fused step (and the choice) forced to each implementation: the
    margin's gradient is the number of positive terms; the create_graph Hessian-vector
    product equals a finite difference of the gradient."""
    torch = pytest.importorskip("torch")
    y = make_labels("pk4", 16, seed=3)
    x = np.random.default_rng(8).normal(size=(16, 3))
    h = 1e-6
    kind, _, body = impl.partition("-")
    with M.force(kind, M.SEMIHARD_SUMS, M.SEMIHARD_CHOICE), M.force_body(body or "auto"):
        m = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        X = torch.tensor(x, requires_grad=True)
        (gm,) = torch.autograd.grad(tr.batch_semihard(y, X, m, reduction="sum"), (m,))
        _, info = O.batch_semihard(y, x, 0.5, return_info=True)
        assert float(gm) == round(info["num_valid"] * info["fraction_positive"])

        def grad_of(z):
            z = z.clone().requires_grad_(True)
            return torch.autograd.grad(tr.batch_semihard(y, z, 0.5), (z,))[0]

        u = torch.tensor(np.random.default_rng(6).normal(size=x.shape))
        (g,) = torch.autograd.grad(tr.batch_semihard(y, X, 0.5), (X,), create_graph=True)
        (hv,) = torch.autograd.grad((g * u).sum(), (X,))
        x0 = torch.tensor(x)
        fd = (grad_of(x0 + h * u) - grad_of(x0 - h * u)) / (2 * h)
    torch.testing.assert_close(hv, fd, rtol=1e-5, atol=1e-6)


def test_contrastive_is_portable_under_jax_jit_only():
    """``Kernel.fusible``: under ``jax.jit`` XLA fuses the portable contrastive step (no host
    callback); eager JAX (also under ``jax.grad``) runs the native kernel."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from triplet_ref.backends import get_backend

    be = get_backend("jax")
    seen = []

    def probe(z):
        seen.append((M.has_native(M.CONTRASTIVE_SUMS, be, z), M.has_native(M.SEMIHARD_SUMS, be, z)))
        return jnp.sum(z)

    z = jnp.ones((2, 2))
    probe(z)
    jax.grad(probe)(z)
    jax.jit(probe)(z)
    # the semi-hard step (a sort-based choice, not fusible) stays native under jax.jit
    assert seen == [(True, True), (True, True), (False, True)]
