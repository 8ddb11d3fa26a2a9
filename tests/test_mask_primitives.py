"""The backends' mask and count primitives of the batch losses (``Backend.label_masks``,
``any_rows``, ``and_rows``, ``sum_ints``), each against its plain-loop definition on
every backend: torch overrides them on CPU (uint8 views, NumPy's SIMD compare and sum)
and must agree exactly, empty shapes and strided views included."""
from __future__ import annotations

import numpy as np
import pytest

from triplet_ref.testing.regimes import make_labels


def _loop_masks(y):
    B = len(y)
    pos = np.array([[a != p and y[a] == y[p] for p in range(B)] for a in range(B)], dtype=bool).reshape(B, B)
    neg = np.array([[y[a] != y[n] for n in range(B)] for a in range(B)], dtype=bool).reshape(B, B)
    return pos, neg


@pytest.mark.parametrize("B,regime", [(0, "pk4"), (1, "pk4"), (9, "pk4"), (33, "all_distinct"),
                                      (40, "two_classes"), (64, "pk2")])
def test_label_masks(xp, B, regime):
    y = make_labels(regime, B, seed=1) if B else np.zeros(0, dtype=np.int64)
    pos, neg = xp.backend.label_masks(xp.xp, xp.asarray(y), xp.device)
    want_pos, want_neg = _loop_masks(list(y))
    np.testing.assert_array_equal(xp.to_numpy(pos), want_pos)
    np.testing.assert_array_equal(xp.to_numpy(neg), want_neg)
    assert pos.shape == (B, B) and neg.shape == (B, B)


def _bool_cases(rng):
    m = rng.random((6, 11)) < 0.3
    m[2] = False  # a row without a True
    m[4] = True
    return [m, m.T.copy(), np.zeros((4, 0), dtype=bool), np.zeros((0, 5), dtype=bool),
            np.ones((3, 1), dtype=bool)]


def test_any_rows_and_rows(xp):
    rng = np.random.default_rng(0)
    be, ns = xp.backend, xp.xp
    for m in _bool_cases(rng):
        a = xp.asarray(m)
        got_any = xp.to_numpy(be.any_rows(ns, a))
        np.testing.assert_array_equal(got_any, [any(row) for row in m.tolist()])
        for flags in (rng.random(m.shape[0]) < 0.5, np.ones(m.shape[0], dtype=bool)):
            got_and = xp.to_numpy(be.and_rows(ns, a, xp.asarray(flags)))
            want = np.array([[v and f for v in row] for row, f in zip(m.tolist(), flags)], dtype=bool)
            np.testing.assert_array_equal(got_and.reshape(m.shape), want.reshape(m.shape))
            assert got_and.dtype == np.bool_
        assert got_any.dtype == np.bool_


def test_any_rows_and_rows_of_strided_views(xp):
    """Views that are not contiguous (a column slice, a transpose) read right."""
    rng = np.random.default_rng(1)
    be, ns = xp.backend, xp.xp
    m = rng.random((7, 12)) < 0.2
    full = xp.asarray(m)
    for view, ref in ((full[:, 3:9], m[:, 3:9]), (ns.permute_dims(full, (1, 0)), m.T)):
        np.testing.assert_array_equal(xp.to_numpy(be.any_rows(ns, view)), ref.any(axis=1))
        flags = np.arange(ref.shape[0]) % 2 == 0
        np.testing.assert_array_equal(xp.to_numpy(be.and_rows(ns, view, xp.asarray(flags))),
                                      ref & flags[:, None])


def test_sum_ints_exact_past_int32(xp):
    """An int32 array whose total exceeds 2**31: the int64 sum is exact (no wrap-around)."""
    be, ns = xp.backend, xp.xp
    a = np.full((64, 33), 2**30 - 7, dtype=np.int32)
    a[5, 7] = -3
    want = sum(int(v) for v in a.ravel())
    assert want > 2**31
    got = be.sum_ints(ns, xp.asarray(a), ns.int64)
    assert int(xp.to_numpy(got)) == want and got.shape == ()
    empty = be.sum_ints(ns, xp.asarray(np.zeros((3, 0), dtype=np.int32)), ns.int64)
    assert int(xp.to_numpy(empty)) == 0
    strided = np.arange(60, dtype=np.int32).reshape(6, 10)
    got = be.sum_ints(ns, xp.asarray(strided)[:, ::3], ns.int64)
    assert int(xp.to_numpy(got)) == int(strided[:, ::3].sum())


@pytest.mark.parametrize("na,nb", [(5, 9), (0, 4), (3, 0), (12, 12)])
def test_equal_labels(xp, na, nb):
    rng = np.random.default_rng(na * 31 + nb)
    a, b = rng.integers(0, 4, na), rng.integers(0, 4, nb)
    got = xp.to_numpy(xp.backend.equal_labels(xp.xp, xp.asarray(a), xp.asarray(b)))
    want = np.array([[u == v for v in b.tolist()] for u in a.tolist()], dtype=bool).reshape(na, nb)
    np.testing.assert_array_equal(got, want)


def test_count_true(xp):
    """Counts of a bool mask, all and per row, against a loop (empty shapes and a strided
    view included)."""
    rng = np.random.default_rng(3)
    be, ns = xp.backend, xp.xp
    m = rng.random((9, 14)) < 0.3
    cases = [(xp.asarray(m), m), (xp.asarray(m)[:, 2:11], m[:, 2:11]),
             (xp.asarray(np.zeros((4, 0), dtype=bool)), np.zeros((4, 0), dtype=bool)),
             (xp.asarray(np.zeros((0, 3), dtype=bool)), np.zeros((0, 3), dtype=bool))]
    for a, ref in cases:
        total = be.count_true(ns, a, None, ns.int64)
        assert total.shape == () and int(xp.to_numpy(total)) == sum(v for row in ref.tolist() for v in row)
        rows = xp.to_numpy(be.count_true(ns, a, 1, ns.int64))
        assert rows.dtype == np.int64
        np.testing.assert_array_equal(rows, [sum(row) for row in ref.tolist()])
