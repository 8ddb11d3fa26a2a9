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


# ------------------------------------------------------------------------ issue 13, item 8
# arguments that were silently misread: each must raise a TypeError/ValueError naming it
EXPLICIT_SAME = np.array([1, 0, 1, 0, 1, 0])
NOT_BOOLS = ["False", "no", "", 0, 1, None, 1.0, np.array(True)]


@pytest.mark.parametrize("flag", NOT_BOOLS, ids=[repr(f) for f in NOT_BOOLS])
def test_flags_must_be_bools(flag):
    for _, fn, oracle, _ in BATCH:
        raises_like_oracle(TypeError, "return_info", lambda: fn(Y, X, return_info=flag),
                           lambda: oracle(Y, X, return_info=flag))
    for fn, oracle in [(tr.batch_all, oracles.batch_all), (tr.batch_hard, oracles.batch_hard)]:
        raises_like_oracle(TypeError, "soft", lambda: fn(Y, X, soft=flag), lambda: oracle(Y, X, soft=flag))
    raises_like_oracle(TypeError, "soft", lambda: tr.triplet_loss(X, X, X, soft=flag),
                       lambda: oracles.triplet_loss(X, X, X, soft=flag))


def test_numpy_bools_are_bools():
    for fn in (tr.batch_all, tr.batch_hard):
        assert float(fn(Y, X, soft=np.True_)) == float(fn(Y, X, soft=True))
        loss, info = fn(Y, X, return_info=np.True_)
        assert float(loss) == float(fn(Y, X)) and "num_valid" in info


@pytest.mark.parametrize("margin", [np.True_, np.False_, np.array(True), np.complex128(1.0),
                                    np.array(1 + 0j), np.array(1.0 + 2j, dtype=np.complex64), 1 + 0j],
                         ids=["np_True", "np_False", "bool_0d", "complex", "complex_0d", "complex64_0d", "py_complex"])
def test_bool_and_complex_margins_are_refused(margin):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way to the TypeError
        for _, fn, oracle, _ in BATCH:
            raises_like_oracle(TypeError, "margin", lambda: fn(Y, X, margin), lambda: oracle(Y, X, margin))
        raises_like_oracle(TypeError, "margin", lambda: tr.triplet_loss(X, X, X, margin),
                           lambda: oracles.triplet_loss(X, X, X, margin))
        raises_like_oracle(TypeError, "margin", lambda: tr.contrastive_loss(X, X, EXPLICIT_SAME, margin),
                           lambda: oracles.contrastive_loss(X, X, EXPLICIT_SAME, margin))


def test_bool_and_complex_native_margins_are_refused(xp):
    for m in (np.array(True), np.array(1 + 0j)):
        try:
            mb = xp.asarray(m)
        except Exception:  # a framework without complex numbers
            continue
        for _, fn, _, _ in BATCH:
            with pytest.raises(TypeError, match="margin"):
                fn(xp.asarray(Y), xp.asarray(X), mb)


@pytest.mark.parametrize("labels,exc", [
    (None, TypeError),
    (["a", "b", "a", "b", "c", "c"], TypeError),
    (np.array(["a", "b", "a", "b", "c", "c"], dtype=object), TypeError),
    ([b"a", b"b", b"a", b"b", b"c", b"c"], TypeError),
    ([0, 1, 0, 1, 2, 2.5], TypeError),
    ([0, [1], 0, 1, 2, 2], ValueError),
    ([[0, 1], [0], [1, 2], [2], [0], [1]], ValueError),
    ([0, 1, 0, 1, 2, 2**70], TypeError),  # not representable by any integer dtype
], ids=["None", "str", "object", "bytes", "float_list", "ragged_1", "ragged_2", "beyond_uint64"])
def test_bad_labels_name_the_argument_on_every_backend(xp, labels, exc):
    """On every backend the error names ``labels`` (not torch's or JAX's own conversion
    message)."""
    xb = xp.asarray(X)
    for _, fn, _, _ in BATCH:
        with pytest.raises(exc, match="labels"):
            fn(labels, xb)
    if labels is not None:
        for mask in MASKS:
            with pytest.raises(exc, match="labels"):
                mask(labels, backend=xp.name)


@pytest.mark.parametrize("emb,exc", [
    ([["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"], ["i", "j"], ["k", "l"]], TypeError),
    ([[0.0, 1.0], [1.0], [0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], ValueError),
    (X.astype(np.complex128), TypeError),
    (None, TypeError),
], ids=["str", "ragged", "complex", "None"])
def test_bad_embeddings_lists_name_the_argument_on_every_backend(xp, emb, exc):
    for _, fn, _, _ in BATCH:
        with pytest.raises(exc, match="embeddings"):
            fn(Y, emb, backend=xp.name)
    with pytest.raises(exc, match="anchor"):
        tr.triplet_loss(emb, X, X, backend=xp.name)


# ------------------------------------------------------------------------ issue 11, item 7
def test_peer_argument_order_says_so(xp):
    """``fn(embeddings, labels)`` (pytorch-metric-learning's order) gets a message that
    says the arguments look swapped; the correct order works."""
    yb, xb = xp.asarray(Y), xp.asarray(X)
    for _, fn, oracle, _ in BATCH:
        with pytest.raises(TypeError, match="swapped.*\\(labels, embeddings\\)"):
            fn(xb, yb)
        np.testing.assert_allclose(float(xp.to_numpy(fn(yb, xb))), oracle(Y, X), rtol=1e-9)
    with pytest.raises(TypeError, match="swapped"):
        tr.batch_hard(X.tolist(), Y.tolist())


def test_unknown_keyword_lists_what_the_function_takes():
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'metric'.*"
                                        r"batch_contrastive\(labels, embeddings, margin, \*, reduction, return_info, backend, "
                                        r"ref_embeddings, ref_labels, process_group, axis_name, chunk_size\)"):
        tr.batch_contrastive(Y, X, metric="cosine")
    with pytest.raises(TypeError, match=r"'soft'.*batch_semihard\(.*metric"):
        tr.batch_semihard(Y, X, soft=True)
    with pytest.raises(TypeError, match=r"'margins'.*triplet_loss\(anchor, positive, negative, margin, \*"):
        tr.triplet_loss(X, X, X, margins=1.0)
    with pytest.raises(TypeError, match=r"at most 3 positional.*keyword-only.*metric"):
        tr.batch_hard(Y, X, 1.0, "cosine")


def test_the_argument_checks_keep_signatures_and_real_errors():
    import inspect

    for fn in (tr.batch_all, tr.batch_hard, tr.batch_semihard, tr.batch_contrastive,
               tr.triplet_loss, tr.contrastive_loss):
        params = list(inspect.signature(fn).parameters)
        assert params[:2] in (["labels", "embeddings"], ["anchor", "positive"], ["x1", "x2"]), params
        assert fn.__doc__ and fn.__name__ in repr(fn)
    # a TypeError raised inside the function keeps its own message
    with pytest.raises(TypeError, match="embeddings: expected a real floating dtype, got int64"):
        tr.batch_hard(Y, (X * 10).astype(np.int64))


# ------------------------------------------------------------------------ issue 13, item 7
def test_contrastive_loss_same_is_used_as_given(xp, dtype):
    """``same`` of any real dtype enters the formula as given: ``same=[2, 0]`` weighs
    ``e²`` twice and the hinge by −1 (it is not turned into True)."""
    x1 = np.array([[0.0], [0.0], [0.0]])
    x2 = np.array([[0.2], [1.5], [0.4]])
    a, b = xp.asarray(x1, dtype), xp.asarray(x2, dtype)
    # e = 0.2, 1.5, 0.4; margin 1: hinge² = 0.64, 0, 0.36
    cases = {
        "int": (np.array([2, 0, 1]), [0.5 * (2 * 0.04 - 0.64), 0.0, 0.5 * 0.16]),
        "float": (np.array([0.25, 0.5, 0.0]), [0.5 * (0.25 * 0.04 + 0.75 * 0.64), 0.5 * 0.5 * 2.25, 0.5 * 0.36]),
        "bool": (np.array([True, False, False]), [0.5 * 0.04, 0.0, 0.5 * 0.36]),
        "uint8": (np.array([3, 1, 0], dtype=np.uint8), [0.5 * (3 * 0.04 - 2 * 0.64), 0.5 * 2.25, 0.5 * 0.36]),
    }
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-6, atol=1e-6)
    for name, (same, want) in cases.items():
        for s in (same, same.tolist(), xp.asarray(same)):
            got = xp.to_numpy(tr.contrastive_loss(a, b, s, reduction="none"))
            np.testing.assert_allclose(got, want, err_msg=name, **tol)
            np.testing.assert_allclose(float(xp.to_numpy(tr.contrastive_loss(a, b, s))), np.mean(want),
                                       err_msg=name, **tol)
        np.testing.assert_allclose(oracles.contrastive_loss(x1, x2, same, reduction="none"), want,
                                   rtol=1e-12, atol=1e-15, err_msg=name)


def test_contrastive_loss_same_bad_kinds():
    for bad, exc in [(["a", "b", "c", "d", "e", "f"], TypeError), (EXPLICIT_SAME.astype(np.complex128), TypeError),
                     ([0, [1], 0, 1, 0, 1], ValueError), (None, TypeError)]:
        with pytest.raises(exc, match="same"):
            tr.contrastive_loss(X, X, bad)


def test_contrastive_loss_non_finite_same_gives_nan(xp):
    for v in (np.nan, np.inf):
        same = np.array([1.0, 0, 1, 0, 1, v])
        out = tr.contrastive_loss(xp.asarray(X), xp.asarray(X[::-1].copy()), xp.asarray(same))
        assert math.isnan(float(xp.to_numpy(out)))
        assert math.isnan(oracles.contrastive_loss(X, X[::-1], same))


# ------------------------------------------------------------------------ issue 13, item 5
@pytest.mark.parametrize("value", [np.inf, -np.inf], ids=["inf", "-inf"])
def test_infinite_embeddings_give_nan_on_every_backend(xp, value):
    """Decision (docs/semantics.md, "Non-finite input"): an infinity is treated like a NaN
    — the loss is NaN (every entry of "none"), the same on every backend and in the oracle."""
    for reduction in ("mean", "sum", "none"):
        _check_infinite(xp, value, reduction)


def _check_infinite(xp, value, reduction):
    for y, x in [(Y, _nan_batch()), _nan_isolated()]:
        x = np.where(np.isnan(x), value, x)
        for _, fn, oracle, _ in BATCH:
            out = np.asarray(xp.to_numpy(fn(xp.asarray(y), xp.asarray(x), reduction=reduction)))
            assert np.isnan(out).all(), (fn.__name__, out)
            if reduction != "none":
                assert math.isnan(oracle(y, x, reduction=reduction)), fn.__name__
        for fn in (tr.batch_all, tr.batch_hard):
            out = np.asarray(xp.to_numpy(fn(xp.asarray(y), xp.asarray(x), soft=True, reduction=reduction)))
            assert np.isnan(out).all()
    x2 = X.copy()
    x2[1, 3] = value
    for where in range(3):
        rows = [X, X[::-1].copy(), X + 1]
        rows[where] = x2
        out = np.asarray(xp.to_numpy(tr.triplet_loss(*(xp.asarray(r) for r in rows), reduction=reduction)))
        assert np.isnan(out).all()
    for where in range(2):
        rows = [X, X[::-1].copy()]
        rows[where] = x2
        out = np.asarray(xp.to_numpy(tr.contrastive_loss(*(xp.asarray(r) for r in rows), xp.asarray(EXPLICIT_SAME),
                                                         reduction=reduction)))
        assert np.isnan(out).all()
        if reduction != "none":
            assert math.isnan(oracles.contrastive_loss(*rows, EXPLICIT_SAME, reduction=reduction))


# ------------------------------------------------------------------------ issue 13, item 14
def test_float16_sum_beyond_its_range_is_inf_and_the_mean_is_not(xp):
    import warnings

    """Decision (docs/semantics.md, Dtypes): the result has the input's dtype, also for
    ``reduction="sum"``: a float16 sum above 65504 rounds to inf (as any float16 sum does
    in NumPy, torch and JAX), while the mean of the same terms is finite and right."""
    try:
        xb16 = xp.asarray(np.zeros((1, 1)), "float16")
    except Exception:
        pytest.skip(f"{xp.label} has no float16")
    del xb16
    y = Y
    x = (X * 6000).astype(np.float16).astype(np.float64)  # exact in float16, distances ~1e4
    want_sum = oracles.batch_all(y, x, reduction="sum")
    want_mean = oracles.batch_all(y, x)
    assert want_sum > 65504 and want_mean < 65504
    s32 = float(xp.to_numpy(tr.batch_all(xp.asarray(y), xp.asarray(x, "float32"), reduction="sum")))
    np.testing.assert_allclose(s32, want_sum, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy: "overflow encountered in cast"
        out = tr.batch_all(xp.asarray(y), xp.asarray(x, "float16"), reduction="sum")
    assert str(out.dtype).endswith("float16")
    assert float(xp.to_numpy(out)) == math.inf
    mean = tr.batch_all(xp.asarray(y), xp.asarray(x, "float16"))
    np.testing.assert_allclose(float(xp.to_numpy(mean)), want_mean, rtol=2**-10)


def test_batch_loss_docstrings_show_the_shared_keyword_block():
    """The keyword block shared by the batch losses is written once (losses/_pairs.py) and
    assembled into each docstring: ``help()`` shows it whole, with the loss's own note."""
    import pydoc

    notes = {tr.batch_all: '"none"`` is then ``(B, R)',
             tr.batch_hard: "the info indices are then over the ``R`` reference rows",
             tr.batch_semihard: "``semihard_negative`` are then ``(B, R)",
             tr.batch_contrastive: '"mean"`` divides by ``B·R'}
    for fn, note in notes.items():
        text = pydoc.render_doc(fn, renderer=pydoc.plaintext)
        assert "{scaling}" not in text and "{ref_note}" not in text
        for key in ("ref_embeddings, ref_labels: a reference set", "process_group: a ``torch.distributed``",
                    "axis_name: a JAX mapped axis name", "chunk_size: ``None``", "backend: ``None``"):
            assert text.count(key) == 1, (fn.__name__, key)
        assert note in text, fn.__name__
        # the block is indented like the other arguments
        assert "\n      chunk_size: ``None``" in fn.__doc__, fn.__name__
