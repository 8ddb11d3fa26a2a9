"""Per-row ranks in sorted rows without a search (the pure-NumPy body's rows with many terms).

A row with many terms (few classes: thousands of positives per anchor) needs, for every
term, its rank among the row's negatives: how many negatives lie below it.  Sorting the
terms together with the negatives (one packed key per entry) sorts every entry of the row;
here only the negatives are sorted (:func:`sorted_negatives`: half the row with two
classes, and 32-bit keys where no column is needed) and each term finds its rank by
:func:`ranks`: buckets on the values' bit patterns, then a short exact scan.

Values are float32 ``>= 0`` (``-0.0`` made ``+0.0``; NaN and ``+inf`` allowed) handled as
their ``uint32`` bit patterns, which order like the values (NaN after ``+inf``), so every
comparison is an exact integer comparison.
"""
from __future__ import annotations

import numpy as np

from ._blocks import _HI, _LO

__all__ = ["sorted_negatives", "ranks", "high_halves", "low_halves"]

_MAX32 = np.uint32(0xFFFFFFFF)
_MAX64 = np.uint64(0xFFFFFFFFFFFFFFFF)

# scan steps through a bucket before a binary search over the rest of it
_SCAN_STEPS = 3
# the buckets span the values but the lowest and highest n / _TAIL of each row
_TAIL = 64
# fewer queries than 1 / _FEW_QUERIES of the entries: a binary search each, no buckets
_FEW_QUERIES = 8


def sorted_negatives(bits: np.ndarray, neg: np.ndarray, columns: bool):
    """The negatives of each row sorted: ``(s, n)`` with ``n`` (rows,) the number of
    negatives per row and ``s`` (rows, M), ``M = max n``, their keys ascending in the
    first ``n[r]`` entries and the largest key after them (padding).

    ``bits`` (rows, C) ``uint32``: the values' bit patterns; the keys are those bits or,
    with ``columns``, ``uint64`` ``bits << 32 | column`` (ties in column order).  When every
    row has the same number of negatives (P×K batches, two equal classes) only the
    negatives are sorted; otherwise the whole rows, the other entries as padding."""
    rows, C = bits.shape
    n = np.count_nonzero(neg, axis=1)
    M = int(n.max(initial=0))
    if columns:
        key = np.empty((rows, C), dtype=np.uint64)
        halves = key.view(np.uint32).reshape(rows, C, 2)
        np.copyto(halves[..., _HI], bits)
        halves[..., _LO] = np.arange(C, dtype=np.uint32)
        top = _MAX64
    else:
        key, top = bits, _MAX32
    if bool(np.all(n == M)):
        s = key[neg].reshape(rows, M)
    else:
        s = np.where(neg, key, top)
        s.sort(axis=1)
        s = np.ascontiguousarray(s[:, :M])
        return s, n
    s.sort(axis=1)
    return s, n


def high_halves(s: np.ndarray) -> np.ndarray:
    """The value bits (``uint32``, contiguous) of ``uint64`` keys ``bits << 32 | column``."""
    return np.ascontiguousarray(s.view(np.uint32).reshape(*s.shape, 2)[..., _HI])


def low_halves(s: np.ndarray) -> np.ndarray:
    """The columns (``uint32`` view, strided) of ``uint64`` keys ``bits << 32 | column``."""
    return s.view(np.uint32).reshape(*s.shape, 2)[..., _LO]


def ranks(vals: np.ndarray, n: np.ndarray, qrow: np.ndarray, q: np.ndarray, strict: bool) -> np.ndarray:
    """``#{j < n[r]: vals[r, j] < q}`` (``strict``) or ``<= q`` for each query ``q`` (``uint32``)
    in row ``r = qrow`` of the sorted rows ``vals`` (rows, M) ``uint32``.

    Each row's range ``[vals[r, 0], vals[r, n − 1]]`` is cut into ``NB ≥ M`` buckets of
    ``2^shift`` bit patterns (``shift`` per row); a bincount and a running sum give each
    bucket's first position, so a query's rank lies in its bucket's span ``[start, end)``:
    a few exact comparison steps over it (the bucket holds about one negative), then a
    binary search over what is left of it (a crowded bucket: many equal or close values).
    O(n + NB) per row and O(1) expected per query for spread values; exact always.  With
    few queries (P×K rows: K − 1 terms against ~B negatives) a binary search each instead."""
    rows, M = vals.shape
    if q.size == 0 or M == 0:
        return np.zeros(q.shape, dtype=np.intp)
    less = np.less if strict else np.less_equal
    flat = vals.reshape(-1)
    if q.size * _FEW_QUERIES < int(n.sum()):  # few queries: the buckets would cost more
        return _search(flat, M, qrow * M, np.zeros(q.shape, dtype=np.intp), n[qrow].astype(np.intp), q, less)
    lb = int(M).bit_length() + 1
    NB = 1 << lb  # 2M < NB <= 4M buckets
    W = NB + 1  # per row: the NB buckets and the padding's
    r_all = np.arange(rows)
    # the buckets cover the middle of each row's values (the tails share the end buckets,
    # so a few far values do not crowd the rest into a few buckets)
    tail = n // _TAIL
    lo = vals[r_all, tail]
    hi = vals[r_all, np.maximum(n - 1 - tail, tail)]
    span = np.where(n > 0, hi.astype(np.int64) - lo.astype(np.int64), 0)
    shift = np.maximum(np.frexp(span.astype(np.float64))[1] - lb, 0).astype(np.uint32)  # span >> shift < NB
    b = np.maximum(vals, lo[:, None])
    b -= lo[:, None]
    b >>= shift[:, None]
    np.minimum(b, np.uint32(NB - 1), out=b)
    if int(n.min()) < M:  # padding: bucket NB (after every real one)
        b[np.arange(M)[None, :] >= n[:, None]] = NB
    b += (r_all * W).astype(np.uint32)[:, None]
    # cum[r, k]: row r's entries in the buckets before k
    cum = np.zeros((rows, W + 1), dtype=np.intp)
    np.cumsum(np.bincount(b.reshape(-1), minlength=rows * W).reshape(rows, W), axis=1, out=cum[:, 1:])
    del b
    cum = cum.reshape(-1)
    lq = lo[qrow]
    qb = np.maximum(q, lq)
    qb -= lq
    qb >>= shift[qrow]
    np.minimum(qb, np.uint32(NB - 1), out=qb)
    ci = qrow * (W + 1)
    ci += qb
    k = cum[ci]  # the bucket's span [k, end) in the row
    end = cum[ci + 1]
    del ci, qb, lq
    base = qrow * M
    # step 1 over every query, then over the ones still moving
    act = None
    for _ in range(_SCAN_STEPS):
        if act is None:
            kk, ee, bb, qq = k, end, base, q
        else:
            kk, ee, bb, qq = k[act], end[act], base[act], q[act]
        go = kk < ee
        go &= less(flat[bb + np.minimum(kk, M - 1)], qq)
        if act is None:
            k += go
            act = np.flatnonzero(go)
        else:
            k[act] = kk + go
            act = act[go]
        if act.size == 0:
            break
    if act is not None and act.size:  # a crowded bucket: binary search over the rest of it
        k[act] = _search(flat, M, base[act], k[act], end[act], q[act], less)
    return k


def _search(flat, M, base, k, end, q, less):
    """Binary search of each query ``q`` in ``flat[base + k : base + end]`` (sorted): ``k``
    plus the number of entries ``less`` than ``q`` there (all queries at once,
    ``log2(max(end − k)) + 1`` steps)."""
    width = end - k
    while True:
        live = width > 0
        if not live.any():
            return k
        half = width >> 1
        probe = k + half
        go = live & less(flat[base + np.minimum(probe, M - 1)], q)
        k = np.where(go, probe + 1, k)
        width = np.where(go, width - half - 1, half)
