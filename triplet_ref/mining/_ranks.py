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
    in row ``r = qrow`` of the sorted rows ``vals`` (rows, M) ``uint32`` (their first
    ``n[r]`` entries; padding after them).

    The values' range (the middle of the rows' ranges: the lowest and highest
    ``n / _TAIL`` of each row share the end buckets) is cut into ``NB`` (2M < NB <= 4M)
    buckets of ``2^shift`` bit patterns; a bincount and a running sum give each row's
    bucket starts, so a query's rank lies in its bucket's span: a few exact comparison
    steps over it (about one entry), then a binary search over what is left of it (a
    crowded bucket: many equal or close values).  O(M + NB) per row and O(1) expected per
    query for spread values; exact always.  With few queries (P×K rows: K − 1 terms
    against ~B negatives) a binary search each instead."""
    rows, M = vals.shape
    if q.size == 0 or M == 0:
        return np.zeros(q.shape, dtype=np.intp)
    less = np.less if strict else np.less_equal
    flat = vals.reshape(-1)
    base = qrow * M
    if q.size * _FEW_QUERIES < int(n.sum()):  # few queries: the buckets would cost more
        k = _search(flat, base.copy(), base + n[qrow], q, less)
        k -= base
        return k
    lb = int(M).bit_length() + 1
    NB = 1 << lb
    W = NB + 1  # per row: the NB buckets and the padding's
    r_all = np.arange(rows)
    # one bucket width for the sub-block (scalars: no per-query gathers)
    tail = n // _TAIL
    real = n > 0
    lo = int(vals[r_all, tail][real].min(initial=0xFFFFFFFF))
    hi = int(vals[r_all, np.maximum(n - 1 - tail, tail)][real].max(initial=0))
    lo = min(lo, hi)
    shift = max((hi - lo).bit_length() - lb, 0)  # (hi − lo) >> shift < NB
    lo32, hi32, sh = np.uint32(lo), np.uint32(hi), np.uint32(shift)
    b = np.clip(vals, lo32, hi32)
    b -= lo32
    b >>= sh
    if int(n.min()) < M:  # padding: bucket NB (after every real one)
        b[np.arange(M)[None, :] >= n[:, None]] = NB
    b += (r_all * W).astype(np.uint32)[:, None]
    # cum[r·W + k]: the flat position of row r's first entry in bucket k (every row holds
    # M entries, padding included)
    cum = np.zeros(rows * W + 1, dtype=np.intp)
    np.cumsum(np.bincount(b.reshape(-1), minlength=rows * W), out=cum[1:])
    del b
    qb = np.clip(q, lo32, hi32)
    qb -= lo32
    qb >>= sh
    ci = qrow * W
    ci += qb
    k = cum[ci]  # the bucket's flat span [k, end)
    end = cum[ci + 1]
    del ci, qb
    last = flat.size - 1
    # step 1 over every query, then over the ones still moving
    go = k < end
    go &= less(flat[np.minimum(k, last)], q)
    k += go
    act = np.flatnonzero(go)
    for _ in range(_SCAN_STEPS - 1):
        if act.size == 0:
            break
        kk, qq = k[act], q[act]
        go = kk < end[act]
        go &= less(flat[np.minimum(kk, last)], qq)
        kk += go
        k[act] = kk
        act = act[go]
    if act.size:  # a crowded bucket: binary search over the rest of it
        k[act] = _search(flat, k[act], end[act], q[act], less)
    k -= base
    return k


def _search(flat, k, end, q, less):
    """Binary search of each query ``q`` in ``flat[k : end]`` (sorted): ``k`` plus the
    number of entries ``less`` than ``q`` there (flat positions; all queries at once,
    ``log2(max(end − k)) + 1`` steps)."""
    last = flat.size - 1
    width = end - k
    while True:
        live = width > 0
        if not live.any():
            return k
        half = width >> 1
        probe = k + half
        go = live & less(flat[np.minimum(probe, last)], q)
        k = np.where(go, probe + 1, k)
        width = np.where(go, width - half - 1, half)
