"""Bad input (SEMANTICS.md, "Across every function"): ValueError for bad shapes and values,
TypeError for wrong kinds, each naming the argument; the oracle raises the same type.
NaN in the embeddings gives a NaN loss for every loss."""
from __future__ import annotations

import math

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import oracles

Y = np.array([0, 1, 0, 1, 2, 2])
X = np.random.default_rng(0).standard_normal((6, 4))

# (name, library function, oracle function, takes metric=)
BATCH = [
    ("batch_all", tr.batch_all, oracles.batch_all, True),
    ("batch_hard", tr.batch_hard, oracles.batch_hard, True),
    ("batch_semihard", tr.batch_semihard, oracles.batch_semihard, True),
    ("batch_contrastive", tr.batch_contrastive, oracles.batch_contrastive, False),
]
BATCH_IDS = [b[0] for b in BATCH]
MASKS = [tr.anchor_positive_mask, tr.anchor_negative_mask, tr.triplet_mask]
ORACLE_MASKS = [oracles.anchor_positive_mask, oracles.anchor_negative_mask, oracles.triplet_mask]


def raises_like_oracle(exc, match, call, oracle_call=None):
    with pytest.raises(exc, match=match):
        call()
    if oracle_call is not None:
        with pytest.raises(exc):
            oracle_call()


# ------------------------------------------------------------------------ embeddings / labels
BAD_ARRAYS = [
    # (id, labels, embeddings, exception, argument named)
    ("emb_1d", Y, X[:, 0], ValueError, "embeddings"),
    ("emb_3d", Y, X[:, :, None], ValueError, "embeddings"),
    ("emb_0d", Y[:1], np.float64(1.0), ValueError, "embeddings"),
    ("empty_batch", Y[:0], X[:0], ValueError, "embeddings"),
    ("emb_int", Y, (X * 10).astype(np.int64), TypeError, "embeddings"),
    ("emb_bool", Y, X > 0, TypeError, "embeddings"),
    ("labels_2d", Y[:, None], X, ValueError, "labels"),
    ("labels_0d", np.int64(1), X, ValueError, "labels"),
    ("labels_float", Y.astype(np.float64), X, TypeError, "labels"),
    ("labels_float_integral_values", np.array([0.0, 1, 0, 1, 2, 2]), X, TypeError, "labels"),
    ("labels_bool", Y > 0, X, TypeError, "labels"),
    ("labels_short", Y[:5], X, ValueError, "labels"),
    ("labels_long", np.r_[Y, 3], X, ValueError, "labels"),
]


@pytest.mark.parametrize("case", BAD_ARRAYS, ids=[c[0] for c in BAD_ARRAYS])
@pytest.mark.parametrize("loss", BATCH, ids=BATCH_IDS)
def test_batch_losses_bad_arrays(xp, loss, case):
    _, fn, oracle, _ = loss
    _, y, x, exc, arg = case
    try:
        yb, xb = xp.asarray(y), xp.asarray(x)
    except Exception as e:  # a framework that cannot even hold this input (e.g. strict 0-d int)
        pytest.skip(f"{xp.label} cannot build the input: {e}")
    raises_like_oracle(exc, arg, lambda: fn(yb, xb), lambda: oracle(y, x))


@pytest.mark.parametrize("loss", BATCH, ids=BATCH_IDS)
def test_batch_losses_bad_lists(loss):
    _, fn, oracle, _ = loss
    raises_like_oracle(TypeError, "labels", lambda: fn(["a", "b"], [[0.0], [1.0]]),
                       lambda: oracle(["a", "b"], [[0.0], [1.0]]))
    # a list of Python ints is an integer array, not floating embeddings
    raises_like_oracle(TypeError, "embeddings", lambda: fn([0, 1], [[0], [1]]),
                       lambda: oracle([0, 1], [[0], [1]]))
    raises_like_oracle(ValueError, "labels", lambda: fn([0, 1, 1], [[0.0], [1.0]]),
                       lambda: oracle([0, 1, 1], [[0.0], [1.0]]))


@pytest.mark.parametrize("case", [c for c in BAD_ARRAYS if c[4] == "embeddings"],
                         ids=[c[0] for c in BAD_ARRAYS if c[4] == "embeddings"])
def test_pairwise_distances_bad_embeddings(xp, case):
    _, _, x, exc, arg = case
    try:
        xb = xp.asarray(x)
    except Exception as e:
        pytest.skip(f"{xp.label} cannot build the input: {e}")
    raises_like_oracle(exc, arg, lambda: tr.pairwise_distances(xb), lambda: oracles.pairwise_distances(x))


BAD_LABELS = [
    ("labels_2d", Y[:, None], ValueError),
    ("labels_empty", Y[:0], ValueError),
    ("labels_float", Y.astype(np.float32), TypeError),
    ("labels_bool", Y > 0, TypeError),
]


@pytest.mark.parametrize("case", BAD_LABELS, ids=[c[0] for c in BAD_LABELS])
@pytest.mark.parametrize("k", range(3), ids=["positive", "negative", "triplet"])
def test_masks_bad_labels(xp, k, case):
    _, y, exc = case
    yb = xp.asarray(y)
    raises_like_oracle(exc, "labels", lambda: MASKS[k](yb), lambda: ORACLE_MASKS[k](y))


# ------------------------------------------------------------------------ options
BAD_MARGINS = [(-1.0, ValueError), (-1e-12, ValueError), (math.nan, ValueError), (math.inf, ValueError),
               (-math.inf, ValueError), (np.float32("nan"), ValueError), ("1.0", TypeError),
               (None, TypeError), (True, TypeError), ([1.0], TypeError),
               # an array margin: a wrong kind or a wrong shape; the contract does not say
               # which (the library says ValueError, the oracle TypeError)
               (np.ones(2), (TypeError, ValueError))]
MARGIN_IDS = ["neg", "tiny_neg", "nan", "inf", "-inf", "np_nan", "str", "None", "bool", "list", "array"]


@pytest.mark.parametrize("margin,exc", BAD_MARGINS, ids=MARGIN_IDS)
@pytest.mark.parametrize("loss", BATCH, ids=BATCH_IDS)
def test_bad_margin(loss, margin, exc):
    _, fn, oracle, _ = loss
    raises_like_oracle(exc, "margin", lambda: fn(Y, X, margin), lambda: oracle(Y, X, margin))


@pytest.mark.parametrize("margin,exc", BAD_MARGINS, ids=MARGIN_IDS)
def test_bad_margin_explicit(margin, exc):
    raises_like_oracle(exc, "margin", lambda: tr.triplet_loss(X, X, X, margin),
                       lambda: oracles.triplet_loss(X, X, X, margin))
    same = np.array([1, 0, 1, 0, 1, 0])
    raises_like_oracle(exc, "margin", lambda: tr.contrastive_loss(X, X, same, margin),
                       lambda: oracles.contrastive_loss(X, X, same, margin))


def test_zero_margin_and_array_margin_are_accepted():
    for _, fn, oracle, _ in BATCH:
        np.testing.assert_allclose(float(fn(Y, X, 0.0)), oracle(Y, X, 0.0), rtol=1e-12)
        np.testing.assert_allclose(float(fn(Y, X, np.float64(0.5))), oracle(Y, X, 0.5), rtol=1e-12)


@pytest.mark.parametrize("bad", ["euclid", "Euclidean", "l2", "cityblock", "", None, 2])
def test_unknown_metric(bad):
    raises_like_oracle(ValueError, "metric", lambda: tr.pairwise_distances(X, metric=bad),
                       lambda: oracles.pairwise_distances(X, metric=bad))
    for _, fn, oracle, has_metric in BATCH:
        if has_metric:
            raises_like_oracle(ValueError, "metric", lambda: fn(Y, X, metric=bad),
                               lambda: oracle(Y, X, metric=bad))
    raises_like_oracle(ValueError, "metric", lambda: tr.triplet_loss(X, X, X, metric=bad),
                       lambda: oracles.triplet_loss(X, X, X, metric=bad))


def test_batch_contrastive_has_no_metric():
    with pytest.raises(TypeError, match="metric"):
        tr.batch_contrastive(Y, X, metric="cosine")


@pytest.mark.parametrize("bad", ["avg", "Mean", "", None, "max"])
def test_unknown_reduction(bad):
    for _, fn, oracle, _ in BATCH:
        raises_like_oracle(ValueError, "reduction", lambda: fn(Y, X, reduction=bad),
                           lambda: oracle(Y, X, reduction=bad))
    raises_like_oracle(ValueError, "reduction", lambda: tr.triplet_loss(X, X, X, reduction=bad),
                       lambda: oracles.triplet_loss(X, X, X, reduction=bad))
    same = np.array([1, 0, 1, 0, 1, 0])
    raises_like_oracle(ValueError, "reduction", lambda: tr.contrastive_loss(X, X, same, reduction=bad),
                       lambda: oracles.contrastive_loss(X, X, same, reduction=bad))


@pytest.mark.parametrize("bad", ["tensorflow", "numpyy", ""])
def test_unknown_backend_everywhere(bad):
    calls = [lambda: tr.pairwise_distances(X, backend=bad),
             lambda: tr.triplet_loss(X, X, X, backend=bad),
             lambda: tr.contrastive_loss(X, X, [1, 0, 1, 0, 1, 0], backend=bad)]
    calls += [lambda fn=fn: fn(Y, X, backend=bad) for _, fn, _, _ in BATCH]
    calls += [lambda fn=fn: fn(Y, backend=bad) for fn in MASKS]
    for call in calls:
        with pytest.raises(ValueError, match="backend"):
            call()


# ------------------------------------------------------------------------ explicit forms
def test_triplet_loss_bad_arrays(xp):
    a = xp.asarray(X)
    raises_like_oracle(ValueError, "anchor", lambda: tr.triplet_loss(xp.asarray(X[:, 0]), a, a),
                       lambda: oracles.triplet_loss(X[:, 0], X, X))
    raises_like_oracle(ValueError, "anchor", lambda: tr.triplet_loss(xp.asarray(X[:0]), xp.asarray(X[:0]),
                                                                     xp.asarray(X[:0])),
                       lambda: oracles.triplet_loss(X[:0], X[:0], X[:0]))
    raises_like_oracle(ValueError, "positive", lambda: tr.triplet_loss(a, xp.asarray(X[:5]), a),
                       lambda: oracles.triplet_loss(X, X[:5], X))
    raises_like_oracle(ValueError, "negative", lambda: tr.triplet_loss(a, a, xp.asarray(X[:, :3])),
                       lambda: oracles.triplet_loss(X, X, X[:, :3]))
    raises_like_oracle(TypeError, "positive", lambda: tr.triplet_loss(a, xp.asarray(X > 0), a),
                       lambda: oracles.triplet_loss(X, X > 0, X))
    # inputs of different floating dtypes: the library asks for one dtype
    with pytest.raises(TypeError, match="negative"):
        tr.triplet_loss(a, a, xp.asarray(X, dtype="float32"))


def test_contrastive_loss_bad_arrays(xp):
    a = xp.asarray(X)
    same = xp.asarray(np.array([1, 0, 1, 0, 1, 0]))
    s_np = np.array([1, 0, 1, 0, 1, 0])
    raises_like_oracle(ValueError, "x1", lambda: tr.contrastive_loss(xp.asarray(X[:, 0]), a, same),
                       lambda: oracles.contrastive_loss(X[:, 0], X, s_np))
    raises_like_oracle(ValueError, "x2", lambda: tr.contrastive_loss(a, xp.asarray(X[:4]), same),
                       lambda: oracles.contrastive_loss(X, X[:4], s_np))
    raises_like_oracle(ValueError, "same", lambda: tr.contrastive_loss(a, a, xp.asarray(s_np[:5])),
                       lambda: oracles.contrastive_loss(X, X, s_np[:5]))
    raises_like_oracle(ValueError, "same", lambda: tr.contrastive_loss(a, a, xp.asarray(s_np[:, None])),
                       lambda: oracles.contrastive_loss(X, X, s_np[:, None]))
    raises_like_oracle(TypeError, "x1", lambda: tr.contrastive_loss(xp.asarray(s_np[:, None] * np.ones((6, 2), int)), a, same),
                       lambda: oracles.contrastive_loss(s_np[:, None] * np.ones((6, 2), int), X, s_np))


# ------------------------------------------------------------------------ NaN in, NaN out
def _nan_batch():
    x = X.copy()
    x[4, 2] = np.nan  # label 2 has rows 4 and 5: the NaN row is an anchor and a negative
    return x


def _nan_isolated():
    # row 3 is the only one of its label: no positive pair uses it as an anchor, and it is
    # only a negative; with labels [0, 0, 1, 2] every loss still sees it
    x = np.random.default_rng(1).standard_normal((4, 3))
    x[3, 0] = np.nan
    return np.array([0, 0, 1, 2]), x


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", BATCH, ids=BATCH_IDS)
def test_nan_embeddings_give_nan(xp, loss, reduction):
    _, fn, oracle, _ = loss
    for y, x in [(Y, _nan_batch()), _nan_isolated()]:
        out = fn(xp.asarray(y), xp.asarray(x), reduction=reduction)
        assert math.isnan(float(xp.to_numpy(out))), (reduction, float(xp.to_numpy(out)))
        assert math.isnan(oracle(y, x, reduction=reduction))
    if fn in (tr.batch_all, tr.batch_hard):
        out = fn(xp.asarray(Y), xp.asarray(_nan_batch()), soft=True, reduction=reduction)
        assert math.isnan(float(xp.to_numpy(out)))


def test_nan_row_that_enters_no_term_still_gives_nan(xp):
    # a single-class batch has no negatives: batch_all, batch_hard and batch_semihard have
    # no term at all (the loss would be 0), so the NaN row enters none; the loss must still
    # be NaN, never a silent number
    y = np.zeros(5, dtype=np.int64)
    x = np.random.default_rng(2).standard_normal((5, 3))
    x[4] = np.nan
    for _, fn, oracle, _ in BATCH:
        out = fn(xp.asarray(y), xp.asarray(x))
        assert math.isnan(float(xp.to_numpy(out))), fn.__name__
        assert math.isnan(oracle(y, x))
    # and without the NaN these are exactly 0 (the test above is not vacuous)
    x[4] = 0.5
    for _, fn, _, _ in BATCH[:3]:
        assert float(xp.to_numpy(fn(xp.asarray(y), xp.asarray(x)))) == 0.0


@pytest.mark.parametrize("where", ["anchor", "positive", "negative"])
def test_nan_explicit_triplet_loss(xp, where):
    rows = {k: X.copy() + i for i, k in enumerate(["anchor", "positive", "negative"])}
    rows[where][2, 1] = np.nan
    out = tr.triplet_loss(*(xp.asarray(rows[k]) for k in ["anchor", "positive", "negative"]))
    assert math.isnan(float(xp.to_numpy(out)))
    assert math.isnan(oracles.triplet_loss(rows["anchor"], rows["positive"], rows["negative"]))


@pytest.mark.parametrize("where", ["x1", "x2"])
def test_nan_explicit_contrastive_loss(xp, where):
    x1, x2 = X.copy(), X[::-1].copy()
    (x1 if where == "x1" else x2)[0, 0] = np.nan
    same = np.array([1, 0, 1, 0, 1, 0])
    out = tr.contrastive_loss(xp.asarray(x1), xp.asarray(x2), xp.asarray(same))
    assert math.isnan(float(xp.to_numpy(out)))
    assert math.isnan(oracles.contrastive_loss(x1, x2, same))


def test_nan_embeddings_make_the_whole_none_array_nan(xp):
    """Decision (docs/semantics.md, NaN): with ``reduction="none"`` every entry is NaN,
    whichever row holds the NaN; the same batch without it has no NaN at all."""
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    for row in (0, 5):
        x = np.random.default_rng(row).normal(size=(8, 3))
        for _, fn, _, _ in BATCH:
            clean = xp.to_numpy(fn(xp.asarray(y), xp.asarray(x), reduction="none"))
            assert not np.isnan(clean).any(), fn.__name__
            x_nan = x.copy()
            x_nan[row, 1] = np.nan
            out = xp.to_numpy(fn(xp.asarray(y), xp.asarray(x_nan), reduction="none"))
            assert out.shape == clean.shape and np.isnan(out).all(), (fn.__name__, row)
