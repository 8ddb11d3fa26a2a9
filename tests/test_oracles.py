"""Hand-computed checks of the plain-loop oracles (triplet_ref/oracles.py).

Every expected number below is derived by hand in the comments next to it: most batches are
1-D points on a line, where d(i, j) = |x_i - x_j| can be read off directly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from triplet_ref import oracles as o

SQ2 = math.sqrt(2.0)


def line(*xs):
    """1-D points as a (B, 1) embedding batch."""
    return [[float(x)] for x in xs]


# ----------------------------------------------------------------------------- distances
def test_euclidean_and_sqeuclidean_on_a_line():
    x = line(0, 1, 3)
    expected = [[0, 1, 3], [1, 0, 2], [3, 2, 0]]
    np.testing.assert_array_equal(o.pairwise_distances(x), expected)
    np.testing.assert_array_equal(
        o.pairwise_distances(x, metric="sqeuclidean"), [[0, 1, 9], [1, 0, 4], [9, 4, 0]]
    )


def test_euclidean_345_and_dtype():
    d = o.pairwise_distances(np.array([[0.0, 0.0], [3.0, 4.0]], dtype=np.float32))
    assert d.dtype == np.float64 and d.shape == (2, 2)
    np.testing.assert_array_equal(d, [[0, 5], [5, 0]])


def test_euclidean_per_pair_has_no_gram_cancellation():
    # ||a||^2 + ||b||^2 - 2<a,b> with a = 1e8, b = 1e8 + 1 loses the 1 in float64 (spacing 2
    # at 1e16); the per-pair difference gives exactly 1.
    d = o.pairwise_distances(line(1e8, 1e8 + 1))
    assert d[0, 1] == 1.0 and d[1, 0] == 1.0


def test_cosine_with_zero_row():
    x = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [-2.0, 0.0]]
    d = o.pairwise_distances(x, metric="cosine")
    c45 = 1.0 - 1.0 / SQ2
    expected = [
        # 0: (1,0)       1: (0,1)       2: (1,1)   3: zero  4: (-2,0)
        [0.0, 1.0, c45, 1.0, 2.0],
        [1.0, 0.0, c45, 1.0, 1.0],
        [c45, c45, 0.0, 1.0, 1.0 + 1.0 / SQ2],
        [1.0, 1.0, 1.0, 0.0, 1.0],  # a zero row has cosine 0 with every other row
        [2.0, 1.0, 1.0 + 1.0 / SQ2, 1.0, 0.0],
    ]
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-15)
    assert all(d[i, i] == 0.0 for i in range(5))
    # two distinct zero rows: still cosine 0 -> distance 1; equal non-zero rows -> 0
    np.testing.assert_array_equal(o.pairwise_distances([[0.0], [0.0]], metric="cosine"), [[0, 1], [1, 0]])
    d = o.pairwise_distances([[0.3, 0.7], [0.3, 0.7]], metric="cosine")
    assert d[0, 1] == d[1, 0] and 0.0 <= d[0, 1] < 1e-15
    # for this row the normalised self-product rounds to 1 + 2**-52: the clamp keeps d >= 0
    d = o.pairwise_distances([[1.3, 0.95, -0.7], [1.3, 0.95, -0.7]], metric="cosine")
    assert d[0, 1] == 0.0


def test_distance_properties_random():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3))
    x[2] = x[5]  # duplicate rows
    for metric in o.METRICS:
        d = o.pairwise_distances(x, metric=metric)
        assert np.all(np.diag(d) == 0.0)
        assert np.array_equal(d, d.T)
        assert np.all(d >= 0.0)
        assert d[2, 5] <= 1e-15


# ----------------------------------------------------------------------------- masks
def test_zero_feature_columns_are_zero_rows():
    # shape (3, 0): every row is the zero vector -> euclidean 0, cosine 1 off the diagonal
    np.testing.assert_array_equal(o.pairwise_distances(np.zeros((3, 0))), np.zeros((3, 3)))
    np.testing.assert_array_equal(o.pairwise_distances(np.zeros((2, 0)), metric="cosine"), [[0, 1], [1, 0]])


def test_masks_by_hand():
    y = [0, 0, 1, 0]
    ap = [
        [False, True, False, True],
        [True, False, False, True],
        [False, False, False, False],
        [True, True, False, False],
    ]
    an = [
        [False, False, True, False],
        [False, False, True, False],
        [True, True, False, True],
        [False, False, True, False],
    ]
    np.testing.assert_array_equal(o.anchor_positive_mask(y), ap)
    np.testing.assert_array_equal(o.anchor_negative_mask(y), an)
    t = o.triplet_mask(y)
    assert t.shape == (4, 4, 4) and t.dtype == bool
    # valid triplets: anchors 0,1,3 of class 0, each with 2 positives and the one negative (2)
    expected = {(0, 1, 2), (0, 3, 2), (1, 0, 2), (1, 3, 2), (3, 0, 2), (3, 1, 2)}
    assert {tuple(int(v) for v in idx) for idx in zip(*np.nonzero(t))} == expected


def test_masks_single_element():
    assert o.anchor_positive_mask([5]).tolist() == [[False]]
    assert o.anchor_negative_mask([5]).tolist() == [[False]]
    assert o.triplet_mask([5]).shape == (1, 1, 1)


# ----------------------------------------------------------------------------- batch_all
def test_batch_all_line():
    # labels [0, 0, 1] at x = 0, 1, 3; valid triplets (0,1,2) and (1,0,2)
    # margin 3: l(0,1,2) = 1 - 3 + 3 = 1, l(1,0,2) = 1 - 2 + 3 = 2
    y, x = [0, 0, 1], line(0, 1, 3)
    loss, info = o.batch_all(y, x, 3.0, return_info=True)
    assert loss == 1.5 and isinstance(loss, float)
    assert info == {"num_valid": 2, "num_positive": 2, "fraction_positive": 1.0}
    assert o.batch_all(y, x, 3.0, reduction="sum") == 3.0
    none = o.batch_all(y, x, 3.0, reduction="none")
    assert none.dtype == np.float64
    np.testing.assert_array_equal(none, [[0, 1, 0], [2, 0, 0], [0, 0, 0]])
    # margin 1.5: l(0,1,2) = max(-0.5, 0) = 0, l(1,0,2) = 0.5 -> mean over the 1 positive
    loss, info = o.batch_all(y, x, 1.5, return_info=True)
    assert loss == 0.5
    assert info == {"num_valid": 2, "num_positive": 1, "fraction_positive": 0.5}


def test_batch_all_sums_over_negatives():
    # labels [0, 0, 1, 1] at 0, 1, 2, 5; margin 2
    # anchor 0 p 1 (d=1): n=2 (d=2) -> 1; n=3 (d=5) -> 0      -> L[0,1] = 1
    # anchor 1 p 0 (d=1): n=2 (d=1) -> 2; n=3 (d=4) -> 0      -> L[1,0] = 2
    # anchor 2 p 3 (d=3): n=0 (d=2) -> 3; n=1 (d=1) -> 4      -> L[2,3] = 7
    # anchor 3 p 2 (d=3): n=0 (d=5) -> 0; n=1 (d=4) -> 1      -> L[3,2] = 1
    y, x = [0, 0, 1, 1], line(0, 1, 2, 5)
    none = o.batch_all(y, x, 2.0, reduction="none")
    expected = np.zeros((4, 4))
    expected[0, 1], expected[1, 0], expected[2, 3], expected[3, 2] = 1, 2, 7, 1
    np.testing.assert_array_equal(none, expected)
    loss, info = o.batch_all(y, x, 2.0, return_info=True)
    # terms 1, 0, 2, 0, 3, 4, 0, 1: 5 positive, sum 11
    assert info == {"num_valid": 8, "num_positive": 5, "fraction_positive": 0.625}
    assert loss == 11 / 5


def test_batch_all_soft_counts_every_valid_triplet():
    # soft, margin 0: l = softplus(1 - 3) + softplus(1 - 2); every valid triplet is positive
    y, x = [0, 0, 1], line(0, 1, 3)
    loss, info = o.batch_all(y, x, 0.0, soft=True, return_info=True)
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert loss == pytest.approx(expected, rel=1e-15)
    assert info == {"num_valid": 2, "num_positive": 2, "fraction_positive": 1.0}
    # the margin is kept with soft=True: softplus(-2 + 1) + softplus(-1 + 1)
    s = o.batch_all(y, x, 1.0, soft=True, reduction="sum")
    assert s == pytest.approx(math.log1p(math.exp(-1.0)) + math.log(2.0), rel=1e-15)


def test_batch_all_soft_positive_count_ignores_float_underflow():
    # softplus(1 - 1000) and softplus(1 - 1001) underflow to exactly 0.0 in float64, yet both
    # triplets count as positive with soft=True (Decision: softplus > 0 on all of R)
    loss, info = o.batch_all([0, 0, 1], line(0, 1, -1000), 0.0, soft=True, return_info=True)
    assert loss == 0.0
    assert info == {"num_valid": 2, "num_positive": 2, "fraction_positive": 1.0}
    _, info = o.batch_hard([0, 0, 1], line(0, 1, -1000), 0.0, soft=True, return_info=True)
    assert info["fraction_positive"] == 1.0


def test_batch_all_no_valid_triplet_is_zero():
    for y in ([0, 0, 0], [0, 1, 2], [7]):
        x = line(*range(len(y)))
        loss, info = o.batch_all(y, x, return_info=True)
        assert loss == 0.0
        assert info == {"num_valid": 0, "num_positive": 0, "fraction_positive": 0.0}
        assert o.batch_all(y, x, reduction="sum") == 0.0


def test_batch_all_all_easy_is_zero():
    # classes far apart: every l = max(d_ap - d_an + 1, 0) = 0 -> no positive -> mean 0
    loss, info = o.batch_all([0, 0, 1, 1], line(0, 1, 100, 101), return_info=True)
    assert loss == 0.0 and info["num_valid"] == 8 and info["num_positive"] == 0


# ----------------------------------------------------------------------------- batch_hard
def test_batch_hard_known_hardest():
    # labels [0,0,0,1,1] at x = 0, 1, 4, 2, 10, margin 1
    # a=0: pos d 1 (1), 4 (2) -> hp 4 @2; neg d 2 (3), 10 (4) -> hn 2 @3; l = 4 - 2 + 1 = 3
    # a=1: pos d 1 (0), 3 (2) -> hp 3 @2; neg d 1 (3), 9 (4)  -> hn 1 @3; l = 3
    # a=2: pos d 4 (0), 3 (1) -> hp 4 @0; neg d 2 (3), 6 (4)  -> hn 2 @3; l = 3
    # a=3: pos d 8 (4)        -> hp 8 @4; neg d 2, 1, 2       -> hn 1 @1; l = 8
    # a=4: pos d 8 (3)        -> hp 8 @3; neg d 10, 9, 6      -> hn 6 @2; l = 3
    y, x = [0, 0, 0, 1, 1], line(0, 1, 4, 2, 10)
    loss, info = o.batch_hard(y, x, 1.0, return_info=True)
    assert loss == 4.0  # (3 + 3 + 3 + 8 + 3) / 5
    assert info["hardest_positive"].tolist() == [2, 2, 0, 4, 3]
    assert info["hardest_negative"].tolist() == [3, 3, 3, 1, 2]
    assert info["hardest_positive"].dtype == np.int64
    assert info["valid"].tolist() == [True] * 5 and info["valid"].dtype == bool
    assert info["num_valid"] == 5 and info["fraction_positive"] == 1.0
    assert info["mean_hardest_positive_dist"] == (4 + 3 + 4 + 8 + 8) / 5
    assert info["mean_hardest_negative_dist"] == (2 + 1 + 2 + 1 + 6) / 5
    assert set(info) == {
        "hardest_positive", "hardest_negative", "valid", "num_valid", "fraction_positive",
        "mean_hardest_positive_dist", "mean_hardest_negative_dist",
    }
    np.testing.assert_array_equal(o.batch_hard(y, x, 1.0, reduction="none"), [3, 3, 3, 8, 3])
    assert o.batch_hard(y, x, 1.0, reduction="sum") == 20.0


def test_batch_hard_ties_go_to_smallest_index():
    # a=0 at 0: positives at +1 (idx 1) and -1 (idx 2), both d 1 -> hp @1
    #           negatives at +5 (idx 3) and -5 (idx 4), both d 5 -> hn @3
    y, x = [0, 0, 0, 1, 1], line(0, 1, -1, 5, -5)
    _, info = o.batch_hard(y, x, return_info=True)
    assert info["hardest_positive"][0] == 1
    assert info["hardest_negative"][0] == 3
    # a=3 at 5: positive 4 (d 10); negatives 0 (d 5), 1 (d 4), 2 (d 6) -> hn @1
    assert info["hardest_positive"][3] == 4 and info["hardest_negative"][3] == 1


def test_batch_hard_anchor_without_positive_is_excluded():
    # labels [0, 0, 1]: anchor 2 has no positive -> invalid, -1, 0 in "none", not in the mean
    # a=0: hp 1 (d(0,1)), hn 3 -> max(1 - 3 + 3, 0) = 1; a=1: hp 1, hn 2 -> 2
    y, x = [0, 0, 1], line(0, 1, 3)
    loss, info = o.batch_hard(y, x, 3.0, return_info=True)
    assert loss == 1.5
    assert info["valid"].tolist() == [True, True, False]
    assert info["hardest_positive"].tolist() == [1, 0, -1]
    assert info["hardest_negative"].tolist() == [2, 2, -1]
    assert info["num_valid"] == 2
    np.testing.assert_array_equal(o.batch_hard(y, x, 3.0, reduction="none"), [1, 2, 0])


@pytest.mark.parametrize("y", [[0, 0, 0, 0], [0, 1, 2, 3], [4]])
def test_batch_hard_without_valid_anchor_is_zero(y):
    x = line(*range(len(y)))
    loss, info = o.batch_hard(y, x, 0.5, return_info=True)
    assert loss == 0.0 and o.batch_hard(y, x, 0.5, reduction="sum") == 0.0
    assert info["num_valid"] == 0 and info["fraction_positive"] == 0.0
    assert info["hardest_positive"].tolist() == [-1] * len(y)
    assert info["hardest_negative"].tolist() == [-1] * len(y)
    assert not info["valid"].any()
    assert info["mean_hardest_positive_dist"] == 0.0 and info["mean_hardest_negative_dist"] == 0.0
    np.testing.assert_array_equal(o.batch_hard(y, x, 0.5, reduction="none"), np.zeros(len(y)))


def test_batch_hard_soft_margin():
    # same batch as the exclusion test: a=0: hp - hn = 1 - 3 = -2; a=1: 1 - 2 = -1
    y, x = [0, 0, 1], line(0, 1, 3)
    loss, info = o.batch_hard(y, x, 0.0, soft=True, return_info=True)
    assert loss == pytest.approx((math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2, rel=1e-15)
    assert info["fraction_positive"] == 1.0
    # soft keeps the margin: softplus(-2 + 2) + softplus(-1 + 2) = ln 2 + ln(1 + e)
    s = o.batch_hard(y, x, 2.0, soft=True, reduction="sum")
    assert s == pytest.approx(math.log(2.0) + math.log1p(math.e), rel=1e-15)


def test_batch_hard_cosine():
    # x0 = (1,0), x1 = (1,1), x2 = (0,1); labels [0, 0, 1]; c = 1 - 1/sqrt(2)
    # d(0,1) = c, d(0,2) = 1, d(1,2) = c
    # a=0: l = c - 1 + 1 = c; a=1: l = c - c + 1 = 1
    c = 1 - 1 / SQ2
    loss = o.batch_hard([0, 0, 1], [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], 1.0, metric="cosine")
    assert loss == pytest.approx((c + 1) / 2, rel=1e-14)


# ----------------------------------------------------------------------------- batch_semihard
def test_batch_semihard_with_and_without_a_farther_negative():
    # labels [0, 0, 1, 1] at x = 0, 1, 3, 0.5, margin 1
    # a=0 p=1 (d 1): negs 2 (d 3), 3 (d 0.5); farther: {2} -> n* 2, l = max(1 - 3 + 1, 0) = 0
    # a=1 p=0 (d 1): negs 2 (d 2), 3 (d 0.5); farther: {2} -> n* 2, l = 1 - 2 + 1 = 0
    # a=2 p=3 (d 2.5): negs 0 (d 3), 1 (d 2); farther: {0} -> n* 0, l = 2.5 - 3 + 1 = 0.5
    # a=3 p=2 (d 2.5): negs 0 (d 0.5), 1 (d 0.5); none farther -> fallback = largest,
    #                  tie 0.5/0.5 -> smallest index 0, l = 2.5 - 0.5 + 1 = 3
    y, x = [0, 0, 1, 1], line(0, 1, 3, 0.5)
    loss, info = o.batch_semihard(y, x, 1.0, return_info=True)
    assert loss == 0.875  # (0 + 0 + 0.5 + 3) / 4
    assert info["num_valid"] == 4
    assert info["fraction_positive"] == 0.5
    assert info["fraction_semihard"] == 0.75
    sh = info["semihard_negative"]
    assert sh.dtype == np.int64 and sh.shape == (4, 4)
    expected = -np.ones((4, 4), dtype=np.int64)
    expected[0, 1], expected[1, 0], expected[2, 3], expected[3, 2] = 2, 2, 0, 0
    np.testing.assert_array_equal(sh, expected)
    assert set(info) == {"semihard_negative", "num_valid", "fraction_positive", "fraction_semihard"}
    none = o.batch_semihard(y, x, 1.0, reduction="none")
    expected_none = np.zeros((4, 4))
    expected_none[2, 3], expected_none[3, 2] = 0.5, 3.0
    np.testing.assert_array_equal(none, expected_none)
    assert o.batch_semihard(y, x, 1.0, reduction="sum") == 3.5


def test_batch_semihard_strictly_greater_and_closest_farther():
    # labels [0, 0, 1] at 0, 1, -1, margin 1
    # a=0 p=1 (d 1): neg 2 at d 1 is NOT strictly farther -> fallback n* 2, l = 1 - 1 + 1 = 1
    # a=1 p=0 (d 1): neg 2 at d 2 > 1 -> semi-hard n* 2, l = 1 - 2 + 1 = 0
    loss, info = o.batch_semihard([0, 0, 1], line(0, 1, -1), 1.0, return_info=True)
    assert loss == 0.5
    assert info["fraction_semihard"] == 0.5 and info["fraction_positive"] == 0.5
    assert info["semihard_negative"][0, 1] == 2 and info["semihard_negative"][1, 0] == 2
    # the closest strictly-farther negative wins, with ties to the smallest index:
    # a=0 p=1 (d 1): negs 2 (d 3), 3 (d -2 -> 2), 4 (d 2), 5 (d 0.5): farther {2, 3, 4} -> min 2 @3
    y, x = [0, 0, 1, 1, 1, 1], line(0, 1, 3, -2, 2, 0.5)
    _, info = o.batch_semihard(y, x, 1.0, return_info=True)
    assert info["semihard_negative"][0, 1] == 3
    # the fallback is the LARGEST d(a, n): a=0 p=1 (d 5), negs 2 (d 1), 3 (d 2) -> n* 3,
    # l = 5 - 2 + 1 = 4 (the closest negative would give 5)
    y, x = [0, 0, 1, 1], line(0, 5, 1, 2)
    none, info = o.batch_semihard(y, x, 1.0, reduction="none", return_info=True)
    assert info["semihard_negative"][0, 1] == 3 and none[0, 1] == 4.0


def test_batch_semihard_no_term_is_zero():
    for y in ([0, 0, 0], [0, 1, 2], [3]):  # no negative / no positive pair / single element
        x = line(*range(len(y)))
        loss, info = o.batch_semihard(y, x, return_info=True)
        assert loss == 0.0
        assert info["num_valid"] == 0
        assert info["fraction_positive"] == 0.0 and info["fraction_semihard"] == 0.0
        assert (info["semihard_negative"] == -1).all()


# ----------------------------------------------------------------------------- batch_contrastive
def test_batch_contrastive_line():
    # labels [0, 0, 1] at 0, 1, 3, margin 2.5
    # (0,1) same, e 1 -> 1; (0,2) diff, e 3 -> max(-0.5, 0)^2 = 0; (1,2) diff, e 2 -> 0.25
    # each unordered pair twice: sum l = 2 * 1.25 = 2.5; loss sum = 1.25, mean = 1.25 / 6
    y, x = [0, 0, 1], line(0, 1, 3)
    loss, info = o.batch_contrastive(y, x, 2.5, return_info=True)
    assert loss == pytest.approx(1.25 / 6, rel=1e-15)
    assert info == {"num_valid": 6, "fraction_positive": 4 / 6}
    assert o.batch_contrastive(y, x, 2.5, reduction="sum") == 1.25
    np.testing.assert_array_equal(
        o.batch_contrastive(y, x, 2.5, reduction="none"),
        [[0, 0.5, 0], [0.5, 0, 0.125], [0, 0.125, 0]],
    )


def test_batch_contrastive_single_row_is_zero():
    loss, info = o.batch_contrastive([1], [[2.0, 3.0]], return_info=True)
    assert loss == 0.0 and info == {"num_valid": 0, "fraction_positive": 0.0}


# ----------------------------------------------------------------------------- explicit tuples
def test_triplet_loss_rows():
    a = [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    p = [[3.0, 4.0], [1.0, 0.0], [1.0, 1.0]]
    n = [[0.0, 1.0], [0.0, 6.0], [1.0, 2.0]]
    # row 0: d_ap 5, d_an 1 -> 5 - 1 + 1 = 5; row 1: 1 - 6 + 1 -> 0; row 2: 0 - 1 + 1 -> 0
    np.testing.assert_array_equal(o.triplet_loss(a, p, n, reduction="none"), [5, 0, 0])
    assert o.triplet_loss(a, p, n) == 5 / 3  # mean over every row, not only positive ones
    assert o.triplet_loss(a, p, n, reduction="sum") == 5.0
    # squared form: row 0: 25 - 1 + 1 = 25; row 1: 1 - 36 + 1 -> 0; row 2: 0 - 1 + 1 = 0
    np.testing.assert_array_equal(o.triplet_loss(a, p, n, metric="sqeuclidean", reduction="none"), [25, 0, 0])
    # soft, margin 0: softplus(4), softplus(-5), softplus(-1)
    got = o.triplet_loss(a, p, n, 0.0, soft=True, reduction="none")
    np.testing.assert_allclose(got, [4 + math.log1p(math.exp(-4)), math.log1p(math.exp(-5)), math.log1p(math.exp(-1))], rtol=1e-15)


def test_triplet_loss_cosine_zero_row():
    # anchor zero row: cosine 0 with both -> d_ap = d_an = 1 -> l = m
    got = o.triplet_loss([[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], 0.25, metric="cosine")
    assert got == 0.25
    # a=(1,0), p=(1,1), n=(-1,0): d_ap = 1 - 1/sqrt2, d_an = 2
    got = o.triplet_loss([[1.0, 0.0]], [[1.0, 1.0]], [[-1.0, 0.0]], 3.0, metric="cosine")
    assert got == pytest.approx(1 - 1 / SQ2 - 2 + 3, rel=1e-15)


def test_contrastive_loss_rows():
    x1 = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    x2 = [[3.0, 4.0], [0.0, 1.0], [0.0, 3.0]]
    same = [True, False, False]
    # e = 5, 1, 3; margin 2: same -> 25; diff -> (2-1)^2 = 1; diff -> max(-1, 0)^2 = 0
    np.testing.assert_array_equal(o.contrastive_loss(x1, x2, same, 2.0, reduction="none"), [12.5, 0.5, 0])
    assert o.contrastive_loss(x1, x2, same, 2.0, reduction="sum") == 13.0
    assert o.contrastive_loss(x1, x2, same, 2.0) == 13.0 / 3
    assert o.contrastive_loss(x1, x2, [1, 0, 0], 2.0) == 13.0 / 3
    assert o.contrastive_loss(x1, x2, np.array([1.0, 0.0, 0.0], np.float32), 2.0) == 13.0 / 3


# ----------------------------------------------------------------------------- softplus
def test_softplus_values_and_no_overflow():
    assert o.softplus(0.0) == math.log(2.0)
    assert o.softplus(1000.0) == 1000.0
    assert o.softplus(-1000.0) == 0.0
    assert o.softplus(1.0) == pytest.approx(math.log(1 + math.e), rel=1e-15)
    assert o.softplus(-30.0) == pytest.approx(math.exp(-30.0), rel=1e-12)
    assert math.isnan(o.softplus(math.nan)) and math.isnan(o.hinge(math.nan))
    assert o.hinge(-2.0) == 0.0 and o.hinge(2.5) == 2.5


# ----------------------------------------------------------------------------- consistency
def _random_batch(seed, b=9, dim=3, classes=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, size=b), rng.normal(size=(b, dim))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", o.METRICS)
def test_reductions_are_consistent(seed, metric):
    y, x = _random_batch(seed)
    m = 0.5 if metric == "cosine" else 1.0
    for soft in (False, True):
        total, none = o.batch_all(y, x, m, metric=metric, soft=soft, reduction="sum"), o.batch_all(
            y, x, m, metric=metric, soft=soft, reduction="none")
        mean, info = o.batch_all(y, x, m, metric=metric, soft=soft, return_info=True)
        assert total == pytest.approx(none.sum(), rel=1e-12)
        assert mean == pytest.approx(total / info["num_positive"] if info["num_positive"] else 0.0, rel=1e-12)
        assert info["num_valid"] == int(o.triplet_mask(y).sum())

        total = o.batch_hard(y, x, m, metric=metric, soft=soft, reduction="sum")
        none = o.batch_hard(y, x, m, metric=metric, soft=soft, reduction="none")
        mean, info = o.batch_hard(y, x, m, metric=metric, soft=soft, return_info=True)
        assert total == pytest.approx(none.sum(), rel=1e-12)
        assert mean == pytest.approx(total / info["num_valid"] if info["num_valid"] else 0.0, rel=1e-12)
        assert np.all(none[~info["valid"]] == 0.0)

    total = o.batch_semihard(y, x, m, metric=metric, reduction="sum")
    none = o.batch_semihard(y, x, m, metric=metric, reduction="none")
    mean, info = o.batch_semihard(y, x, m, metric=metric, return_info=True)
    assert total == pytest.approx(none.sum(), rel=1e-12)
    assert mean == pytest.approx(total / info["num_valid"] if info["num_valid"] else 0.0, rel=1e-12)
    assert not np.any((none != 0) & (info["semihard_negative"] < 0))  # non-zero only at terms
    assert info["num_valid"] == int((info["semihard_negative"] >= 0).sum())

    total = o.batch_contrastive(y, x, m, reduction="sum")
    none = o.batch_contrastive(y, x, m, reduction="none")
    assert total == pytest.approx(none.sum(), rel=1e-12)
    assert o.batch_contrastive(y, x, m) == pytest.approx(total / (len(y) * (len(y) - 1)), rel=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_batch_hard_matches_brute_force_over_batch_all_terms(seed):
    # the hardest triplet of each anchor is the largest batch-all term of that anchor
    y, x = _random_batch(seed, b=10, classes=3)
    d = o.pairwise_distances(x)
    none = o.batch_hard(y, x, 0.7, reduction="none")
    _, info = o.batch_hard(y, x, 0.7, return_info=True)
    for a in range(len(y)):
        if not info["valid"][a]:
            continue
        worst = max(
            d[a, p] - d[a, n] + 0.7
            for p in range(len(y)) for n in range(len(y))
            if p != a and y[p] == y[a] and y[n] != y[a]
        )
        assert none[a] == pytest.approx(max(worst, 0.0), rel=1e-12, abs=1e-15)
        assert d[a, info["hardest_positive"][a]] - d[a, info["hardest_negative"][a]] + 0.7 == pytest.approx(worst)


def test_input_kinds_agree():
    y, x = _random_batch(5)
    ref = o.batch_hard(y, x, return_info=True)
    for yy, xx in ((y.astype(np.int32), x), (y.tolist(), x.tolist()), (y.astype(np.uint8), x)):
        got = o.batch_hard(yy, xx, return_info=True)
        assert got[0] == ref[0]
        assert got[1]["hardest_negative"].tolist() == ref[1]["hardest_negative"].tolist()
    # float32 input is read exactly into float64
    x32 = x.astype(np.float32)
    assert o.batch_hard(y, x32) == o.batch_hard(y, x32.astype(np.float64))
    # margin given as numpy scalar / int
    assert o.batch_hard(y, x, np.float32(1.0)) == o.batch_hard(y, x, 1) == ref[0]


# ----------------------------------------------------------------------------- NaN
def test_nan_embeddings_give_nan_loss():
    y, x = [0, 0, 1], line(0, 1, math.nan)
    for fn in (o.batch_all, o.batch_hard, o.batch_semihard, o.batch_contrastive):
        assert math.isnan(fn(y, x)) and math.isnan(fn(y, x, reduction="sum"))
    # Decision: even when the NaN row enters no term (no valid triplet at all)
    assert math.isnan(o.batch_hard([0, 1, 2], line(0, 1, math.nan)))
    assert math.isnan(o.batch_all([0, 1, 2], line(0, 1, math.nan)))
    assert math.isnan(o.triplet_loss([[math.nan]], [[0.0]], [[1.0]]))
    assert math.isnan(o.contrastive_loss([[math.nan]], [[0.0]], [1]))


# ----------------------------------------------------------------------------- bad input
GOOD_Y, GOOD_X = [0, 0, 1], line(0, 1, 3)


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        ({"embeddings": [0.0, 1.0, 2.0]}, ValueError, "embeddings"),  # 1-D
        ({"embeddings": np.zeros((3, 1, 1))}, ValueError, "embeddings"),  # 3-D
        ({"embeddings": np.zeros((0, 2)), "labels": np.zeros(0, int)}, ValueError, "empty"),
        ({"embeddings": [[0], [1], [3]]}, TypeError, "embeddings"),  # integer dtype
        ({"embeddings": [[True], [False], [True]]}, TypeError, "embeddings"),
        ({"embeddings": np.ones((3, 1), complex)}, TypeError, "embeddings"),
        ({"embeddings": [["a"], ["b"], ["c"]]}, TypeError, "embeddings"),
        ({"labels": [[0, 0, 1]]}, ValueError, "labels"),  # 2-D
        ({"labels": [0, 1]}, ValueError, "labels"),  # length mismatch
        ({"labels": [0.0, 0.0, 1.0]}, TypeError, "labels"),  # non-integer
        ({"labels": [True, True, False]}, TypeError, "labels"),
        ({"labels": ["a", "a", "b"]}, TypeError, "labels"),
        ({"margin": -0.1}, ValueError, "margin"),
        ({"margin": math.inf}, ValueError, "margin"),
        ({"margin": math.nan}, ValueError, "margin"),
        ({"margin": "1.0"}, TypeError, "margin"),
        ({"margin": True}, TypeError, "margin"),
        ({"margin": [1.0, 2.0]}, TypeError, "margin"),
        ({"metric": "manhattan"}, ValueError, "metric"),
        ({"metric": None}, ValueError, "metric"),
        ({"reduction": "max"}, ValueError, "reduction"),
        ({"return_info": "yes"}, TypeError, "return_info"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument(kwargs, exc, word):
    args = {"labels": GOOD_Y, "embeddings": GOOD_X, "margin": 1.0}
    args.update(kwargs)
    fns = [o.batch_all, o.batch_hard, o.batch_semihard]
    if "metric" not in kwargs:
        fns.append(o.batch_contrastive)
    for fn in fns:
        with pytest.raises(exc, match=word):
            fn(**args)


def test_bad_input_other_functions():
    with pytest.raises(ValueError, match="metric"):
        o.pairwise_distances(GOOD_X, metric="l1")
    with pytest.raises(ValueError, match="embeddings"):
        o.pairwise_distances([1.0, 2.0])
    with pytest.raises(ValueError, match="labels"):
        o.triplet_mask([[0, 1]])
    with pytest.raises(TypeError, match="labels"):
        o.anchor_positive_mask([0.5, 1.5])
    with pytest.raises(TypeError, match="soft"):
        o.batch_hard(GOOD_Y, GOOD_X, soft=1)
    with pytest.raises(ValueError, match="negative"):
        o.triplet_loss([[0.0]], [[1.0]], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="positive"):
        o.triplet_loss([[0.0, 1.0]], [[1.0]], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="empty"):
        o.triplet_loss(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="reduction"):
        o.triplet_loss([[0.0]], [[1.0]], [[1.0]], reduction="avg")
    with pytest.raises(ValueError, match="same"):
        o.contrastive_loss([[0.0]], [[1.0]], [1, 0])
    with pytest.raises(ValueError, match="x2"):
        o.contrastive_loss([[0.0]], [[1.0], [2.0]], [1])
    with pytest.raises(TypeError, match="same"):
        o.contrastive_loss([[0.0]], [[1.0]], ["yes"])
    with pytest.raises(ValueError, match="margin"):
        o.contrastive_loss([[0.0]], [[1.0]], [1], -1.0)


# ----------------------------------------------------------------------------- peers
# The "where peers differ" table of docs/semantics.md, checked by running the peers on a
# small batch (their sources are cited there).  Skipped when the peer is not installed.
def _peer_batch(seed=1, b=10, dim=4, classes=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, size=b), rng.normal(size=(b, dim))


def test_peer_pytorch_metric_learning():
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses, miners

    y, x = _peer_batch()
    Y, X = torch.tensor(y), torch.tensor(x)  # float64 throughout
    raw = distances.LpDistance(normalize_embeddings=False)
    # TripletMarginLoss (all triplets, AvgNonZeroReducer) == batch_all's mean over positive triplets
    got = losses.TripletMarginLoss(margin=0.5, distance=raw)(X, Y).item()
    assert got == pytest.approx(o.batch_all(y, x, 0.5), rel=1e-12)
    # its default distance L2-normalises the embeddings first
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    got = losses.TripletMarginLoss(margin=0.5)(X, Y).item()
    assert got == pytest.approx(o.batch_all(y, xn, 0.5), rel=1e-12)
    # smooth_loss = softplus(d_ap - d_an + margin): the margin is kept, every term "non-zero"
    got = losses.TripletMarginLoss(margin=0.5, distance=raw, smooth_loss=True)(X, Y).item()
    assert got == pytest.approx(o.batch_all(y, x, 0.5, soft=True), rel=1e-12)
    # BatchHardMiner + TripletMarginLoss: averaged over anchors with l > 0 only.
    # labels [0,0,1,1] at 0, 1, 3, 4, margin 1.5; every anchor has hp = 1:
    # a=0: hn 3 -> max(1 - 3 + 1.5, 0) = 0; a=1: hn 2 -> 0.5; a=2: hn 2 -> 0.5; a=3: hn 3 -> 0
    y3, x3 = [0, 0, 1, 1], [[0.0], [1.0], [3.0], [4.0]]
    Y3, X3 = torch.tensor(y3), torch.tensor(x3, dtype=torch.float64)
    tml = losses.TripletMarginLoss(margin=1.5, distance=raw)
    got = tml(X3, Y3, miners.BatchHardMiner(distance=raw)(X3, Y3)).item()
    assert got == pytest.approx(0.5, rel=1e-12)  # mean over the 2 anchors with l > 0
    assert o.batch_hard(y3, x3, 1.5) == 0.25  # ours: mean over the 4 valid anchors
    # ContrastiveLoss: un-squared hinges, pos and neg parts each averaged over their non-zero terms
    d = o.pairwise_distances(x)
    pos = [d[i, j] for i in range(len(y)) for j in range(len(y)) if i != j and y[i] == y[j]]
    neg = [max(1.0 - d[i, j], 0.0) for i in range(len(y)) for j in range(len(y)) if y[i] != y[j]]
    nz = lambda v: [t for t in v if t > 0]  # noqa: E731
    expected = (np.mean(nz(pos)) if nz(pos) else 0.0) + (np.mean(nz(neg)) if nz(neg) else 0.0)
    got = losses.ContrastiveLoss(pos_margin=0, neg_margin=1, distance=raw)(X, Y).item()
    assert got == pytest.approx(expected, rel=1e-12)
    assert got != pytest.approx(o.batch_contrastive(y, x, 1.0), rel=1e-3)
