"""Every loss × backend × dtype × reduction × margin × metric against the float64 oracles.

The batches are in tests/loss_catalog.py (random P×K, unequal and singleton classes,
all-equal and all-distinct labels, duplicate rows, all-zero rows, B = 1, 2, 3, an
all-easy batch, batches without a semi-hard negative, dyadic grids full of exact ties).
Indices, bools and counts are compared exactly, values within ``tolerance(dtype)``.
"""
from __future__ import annotations

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import oracles as O

from loss_catalog import BY_NAME, JAX_FAST_SHAPE, LOSS_CASES, MARGINS
from loss_helpers import (ONLINE, ONLINE_BY_ID, REDUCTIONS, assert_close, check_array_result,
                          check_online)

# batch_contrastive ignores the metric: run it once per batch (euclidean)
_PARAMS = [
    pytest.param(loss, batch, metric, id=f"{loss.id}-{batch.name}-{metric}")
    for loss in ONLINE
    for batch, metric in LOSS_CASES
    if loss.has_metric or metric == "euclidean"
]


@pytest.mark.parametrize("loss, batch, metric", _PARAMS)
def test_online_loss_matches_oracle(request, xp, dtype, loss, batch, metric):
    if (xp.name == "jax" and batch.x.shape != JAX_FAST_SHAPE
            and not request.config.getoption("--runslow")):
        pytest.skip("slow: jax eager compiles per shape; the full jax sweep runs with --runslow")
    # the default run gives each dtype one of the two margins; --runslow both to both
    margins = MARGINS if request.config.getoption("--runslow") else MARGINS[dtype == "float32":][:1]
    for margin in margins:
        check_online(xp, loss, batch, metric, margin, dtype)


# --- properties of particular batches, beyond agreeing with the oracle -----------------

@pytest.mark.parametrize("loss", [v for v in ONLINE if not v.id.endswith("_soft")], ids=repr)
def test_all_easy_batch_gives_exactly_zero(xp, dtype, loss):
    batch = BY_NAME["all_easy"]
    x = xp.asarray(batch.x, dtype)
    for red in ("mean", "sum"):
        out = xp.to_numpy(loss.call(batch.labels, x, 1.0, reduction=red))
        assert float(out) == 0.0
    assert np.all(xp.to_numpy(loss.call(batch.labels, x, 1.0, reduction="none")) == 0.0)


def test_no_semihard_batch_uses_the_fallback(xp, dtype):
    # 1-D, labels 0 0 1 1 at 0, 2, 0.5, 0.75 (exact in every dtype)
    # anchor 0: positive 1 at d 2; negatives 2 (d 0.5), 3 (d 0.75): none farther -> the
    #   farthest, 3; l = 2 - 0.75 + 1
    # anchor 1: positive 0 at d 2; negatives 2 (d 1.5), 3 (d 1.25): none farther -> 2; l = 1.5
    # anchor 2: positive 3 at d 0.25; negatives 0 (d 0.5), 1 (d 1.5) -> semi-hard 0; l = 0.75
    # anchor 3: positive 2 at d 0.25; negatives 0 (d 0.75), 1 (d 1.25) -> semi-hard 0; l = 0.5
    batch = BY_NAME["no_semihard"]
    x = xp.asarray(batch.x, dtype)
    loss, info = tr.batch_semihard(batch.labels, x, 1.0, return_info=True, reduction="none")
    want = np.full((4, 4), -1)
    want[0, 1], want[1, 0], want[2, 3], want[3, 2] = 3, 2, 0, 0
    np.testing.assert_array_equal(xp.to_numpy(info["semihard_negative"]), want)
    assert float(xp.to_numpy(info["fraction_semihard"])) == 0.5
    assert int(xp.to_numpy(info["num_valid"])) == 4
    want_l = np.zeros((4, 4))
    want_l[0, 1], want_l[1, 0], want_l[2, 3], want_l[3, 2] = 2.25, 1.5, 0.75, 0.5
    np.testing.assert_array_equal(xp.to_numpy(loss), want_l)


def test_ties_go_to_the_smallest_index(xp, dtype):
    # 1-D points, exact in every dtype: anchor 0 at 0 has positives 1, 2 at distance 2
    # (tie, hardest positive -> 1) and negatives 3, 4 at distance 1 (tie, hardest
    # negative -> 3) and 5 at distance 3
    y = np.array([0, 0, 0, 1, 1, 1], dtype=np.int32)
    x = xp.asarray(np.array([[0.0], [2.0], [-2.0], [1.0], [-1.0], [3.0]]), dtype)
    _, info = tr.batch_hard(y, x, 1.0, return_info=True)
    hp = xp.to_numpy(info["hardest_positive"])
    hn = xp.to_numpy(info["hardest_negative"])
    assert hp[0] == 1 and hn[0] == 3
    # semi-hard for (0, 1): d(0,1) = 2; negatives farther than 2: only 5 (d = 3)
    # semi-hard for (0, 2): the same; no tie here, so check the fallback tie instead:
    # anchor 3 (at 1): positives 4 (d 2), 5 (d 2); negatives 0 (d 1), 1 (d 1), 2 (d 3):
    # for (3, 4) the only farther negative is 2; hardest negative of 3 is 0 (tie with 1)
    assert hn[3] == 0 and hp[3] == 4
    _, sinfo = tr.batch_semihard(y, x, 1.0, return_info=True)
    sh = xp.to_numpy(sinfo["semihard_negative"])
    assert sh[0, 1] == 5 and sh[3, 4] == 2
    # fallback ties: anchor 0 at 0, positive 1 at 4; negatives 2 (at 1) and 3 (at -1):
    # no negative is farther than 4, the farthest are 2 and 3 (tie) -> 2
    y2 = np.array([0, 0, 1, 1], dtype=np.int64)
    x2 = xp.asarray(np.array([[0.0], [4.0], [1.0], [-1.0]]), dtype)
    _, s2 = tr.batch_semihard(y2, x2, 0.5, return_info=True)
    assert xp.to_numpy(s2["semihard_negative"])[0, 1] == 2
    # the semi-hard rule's ties: anchor 0 at 0, positive 1 at 1; negatives 2 (at -3) and
    # 3 (at 3) at distance 3 > 1 (tie) -> 2
    x3 = xp.asarray(np.array([[0.0], [1.0], [-3.0], [3.0]]), dtype)
    _, s3 = tr.batch_semihard(y2, x3, 0.5, return_info=True)
    assert xp.to_numpy(s3["semihard_negative"])[0, 1] == 2


@pytest.mark.parametrize("label_dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16",
                                         "uint32", "uint64"])
def test_label_dtypes_give_the_same_result(xp, label_dtype):
    batch = BY_NAME["random_pk_4x2"]
    y = batch.labels.astype(label_dtype)
    x = xp.asarray(batch.x, "float64")
    for loss in ONLINE:
        got = xp.to_numpy(loss.call(y, x, 0.3))
        assert_close(got, loss.truth(batch.labels, batch.x, 0.3), "float64", loss.id)


def test_labels_as_backend_arrays(xp):
    batch = BY_NAME["fallback_mixed"]
    x = xp.asarray(batch.x, "float64")
    y = xp.asarray(batch.labels.astype(np.int64))
    for loss in ONLINE:
        got = xp.to_numpy(loss.call(y, x, 1.0, reduction="sum"))
        assert_close(got, loss.truth(batch.labels, batch.x, 1.0, reduction="sum"), "float64", loss.id)


def test_margin_zero_and_large(xp, dtype):
    batch = BY_NAME["ties_grid_8"]
    x = xp.asarray(batch.x, dtype)
    for margin in (0.0, 5.0):
        for loss in ONLINE:
            for red in ("mean", "none"):
                got = xp.to_numpy(loss.call(batch.labels, x, margin, reduction=red))
                assert_close(got, loss.truth(batch.labels, batch.x, margin, reduction=red), dtype,
                             f"{loss.id} margin={margin} {red}")


def test_margin_as_integer(xp):
    batch = BY_NAME["random_pk_4x2"]
    x = xp.asarray(batch.x, "float64")
    for loss in ONLINE:
        assert_close(xp.to_numpy(loss.call(batch.labels, x, 1)),
                     loss.truth(batch.labels, batch.x, 1.0), "float64", loss.id)


# --- explicit tuple forms -----------------------------------------------------------------

def _triplet_rows():
    rng = np.random.default_rng(7)
    n, dim = 6, 4
    a, p, q = (rng.normal(size=(n, dim)) for _ in range(3))
    cases = {
        "random": (a, p, q),
        "n1": (a[:1], p[:1], q[:1]),
        "positive_equals_anchor": (a, a.copy(), q),
        "negative_equals_anchor": (a, p, a.copy()),
        "all_zero": (np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2))),
        # dyadic: d(a, p) = 1, d(a, n) = 2 or 1 (a tie with the positive: l = m exactly)
        "exact": (np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 2.0]]),
                  np.array([[0.0, 2.0], [2.0, 1.0]])),
        # all-easy: the negative is 10 away, the positive 1
        "easy": (np.zeros((2, 2)), np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[10.0, 0.0], [0.0, -10.0]])),
    }
    return cases


TRIPLET_ROWS = _triplet_rows()


@pytest.mark.parametrize("rows", sorted(TRIPLET_ROWS))
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_loss_matches_oracle(xp, dtype, rows, metric, soft):
    a, p, n = TRIPLET_ROWS[rows]
    xa, xpos, xn = (xp.asarray(v, dtype) for v in (a, p, n))
    for margin in MARGINS:
        for red in REDUCTIONS:
            got = tr.triplet_loss(xa, xpos, xn, margin, metric=metric, soft=soft, reduction=red)
            want = O.triplet_loss(a, p, n, margin, metric=metric, soft=soft, reduction=red)
            g = check_array_result(xp, got, xa, (a.shape[0],) if red == "none" else ())
            assert_close(g, want, dtype, f"{rows} {metric} soft={soft} {red} m={margin}")


def test_triplet_loss_easy_is_exactly_zero(xp, dtype):
    a, p, n = (xp.asarray(v, dtype) for v in TRIPLET_ROWS["easy"])
    for metric in ("euclidean", "sqeuclidean"):
        assert float(xp.to_numpy(tr.triplet_loss(a, p, n, 1.0, metric=metric))) == 0.0


def _pair_rows():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    same = np.array([1, 0, 1, 0, 0, 1, 0])
    return {
        "random": (a, b, same),
        "bool_same": (a, b, same.astype(bool)),
        "n1_same": (a[:1], b[:1], np.array([True])),
        "n1_diff": (a[:1], b[:1], np.array([0], dtype=np.int8)),
        "duplicates": (a, a.copy(), same),
        "all_zero": (np.zeros((4, 2)), np.zeros((4, 2)), np.array([0, 1, 0, 1], dtype=np.uint8)),
        "exact": (np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 0.5], [3.0, 4.0], [1.0, 1.0]]),
                  np.array([0, 0, 1])),
    }


PAIR_ROWS = _pair_rows()


@pytest.mark.parametrize("rows", sorted(PAIR_ROWS))
def test_contrastive_loss_matches_oracle(xp, dtype, rows):
    a, b, same = PAIR_ROWS[rows]
    x1, x2 = xp.asarray(a, dtype), xp.asarray(b, dtype)
    for margin in MARGINS + (0.0, 6.0):
        for red in REDUCTIONS:
            got = tr.contrastive_loss(x1, x2, same, margin, reduction=red)
            want = O.contrastive_loss(a, b, same, margin, reduction=red)
            g = check_array_result(xp, got, x1, (a.shape[0],) if red == "none" else ())
            assert_close(g, want, dtype, f"{rows} {red} m={margin}")


def test_contrastive_loss_exact_values(xp, dtype):
    # pairs: negative at e = 0.5 (gap 0.5 -> 0.25), negative at e = 5 (0), positive at 0
    a, b, same = PAIR_ROWS["exact"]
    out = tr.contrastive_loss(xp.asarray(a, dtype), xp.asarray(b, dtype), same, 1.0, reduction="none")
    np.testing.assert_array_equal(xp.to_numpy(out), np.array([0.125, 0.0, 0.0]))


def test_batch_contrastive_exact_values(xp, dtype):
    # 1-D: 0, 1 (same class), 2 (other): e(0,1) = 1 -> 1; e(0,2) = 2, e(1,2) = 1 -> with
    # m = 2.5 the gaps are 0.5 and 1.5 -> 0.25 and 2.25; each unordered pair appears twice
    # and is halved: sum = 1 + 0.25 + 2.25 = 3.5, mean = 3.5 / 6
    y = np.array([0, 0, 1], dtype=np.uint8)
    x = xp.asarray(np.array([[0.0], [1.0], [2.0]]), dtype)
    assert float(xp.to_numpy(tr.batch_contrastive(y, x, 2.5, reduction="sum"))) == 3.5
    want_mean = float(np.asarray(3.5, dtype) / np.asarray(6, dtype))
    got = float(xp.to_numpy(tr.batch_contrastive(y, x, 2.5)))
    if xp.label.endswith("-gpu") and dtype == "float32":
        # XLA:GPU divides float32 by an approximate reciprocal (up to 2 ulp; seen on an H200)
        assert abs(got - want_mean) <= 2 * np.spacing(np.float32(want_mean))
    else:
        assert got == want_mean


# --- NaN propagation --------------------------------------------------------------------

@pytest.mark.parametrize("loss", ONLINE, ids=repr)
@pytest.mark.parametrize("where", ["in_a_term", "row_in_no_term"])
def test_nan_embeddings_give_nan_loss(xp, dtype, loss, where):
    batch = BY_NAME["random_pk_4x2"]
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])  # row 7 is a singleton: it enters no triplet
    x = batch.x.copy()
    row = 0 if where == "in_a_term" else 7
    x[row, 1] = np.nan
    xn = xp.asarray(x, dtype)
    for red in ("mean", "sum"):
        out = float(xp.to_numpy(loss.call(labels, xn, 1.0, reduction=red)))
        assert np.isnan(out), f"{loss.id} {red} gave {out} for NaN embeddings"
        assert np.isnan(loss.truth(labels, x, 1.0, reduction=red))
    # "none": every entry the oracle makes NaN is NaN here too (the library may mark more)
    got = xp.to_numpy(loss.call(labels, xn, 1.0, reduction="none"))
    want = loss.truth(labels, x, 1.0, reduction="none")
    assert np.all(np.isnan(got[np.isnan(want)]))


def test_nan_in_explicit_forms_gives_nan(xp, dtype):
    a, p, n = TRIPLET_ROWS["random"]
    a = a.copy()
    a[2, 0] = np.nan
    out = tr.triplet_loss(xp.asarray(a, dtype), xp.asarray(p, dtype), xp.asarray(n, dtype), 1.0)
    assert np.isnan(float(xp.to_numpy(out)))
    x1, x2, same = PAIR_ROWS["random"]
    x2 = x2.copy()
    x2[0, 0] = np.nan
    out = tr.contrastive_loss(xp.asarray(x1, dtype), xp.asarray(x2, dtype), same, 1.0, reduction="sum")
    assert np.isnan(float(xp.to_numpy(out)))


# --- loss-specific bad input ----------------------------------------------------------------

_BAD_MARGINS = [(-0.5, ValueError), (-1e-12, ValueError), (float("nan"), ValueError),
                (float("inf"), ValueError), (float("-inf"), ValueError), (True, TypeError),
                ("1.0", TypeError), (None, TypeError)]


@pytest.mark.parametrize("margin, exc", _BAD_MARGINS, ids=[repr(m) for m, _ in _BAD_MARGINS])
def test_bad_margin_is_rejected_naming_margin(xp, margin, exc):
    batch = BY_NAME["random_pk_2x2"]
    x = xp.asarray(batch.x, "float64")
    for loss in ONLINE:
        with pytest.raises(exc, match="margin"):
            loss.call(batch.labels, x, margin)
    a, p, n = (xp.asarray(v, "float64") for v in TRIPLET_ROWS["random"])
    with pytest.raises(exc, match="margin"):
        tr.triplet_loss(a, p, n, margin)
    x1, x2, same = PAIR_ROWS["random"]
    with pytest.raises(exc, match="margin"):
        tr.contrastive_loss(xp.asarray(x1, "float64"), xp.asarray(x2, "float64"), same, margin)


@pytest.mark.parametrize("reduction", ["avg", "MEAN", "", None, "batchmean"])
def test_unknown_reduction_is_rejected(xp, reduction):
    batch = BY_NAME["random_pk_2x2"]
    x = xp.asarray(batch.x, "float64")
    for loss in ONLINE:
        with pytest.raises(ValueError, match="reduction"):
            loss.call(batch.labels, x, 1.0, reduction=reduction)
    a, p, n = (xp.asarray(v, "float64") for v in TRIPLET_ROWS["random"])
    with pytest.raises(ValueError, match="reduction"):
        tr.triplet_loss(a, p, n, reduction=reduction)
    x1, x2, same = PAIR_ROWS["random"]
    with pytest.raises(ValueError, match="reduction"):
        tr.contrastive_loss(xp.asarray(x1, "float64"), xp.asarray(x2, "float64"), same,
                            reduction=reduction)


def test_unknown_metric_is_rejected(xp):
    batch = BY_NAME["random_pk_2x2"]
    x = xp.asarray(batch.x, "float64")
    for loss in ONLINE:
        if loss.has_metric:
            with pytest.raises(ValueError, match="metric"):
                loss.call(batch.labels, x, 1.0, metric="manhattan")
    a, p, n = (xp.asarray(v, "float64") for v in TRIPLET_ROWS["random"])
    with pytest.raises(ValueError, match="metric"):
        tr.triplet_loss(a, p, n, metric="l1")


def test_labels_embeddings_mismatch(xp):
    batch = BY_NAME["random_pk_3x4"]
    x = xp.asarray(batch.x, "float64")
    for loss in ONLINE:
        with pytest.raises(ValueError, match="labels"):
            loss.call(batch.labels[:-1], x, 1.0)
        with pytest.raises(ValueError, match="labels"):
            loss.call(np.concatenate([batch.labels, batch.labels[:1]]), x, 1.0)
        with pytest.raises(TypeError, match="labels"):
            loss.call(batch.labels.astype(np.float64), x, 1.0)


def test_explicit_forms_shape_mismatch(xp):
    a, p, n = TRIPLET_ROWS["random"]
    A = xp.asarray(a, "float64")
    with pytest.raises(ValueError, match="positive"):
        tr.triplet_loss(A, xp.asarray(p[:-1], "float64"), xp.asarray(n, "float64"))
    with pytest.raises(ValueError, match="negative"):
        tr.triplet_loss(A, xp.asarray(p, "float64"), xp.asarray(n[:, :-1], "float64"))
    with pytest.raises(TypeError, match="positive"):
        tr.triplet_loss(A, xp.asarray(p, "float32"), xp.asarray(n, "float64"))
    x1, x2, same = PAIR_ROWS["random"]
    X1 = xp.asarray(x1, "float64")
    with pytest.raises(ValueError, match="x2"):
        tr.contrastive_loss(X1, xp.asarray(x2[:-1], "float64"), same[:-1])
    with pytest.raises(ValueError, match="same"):
        tr.contrastive_loss(X1, xp.asarray(x2, "float64"), same[:-1])
    # floating ``same`` is valid (used as given, issue 13 item 7); complex is not
    with pytest.raises(TypeError, match="same"):
        tr.contrastive_loss(X1, xp.asarray(x2, "float64"), same.astype(np.complex128))


def test_loss_specific_keywords():
    # soft is not a parameter of the semi-hard or contrastive losses, metric not of contrastive
    y, x = np.array([0, 0, 1]), np.zeros((3, 2))
    with pytest.raises(TypeError):
        tr.batch_semihard(y, x, 1.0, soft=True)
    with pytest.raises(TypeError):
        tr.batch_contrastive(y, x, 1.0, metric="cosine")
    with pytest.raises(TypeError):
        tr.batch_contrastive(y, x, 1.0, soft=True)


# --- low precision: computed in float32, returned in the input's dtype ---------------------

@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_low_precision_inputs(xp, low):
    if xp.name == "array_api_strict" or (low == "bfloat16" and xp.name in ("numpy", "cupy")):
        pytest.skip(f"{xp.name} has no {low}")  # NumPy/CuPy bfloat16 (ml_dtypes): see below
    batch = BY_NAME["ties_grid_8"]  # multiples of 1/4: exact in float16 and bfloat16
    x = xp.asarray(batch.x, low)
    for loss in ONLINE:
        for red in ("mean", "none"):
            out = loss.call(batch.labels, x, 0.3, reduction=red)
            assert out.dtype == x.dtype, f"{loss.id}: {out.dtype} for {low} input"
            rtol = 1e-2 if low == "bfloat16" else 2e-3
            np.testing.assert_allclose(np.asarray(xp.to_numpy(out), dtype=np.float64),
                                       loss.truth(batch.labels, batch.x, 0.3, reduction=red),
                                       rtol=rtol, atol=rtol, err_msg=f"{loss.id} {red}")


def test_a_dtype_the_namespace_does_not_know_is_a_clear_error():
    """NumPy (and CuPy) arrays of ml_dtypes' bfloat16 are not array-API dtypes: a TypeError
    naming the argument, not NumPy's internal ``isdtype`` message."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.zeros((4, 2), dtype=ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match=r"^embeddings: dtype bfloat16 is not supported .*cast to float32"):
        tr.batch_all(np.array([0, 0, 1, 1]), x)
    with pytest.raises(TypeError, match=r"^embeddings: dtype bfloat16"):
        tr.pairwise_distances(x)


def test_softplus_above_20_is_not_truncated(xp):
    """softplus(x) = x + log1p(e^-x): above x = 20 the tail e^-x is still there (torch's
    ``nn.functional.softplus`` returns x unchanged above its threshold of 20, which made
    every soft term there short by up to 2e-9; found by the slow fuzz run)."""
    a, p, n = (xp.asarray([[v]], dtype="float64") for v in (0.0, 21.0, 0.0))
    got = float(xp.to_numpy(tr.triplet_loss(a, p, n, 0.0, soft=True)))
    want = O.triplet_loss([[0.0]], [[21.0]], [[0.0]], 0.0, soft=True)
    assert abs(got - want) <= 1e-14 * want
    y = [0, 0, 1]
    x = xp.asarray([[0.0], [21.0], [0.0]], dtype="float64")
    got = float(xp.to_numpy(tr.batch_hard(y, x, 0.0, soft=True)))
    want = O.batch_hard(y, [[0.0], [21.0], [0.0]], 0.0, soft=True)
    assert abs(got - want) <= 1e-14 * abs(want)


def test_contrastive_square_that_overflows_is_inf(xp):
    """A hinge ``max(m - e, 0)`` whose square overflows the dtype gives ``inf`` on every
    backend, and the oracles agree (they squared with ``** 2``, which raises
    ``OverflowError`` in Python; found by the slow fuzz run with a margin of 1e155)."""
    y, rows, m = [0, 1], [[0.0], [1.0]], 1e155
    want = O.batch_contrastive(y, rows, m)
    assert want == float("inf")
    got = float(xp.to_numpy(tr.batch_contrastive(y, xp.asarray(rows, dtype="float64"), m)))
    assert got == want
    same = np.array([False])
    want = O.contrastive_loss([[0.0]], [[1.0]], same, m)
    assert want == float("inf")
    a, b = (xp.asarray(r, dtype="float64") for r in ([[0.0]], [[1.0]]))
    assert float(xp.to_numpy(tr.contrastive_loss(a, b, same, m))) == want
