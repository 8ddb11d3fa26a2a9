"""NumPy helpers shared by the mining steps' kernels (row blocks, searches, sorted rows).

The kernels are the "native primitive" for every CPU backend: NumPy calls them directly,
the torch backend registers them as custom ops for CPU tensors (opaque to torch.compile),
and the JAX backend reaches them through ``jax.pure_callback`` on CPU.  Inside a kernel
shapes may depend on data (they run eagerly), which lets them skip everything that is
not a term: only positive pairs are searched.

NumPy sorts float32 rows with SIMD sorting networks (x86-simd-sort), an order of
magnitude faster than torch.sort or XLA's sort on CPU; that is the whole point.

All kernels take ``d`` (B, B) float distances, bool masks, and return NumPy arrays.
"""
from __future__ import annotations

import functools

import numpy as np


def _quiet(fn):
    """NaN inputs are legal (the loss is NaN): no RuntimeWarning from the arithmetic."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(invalid="ignore", over="ignore"):
            return fn(*args, **kwargs)

    return wrapper


# at most this many positives per anchor: the kernels make one pass over the row per
# positive instead of sorting it (or, in the backward, searching sorted thresholds)
_SMALL_K = 16

# the unsigned integer type with a float type's width (its bit patterns)
_UINT = {np.dtype(np.float32): np.dtype(np.uint32), np.dtype(np.float64): np.dtype(np.uint64)}


def bsearch(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray, side: str) -> np.ndarray:
    """Vectorised binary search of ``values[k]`` in ``sorted_rows[rows[k]]`` (ascending)."""
    n = sorted_rows.shape[-1]
    lo = np.zeros(values.shape, dtype=np.int64)
    hi = np.full(values.shape, n, dtype=np.int64)
    flat = sorted_rows.reshape(-1)
    base = rows.astype(np.int64) * n
    for _ in range(int(n).bit_length() + 1):
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) >> 1
        v = flat[base + np.minimum(mid, n - 1)]
        right = (v < values) if side == "left" else (v <= values)
        right &= active
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    return lo


def _sorted_negatives(d: np.ndarray, neg: np.ndarray, with_order: bool):
    """Each row's negative distances ascending (+inf after them) and, optionally, the
    column order, ties broken by the smaller index."""
    dn = np.where(neg, d, np.inf)
    dn += 0.0  # -0.0 -> +0.0, so the bit patterns below order like the values
    if not with_order:
        return np.sort(dn, axis=1), None
    B = d.shape[1]  # columns: d may be a block of rows
    if dn.dtype == np.float32:
        # pack (value bits, column) into one uint64 key: one SIMD sort gives the values
        # and a stable order (non-negative float32 bit patterns order like the floats)
        key = (dn.view(np.uint32).astype(np.uint64) << np.uint64(32)) | np.arange(B, dtype=np.uint64)
        key.sort(axis=1)
        order = (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
        srt = (key >> np.uint64(32)).astype(np.uint32).view(np.float32)
        return srt, order
    order = np.argsort(dn, axis=1, kind="stable")
    return np.take_along_axis(dn, order, axis=1), order


# rows per block: every temporary of a kernel holds at most this many elements, so the
# kernels add O(B) rows of scratch to their (B, B) outputs, never several full B×B arrays
_BLOCK_ELEMENTS = 1 << 20


def _row_blocks(B: int):
    rows = max(1, _BLOCK_ELEMENTS // max(B, 1))
    for start in range(0, B, rows):
        yield slice(start, min(B, start + rows))


def _slots(r: np.ndarray, rows: int):
    """Rank of each positive pair within its row (pairs from ``np.nonzero``, row-major),
    and the largest number of positives in a row."""
    npos = np.bincount(r, minlength=rows)
    start = np.concatenate([[0], np.cumsum(npos)[:-1]])
    return np.arange(r.size) - start[r], int(npos.max())


def _term_blocks(d: np.ndarray, terms: np.ndarray, neg: np.ndarray):
    """Per row block holding a term: ``(blk, r, c, d[blk], neg[blk], slot, kmax)`` with the
    terms' block-local rows and columns and their slots (see :func:`_slots`)."""
    for blk in _row_blocks(d.shape[0]):
        r, c = np.nonzero(terms[blk])
        if r.size == 0:
            continue
        db = d[blk]
        slot, kmax = _slots(r, db.shape[0])
        yield blk, r, c, db, neg[blk], slot, kmax
