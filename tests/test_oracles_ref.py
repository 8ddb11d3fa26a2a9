"""Hand-computed checks of the oracles' reference-set form (``ref_embeddings=``, ``ref_labels=``).

Anchors are the rows of ``embeddings``; positives and negatives are rows of the reference set;
no (anchor, reference) pair is excluded as "the same sample" (docs/semantics.md, "Reference
sets").  Every expected number is derived in the comments from 1-D points on a line.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from triplet_ref import oracles as o


def line(*xs):
    return [[float(x)] for x in xs]


# anchors a0 at 0 (y 0), a1 at 4 (y 1); reference r0 at 1 (y 0), r1 at 3 (y 1), r2 at 0 (y 0)
# d(a, r):  a0: [1, 3, 0]   a1: [3, 1, 4]
Y, X = [0, 1], line(0, 4)
RY, RX = [0, 1, 0], line(1, 3, 0)


def test_cross_distances():
    np.testing.assert_array_equal(o.pairwise_distances(X, RX), [[1, 3, 0], [3, 1, 4]])
    np.testing.assert_array_equal(o.pairwise_distances(X, RX, metric="sqeuclidean"), [[1, 9, 0], [9, 1, 16]])
    d = o.pairwise_distances(X, ref_embeddings=RX)
    assert d.shape == (2, 3) and d.dtype == np.float64


def test_cross_cosine_zero_rows_are_distinct_samples():
    # a zero anchor against a zero reference row: cosine 0 -> d = 1 (no "d(i, i) = 0" rule
    # between two sets); within one batch the same two rows would be d(i, i) = 0
    d = o.pairwise_distances([[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]], metric="cosine")
    np.testing.assert_array_equal(d, [[1, 1, 1], [1, 0, 1]])


def test_batch_all_cross():
    # margin 3.5: a0: p r0 (1), r2 (0); n r1 (3) -> l(r0) = 1 - 3 + 3.5 = 1.5, l(r2) = 0.5
    #             a1: p r1 (1); n r0 (3), r2 (4) -> 1.5, 0.5
    loss, info = o.batch_all(Y, X, 3.5, ref_embeddings=RX, ref_labels=RY, return_info=True)
    assert loss == 1.0  # 4 / 4 positive
    assert info == {"num_valid": 4, "num_positive": 4, "fraction_positive": 1.0}
    none = o.batch_all(Y, X, 3.5, ref_embeddings=RX, ref_labels=RY, reduction="none")
    np.testing.assert_array_equal(none, [[1.5, 0, 0.5], [0, 2.0, 0]])


def test_batch_hard_cross():
    # a0: hp = max(1 @r0, 0 @r2) = 1 @0, hn = 3 @1 -> 1.5; a1: hp 1 @1, hn min(3 @0, 4 @2) -> 1.5
    loss, info = o.batch_hard(Y, X, 3.5, ref_embeddings=RX, ref_labels=RY, return_info=True)
    assert loss == 1.5
    assert info["hardest_positive"].tolist() == [0, 1]
    assert info["hardest_negative"].tolist() == [1, 0]
    assert info["valid"].tolist() == [True, True]
    assert info["mean_hardest_positive_dist"] == 1.0 and info["mean_hardest_negative_dist"] == 3.0


def test_batch_semihard_cross():
    # a0: negatives r1 (3). p r0 (1): 3 > 1 -> n* 1, l = 1.5; p r2 (0): n* 1, l = 0.5
    # a1: negatives r0 (3), r2 (4). p r1 (1): both farther, the closest 3 @0 -> l = 1.5
    loss, info = o.batch_semihard(Y, X, 3.5, ref_embeddings=RX, ref_labels=RY, return_info=True)
    assert loss == pytest.approx(3.5 / 3, rel=1e-15)
    assert info["num_valid"] == 3 and info["fraction_semihard"] == 1.0
    np.testing.assert_array_equal(info["semihard_negative"], [[1, -1, 1], [-1, 0, -1]])
    none = o.batch_semihard(Y, X, 3.5, ref_embeddings=RX, ref_labels=RY, reduction="none")
    np.testing.assert_array_equal(none, [[1.5, 0, 0.5], [0, 1.5, 0]])


def test_batch_contrastive_cross():
    # margin 3.5: a0: r0 same e 1 -> 1; r1 diff e 3 -> 0.25; r2 same e 0 -> 0
    #             a1: r0 diff e 3 -> 0.25; r1 same e 1 -> 1; r2 diff e 4 -> 0
    # sum l = 2.5 -> "sum" 1.25, "mean" 1.25 / (B·R = 6)
    kw = dict(ref_embeddings=RX, ref_labels=RY)
    loss, info = o.batch_contrastive(Y, X, 3.5, return_info=True, **kw)
    assert loss == pytest.approx(1.25 / 6, rel=1e-15)
    assert info == {"num_valid": 6, "fraction_positive": 4 / 6}
    assert o.batch_contrastive(Y, X, 3.5, reduction="sum", **kw) == 1.25
    np.testing.assert_array_equal(
        o.batch_contrastive(Y, X, 3.5, reduction="none", **kw), [[0.5, 0.125, 0], [0.125, 0.5, 0]]
    )


# the batch itself as its reference set: every anchor now also pairs with its own copy
# (d = 0, same label): y [0, 0, 1] at 0, 1, 3, margin 3
SY, SX = [0, 0, 1], line(0, 1, 3)


def test_batch_hard_self_as_reference_counts_the_own_copy():
    # within the batch (no reference): anchor 2 has no positive; loss (1 + 2) / 2 = 1.5
    # as a reference set: a0 hp = max(0 @0, 1 @1) = 1, hn 3 -> 1; a1 hp 1 @0, hn 2 -> 2;
    # a2 hp = 0 @2 (its own copy), hn = min(3, 2) = 2 @1 -> 0 - 2 + 3 = 1 (now valid)
    assert o.batch_hard(SY, SX, 3.0) == 1.5
    loss, info = o.batch_hard(SY, SX, 3.0, ref_embeddings=SX, ref_labels=SY, return_info=True)
    assert loss == pytest.approx(4 / 3, rel=1e-15)
    assert info["valid"].tolist() == [True, True, True]
    assert info["hardest_positive"].tolist() == [1, 0, 2]
    assert info["hardest_negative"].tolist() == [2, 2, 1]


def test_batch_all_self_as_reference():
    # a0: p r0 (0), r1 (1); n r2 (3): 0, 1;  a1: p r0 (1), r1 (0); n r2 (2): 2, 1
    # a2: p r2 (0); n r0 (3), r1 (2): 0, 1  -> 6 valid, 4 positive, sum 5
    loss, info = o.batch_all(SY, SX, 3.0, ref_embeddings=SX, ref_labels=SY, return_info=True)
    assert loss == 1.25
    assert info == {"num_valid": 6, "num_positive": 4, "fraction_positive": 4 / 6}
    none = o.batch_all(SY, SX, 3.0, ref_embeddings=SX, ref_labels=SY, reduction="none")
    np.testing.assert_array_equal(none, [[0, 1, 0], [2, 1, 0], [0, 0, 1]])


def test_batch_semihard_self_as_reference():
    # a0: n r2 (3): p r0 (0) -> 0; p r1 (1) -> 1;  a1: n r2 (2): p r0 (1) -> 2; p r1 (0) -> 1
    # a2: n r0 (3), r1 (2): p r2 (0): closest farther 2 @1 -> 1   -> 5 terms, sum 5
    loss, info = o.batch_semihard(SY, SX, 3.0, ref_embeddings=SX, ref_labels=SY, return_info=True)
    assert loss == 1.0
    assert info["num_valid"] == 5 and info["fraction_positive"] == 0.8
    np.testing.assert_array_equal(info["semihard_negative"], [[2, 2, -1], [2, 2, -1], [-1, -1, 1]])


def test_batch_contrastive_self_as_reference():
    # the 3 diagonal pairs join as same-class terms with e = 0 (l = 0): sum unchanged (1.25),
    # mean over B·R = 9 terms instead of B(B - 1) = 6
    kw = dict(ref_embeddings=SX, ref_labels=SY)
    loss, info = o.batch_contrastive(SY, SX, 2.5, return_info=True, **kw)
    assert loss == pytest.approx(1.25 / 9, rel=1e-15)
    assert info == {"num_valid": 9, "fraction_positive": 4 / 9}
    assert o.batch_contrastive(SY, SX, 2.5, reduction="sum") == o.batch_contrastive(SY, SX, 2.5, reduction="sum", **kw)


def test_no_positive_or_no_negative_in_the_reference_set():
    # the reference holds only class 1: anchor 0 (y 0) has no positive, anchor 1 no negative
    kw = dict(ref_embeddings=line(5, 6), ref_labels=[1, 1])
    for f in (o.batch_all, o.batch_hard, o.batch_semihard):
        loss, info = f([0, 1], line(0, 1), return_info=True, **kw)
        assert loss == 0.0 and info["num_valid"] == 0


def test_soft_and_sqeuclidean_cross():
    # batch_hard soft, margin 0: a0: hp 1, hn 3 -> softplus(-2); a1: hp 1, hn 3 -> softplus(-2)
    got = o.batch_hard(Y, X, 0.0, soft=True, ref_embeddings=RX, ref_labels=RY, reduction="sum")
    assert got == pytest.approx(2 * math.log1p(math.exp(-2.0)), rel=1e-15)
    # sqeuclidean: a0 hp 1, hn 9 -> max(1 - 9 + 10, 0) = 2; a1 hp 1, hn 9 -> 2
    got = o.batch_hard(Y, X, 10.0, metric="sqeuclidean", ref_embeddings=RX, ref_labels=RY, reduction="none")
    np.testing.assert_array_equal(got, [2, 2])


def test_nan_in_the_reference_set_gives_nan():
    for f in (o.batch_all, o.batch_hard, o.batch_semihard, o.batch_contrastive):
        assert math.isnan(f(Y, X, ref_embeddings=line(1, math.nan, 0), ref_labels=RY))


def test_reference_set_bad_input():
    with pytest.raises(ValueError, match="ref_labels"):
        o.batch_hard(Y, X, ref_embeddings=RX)
    with pytest.raises(ValueError, match="ref_embeddings"):
        o.batch_all(Y, X, ref_labels=RY)
    with pytest.raises(ValueError, match="ref_embeddings has 2 columns"):
        o.batch_semihard(Y, X, ref_embeddings=[[0.0, 1.0]] * 3, ref_labels=RY)
    with pytest.raises(ValueError, match="ref_labels has length 2"):
        o.batch_contrastive(Y, X, ref_embeddings=RX, ref_labels=[0, 1])
    with pytest.raises(TypeError, match="ref_labels"):
        o.batch_hard(Y, X, ref_embeddings=RX, ref_labels=[0.0, 1.0, 0.0])
    with pytest.raises(TypeError, match="ref_embeddings"):
        o.pairwise_distances(X, [[1], [2]])
    with pytest.raises(ValueError, match="ref_embeddings is empty"):
        o.pairwise_distances(X, np.zeros((0, 1)))
