"""Gradients of every loss (torch and JAX): finite everywhere, right where smooth.

* finite (and the value right) on every catalog batch — duplicate rows, all-zero rows,
  all-equal / all-distinct labels, ties — in float32 and float64;
* ``torch.autograd.gradcheck`` in float64 on small batches away from ties and kinks;
* the gradient equals a central finite difference of the float64 *oracle* (so it is the
  gradient of the right function, not only a consistent one);
* ``jax.grad`` and ``jax.jit(jax.grad(...))`` agree with torch's gradient;
* an all-easy batch has gradient exactly 0.
"""
from __future__ import annotations

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import backends as B
from triplet_ref import oracles as O

from loss_catalog import BY_NAME, JAX_FAST_SHAPE, LOSS_CASES, MARGINS
from loss_helpers import ONLINE, assert_close

pytestmark = pytest.mark.grad

_PARAMS = [
    pytest.param(loss, batch, metric, id=f"{loss.id}-{batch.name}-{metric}")
    for loss in ONLINE
    for batch, metric in LOSS_CASES
    if loss.has_metric or metric == "euclidean"
]


@pytest.mark.parametrize("loss, batch, metric", _PARAMS)
def test_gradient_is_finite_on_every_batch(request, xp, dtype, loss, batch, metric):
    slow = request.config.getoption("--runslow")
    if xp.name == "jax" and batch.x.shape != JAX_FAST_SHAPE and not slow:
        pytest.skip("slow: jax eager compiles per shape; the full jax sweep runs with --runslow")
    x = xp.asarray(batch.x, dtype)
    # the default run takes one margin per dtype and "mean" ("sum" is the same graph,
    # rescaled); --runslow both margins and both reductions
    for margin in MARGINS if slow else MARGINS[dtype == "float32":][:1]:
        for red in ("mean", "sum") if slow else ("mean",):
            def fn(z):
                return loss.call(batch.labels, z, margin, metric, reduction=red)

            value, grad = xp.backend.value_and_grad(fn, x)
            assert grad.shape == batch.x.shape
            assert np.all(np.isfinite(grad)), f"non-finite gradient: {grad}"
            assert_close(value, loss.truth(batch.labels, batch.x, margin, metric, reduction=red), dtype)


# --- gradcheck and finite differences of the oracle ----------------------------------------

def _smooth_batch():
    """Small random P×K batch, no near-ties and no near-kinks (catalog gap check)."""
    return BY_NAME["random_pk_4x2"]


_SMOOTH = [
    pytest.param(loss, metric, id=f"{loss.id}-{metric}")
    for loss in ONLINE
    for metric in (("euclidean", "sqeuclidean", "cosine") if loss.has_metric else ("euclidean",))
]


def _oracle_fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp_) - f(xm)) / (2 * h)
    return g


@pytest.mark.parametrize("loss, metric", _SMOOTH)
def test_torch_gradcheck(loss, metric):
    torch = pytest.importorskip("torch")
    batch = _smooth_batch()
    x = torch.tensor(batch.x, dtype=torch.float64, requires_grad=True)
    for red in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda z: loss.call(batch.labels, z, 0.3, metric, reduction=red), (x,),
            eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("loss, metric", _SMOOTH)
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_gradient_equals_oracle_finite_difference(loss, metric, backend):
    if not B.is_installed(backend):
        pytest.skip(f"{backend} not installed")
    be = B.get_backend(backend)
    batch = _smooth_batch()
    for margin in MARGINS:
        want = _oracle_fd_grad(lambda z: loss.truth(batch.labels, z, margin, metric), batch.x)
        _, got = be.value_and_grad(lambda z: loss.call(batch.labels, z, margin, metric),
                                   be.from_numpy(batch.x, dtype="float64"))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=f"margin={margin}")


_EXPLICIT = [pytest.param(m, s, id=f"triplet_loss-{m}-soft{s}")
             for m in ("euclidean", "sqeuclidean", "cosine") for s in (False, True)]


def _triplet_rows(seed=3, n=5, dim=3):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, dim)) for _ in range(3)]


@pytest.mark.parametrize("metric, soft", _EXPLICIT)
def test_triplet_loss_gradcheck_and_oracle(metric, soft):
    torch = pytest.importorskip("torch")
    a, p, n = _triplet_rows()
    ts = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (a, p, n)]
    assert torch.autograd.gradcheck(
        lambda *z: tr.triplet_loss(*z, 0.3, metric=metric, soft=soft, reduction="none"), tuple(ts),
        eps=1e-6, atol=1e-6, rtol=1e-5)
    out = tr.triplet_loss(*ts, 0.3, metric=metric, soft=soft)
    grads = torch.autograd.grad(out, ts)
    for k, g in enumerate(grads):
        def f(z, k=k):
            rows = [a, p, n]
            rows[k] = z
            return O.triplet_loss(*rows, 0.3, metric=metric, soft=soft)

        np.testing.assert_allclose(g.numpy(), _oracle_fd_grad(f, [a, p, n][k]), rtol=1e-5, atol=1e-7)


def test_contrastive_loss_gradcheck_and_oracle():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) * 0.3
    same = np.array([1, 0, 0, 1, 0, 0])
    ta, tb = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (a, b))
    assert torch.autograd.gradcheck(
        lambda u, v: tr.contrastive_loss(u, v, same, 1.0, reduction="none"), (ta, tb),
        eps=1e-6, atol=1e-6, rtol=1e-5)
    ga, gb = torch.autograd.grad(tr.contrastive_loss(ta, tb, same, 1.0), (ta, tb))
    np.testing.assert_allclose(ga.numpy(), _oracle_fd_grad(lambda z: O.contrastive_loss(z, b, same, 1.0), a),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gb.numpy(), _oracle_fd_grad(lambda z: O.contrastive_loss(a, z, same, 1.0), b),
                               rtol=1e-5, atol=1e-7)


# --- jax.grad and jax.jit(jax.grad) against torch ----------------------------------------

@pytest.mark.parametrize("loss, metric", _SMOOTH)
def test_jax_grad_and_jitted_grad_agree_with_torch(loss, metric):
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    # exact ties: the same (smallest-index) subgradient everywhere; but only where the
    # metric keeps them exact — cosine normalises, and two backends may round a parallel
    # pair to 0 and 2e-16, which lands on different sides of a hinge (d_an = 1 = d_ap + m)
    batch = BY_NAME["ties_grid_8"]
    if metric not in batch.exact_metrics:
        batch = BY_NAME["random_pk_3x4"]  # tie-free: no hinge within rounding of a kink
    x_t = torch.tensor(batch.x, dtype=torch.float64, requires_grad=True)

    def f(z, margin):
        return loss.call(batch.labels, z, margin, metric)

    grad = jax.grad(f)
    jitted = jax.jit(jax.grad(f), static_argnums=1)
    xj = jnp.asarray(batch.x, dtype=jnp.float64)
    for margin in MARGINS:
        (g_t,) = torch.autograd.grad(loss.call(batch.labels, x_t, margin, metric), (x_t,))
        g_j = np.asarray(grad(xj, margin))
        g_jj = np.asarray(jitted(xj, margin))
        np.testing.assert_allclose(g_j, g_t.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(g_jj, g_t.numpy(), rtol=1e-9, atol=1e-12)


# --- exact zeros ------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", [v for v in ONLINE if not v.id.endswith("_soft")], ids=repr)
def test_all_easy_gradient_is_exactly_zero(xp, dtype, loss):
    batch = BY_NAME["all_easy"]
    x = xp.asarray(batch.x, dtype)
    for metric in ("euclidean", "sqeuclidean"):
        value, grad = xp.backend.value_and_grad(
            lambda z: loss.call(batch.labels, z, 1.0, metric), x)
        assert value == 0.0
        assert np.all(grad == 0.0), grad


def test_explicit_easy_gradient_is_exactly_zero(xp, dtype):
    a = xp.asarray(np.zeros((2, 2)), dtype)
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    n = xp.asarray(np.array([[10.0, 0.0], [0.0, -10.0]]), dtype)
    _, g = xp.backend.value_and_grad(
        lambda z: tr.triplet_loss(a, z, n, 1.0), xp.asarray(p, dtype))
    assert np.all(g == 0.0)
    # contrastive: identical positive rows and negative rows farther than the margin
    x1 = np.array([[1.0, 2.0], [0.0, 0.0]])
    x2 = xp.asarray(np.array([[1.0, 2.0], [5.0, 0.0]]), dtype)
    _, g = xp.backend.value_and_grad(
        lambda z: tr.contrastive_loss(z, x2, np.array([1, 0]), 1.0), xp.asarray(x1, dtype))
    assert np.all(g == 0.0)


def test_explicit_degenerate_rows_have_finite_gradients(xp, dtype):
    # anchor == positive == negative, and all-zero rows, for every metric
    rows = np.array([[0.5, -1.0], [0.0, 0.0]])
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        for soft in (False, True):
            _, g = xp.backend.value_and_grad(
                lambda z: tr.triplet_loss(z, z, z, 1.0, metric=metric, soft=soft), xp.asarray(rows, dtype))
            assert np.all(np.isfinite(g)), (metric, soft, g)
    _, g = xp.backend.value_and_grad(
        lambda z: tr.contrastive_loss(z, z, np.array([1, 0]), 1.0), xp.asarray(rows, dtype))
    assert np.all(np.isfinite(g))


# --- a learnable margin -----------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["batch_all", "batch_hard", "batch_semihard"])
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_margin_gradient_counts_the_active_terms(loss, framework):
    """With ``reduction="sum"`` each active hinge has slope 1 in the margin, so
    ``dL/dm`` equals the oracle's number of positive terms (the native CPU kernels too)."""
    pytest.importorskip(framework)
    batch = BY_NAME["random_pk_3x4"]
    _, info = getattr(O, loss)(batch.labels, batch.x, 0.7, reduction="sum", return_info=True)
    expected = info["num_positive"] if loss == "batch_all" else round(info["num_valid"] * info["fraction_positive"])
    assert expected > 0
    if framework == "torch":
        import torch

        m = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        x = torch.tensor(batch.x, dtype=torch.float64)
        (g,) = torch.autograd.grad(getattr(tr, loss)(batch.labels, x, m, reduction="sum"), (m,))
        got = float(g)
    else:
        import jax
        import jax.numpy as jnp

        x = jnp.asarray(batch.x, dtype=jnp.float64)
        f = lambda m: getattr(tr, loss)(batch.labels, x, m, reduction="sum")  # noqa: E731
        got = float(jax.grad(f)(jnp.asarray(0.7, dtype=jnp.float64)))
        assert float(jax.jit(jax.grad(f))(jnp.asarray(0.7, dtype=jnp.float64))) == got
    assert got == expected
