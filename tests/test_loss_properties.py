"""Hypothesis property tests of the losses against the oracles.

* exact batches (coordinates multiples of 1/4, B a power of two so the centred Gram matrix
  is exact): every loss, reduction and info field — indices and counts exactly — in
  float32 and float64, on every backend;
* continuous random batches of any size: the values that are continuous in the distances
  (batch-all, batch-hard, contrastive, soft variants) for every metric.

Deterministic (``derandomize=True``), small ``max_examples`` (25; 6 on JAX), no deadline.  JAX compiles
each eager operation per shape, so on JAX the shape is fixed to (8, 2).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loss_catalog import JAX_FAST_SHAPE, Batch
from loss_helpers import ONLINE, ONLINE_BY_ID, REDUCTIONS, assert_close, check_online

_HC = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def SETTINGS(case):
    # JAX dispatches each eager operation at ~0.1 ms: fewer examples there
    n = 6 if case.name == "jax" else 25
    return settings(max_examples=n, deadline=None, derandomize=True, suppress_health_check=_HC)


@st.composite
def exact_batches(draw, fixed_shape=None):
    if fixed_shape is None:
        b = draw(st.sampled_from([1, 2, 4, 8]))
        dim = draw(st.integers(1, 3))
    else:
        b, dim = fixed_shape
    ncls = draw(st.integers(1, 4))
    labels = np.array(draw(st.lists(st.integers(0, ncls - 1), min_size=b, max_size=b)), dtype=np.int32)
    ints = np.array(draw(st.lists(st.integers(-4, 4), min_size=b * dim, max_size=b * dim)))
    return Batch("hypothesis", labels, ints.reshape(b, dim) * 0.25, True)


@st.composite
def float_batches(draw, fixed_shape=None):
    if fixed_shape is None:
        b = draw(st.integers(1, 9))
        dim = draw(st.integers(1, 4))
    else:
        b, dim = fixed_shape
    labels = np.array(draw(st.lists(st.integers(0, 3), min_size=b, max_size=b)), dtype=np.int64)
    vals = draw(st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=b * dim, max_size=b * dim))
    return labels, np.array(vals, dtype=np.float64).reshape(b, dim)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_exact_batches_match_the_oracle_exactly(xp, dtype, metric):
    fixed = JAX_FAST_SHAPE if xp.name == "jax" else None

    @SETTINGS(xp)
    @given(batch=exact_batches(fixed), margin=st.sampled_from([0.0, 0.3, 0.5, 1.0, 2.0]))
    def prop(batch, margin):
        for loss in ONLINE:
            if loss.has_metric or metric == "euclidean":
                check_online(xp, loss, batch, metric, margin, dtype)

    prop()


# values continuous in the distances: unaffected by ties and near-ties
_CONTINUOUS = ["batch_all", "batch_all_soft", "batch_hard", "batch_hard_soft", "batch_contrastive"]


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_continuous_values_match_the_oracle(xp, metric):
    fixed = JAX_FAST_SHAPE if xp.name == "jax" else None

    @SETTINGS(xp)
    @given(data=float_batches(fixed), margin=st.floats(0, 2))
    def prop(data, margin):
        labels, x = data
        xn = xp.asarray(x, "float64")
        for lid in _CONTINUOUS:
            loss = ONLINE_BY_ID[lid]
            if not loss.has_metric and metric != "euclidean":
                continue
            for red in REDUCTIONS:
                # batch_all's mean divides by the number of positive triplets, which a
                # near-tie at the hinge may change: compare its sum and "none" only
                if lid == "batch_all" and red == "mean":
                    continue
                got = xp.to_numpy(loss.call(labels, xn, margin, metric, reduction=red))
                want = loss.truth(labels, x, margin, metric, reduction=red)
                # the Gram trick's error is relative to |x|², not to d: absolute slack
                np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8 * (1 + np.abs(x).max() ** 2),
                                           err_msg=f"{lid} {red} margin={margin}")

    prop()
