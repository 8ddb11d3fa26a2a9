"""The JAX bridge to the NumPy mining kernels (``backends/_jax.py::_host_call``): the
zero-copy ``buffer_callback`` path and the ``pure_callback`` fallback (JAX without
``buffer_callback``) give the oracle's values and gradients (central differences of the
float64 oracle) under
``jax.jit`` with traced labels, with both kernel bodies.  The default run checks the
fallback on batch_semihard (every other JAX test runs ``buffer_callback``); ``--runslow``
every combination."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import triplet_ref as tr  # noqa: E402
from triplet_ref import mining, oracles  # noqa: E402
from triplet_ref.backends import _jax  # noqa: E402
from triplet_ref.testing.regimes import make_labels  # noqa: E402

STEPS = (mining.BATCH_ALL_HINGE, mining.SEMIHARD_SUMS)


CASES = [pytest.param(path, body, name, marks=() if (path, body, name) == (
    "pure_callback", "auto", "batch_semihard") else pytest.mark.slow)
    for path in ("buffer_callback", "pure_callback") for body in ("auto", "numpy", "numba")
    for name in ("batch_all", "batch_semihard")]


@pytest.mark.parametrize("path,body,name", CASES)
def test_host_call_paths_match_the_oracle(monkeypatch, path, body, name):
    if body == "numba" and not mining.numba_available():
        pytest.skip("numba is not installed")
    if path == "pure_callback":
        monkeypatch.setattr(_jax, "_buffer_callback", None)
    elif _jax._buffer_callback is None:
        pytest.skip("this JAX has no buffer_callback")
    monkeypatch.setattr(_jax, "_STEPS", {})  # fresh bridges, traced with this path
    B = 24
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, 5))
    y = make_labels("pk4", B, seed=3)
    fn = getattr(tr, name)

    def value(x, y):
        return fn(y, x, 0.7)

    with mining.force("native", *STEPS), mining.force_body(body):
        v, g = jax.jit(jax.value_and_grad(value))(jnp.asarray(x), jnp.asarray(y))
    oracle = getattr(oracles, name)
    np.testing.assert_allclose(float(v), oracle(y, x, 0.7), rtol=1e-12)
    # the losses are piecewise smooth in x: no hinge or choice changes within 1e-6 here
    eps, g_ref = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        g_ref[idx] = (oracle(y, x + e, 0.7) - oracle(y, x - e, 0.7)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(g), g_ref, rtol=1e-6, atol=1e-8)
    assert np.abs(g_ref).max() > 0
