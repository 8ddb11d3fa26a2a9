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
# positive instead of sorting it (or, in the backward, searching sorted thresholds).
# Read at call time (``_blocks.SMALL_K``): the tests set it to 0 to run the sorted
# branches on small batches.
SMALL_K = 16
_SMALL_K = SMALL_K  # the name the kernels imported before; prefer ``_blocks.SMALL_K``

# the unsigned integer type with a float type's width (its bit patterns)
_UINT = {np.dtype(np.float32): np.dtype(np.uint32), np.dtype(np.float64): np.dtype(np.uint64)}


# rows per block: every temporary of a kernel holds at most this many elements, so the
# kernels add O(B) rows of scratch to their (B, B) outputs, never several full B×B arrays
_BLOCK_ELEMENTS = 1 << 20


def _row_blocks(B: int, cols: int | None = None):
    """Slices of at most ``_BLOCK_ELEMENTS // cols`` of the ``B`` rows (``cols`` defaults
    to ``B``)."""
    cols = B if cols is None else cols
    rows = max(1, _BLOCK_ELEMENTS // max(cols, 1))
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
    for blk in _row_blocks(*d.shape):
        r, c = np.nonzero(terms[blk])
        if r.size == 0:
            continue
        db = d[blk]
        slot, kmax = _slots(r, db.shape[0])
        yield blk, r, c, db, neg[blk], slot, kmax


def row_spans(r: np.ndarray, rows: int):
    """``(start, stop)``: each row's entries in row-major ``np.nonzero`` output."""
    n = np.bincount(r, minlength=rows)
    stop = np.cumsum(n)
    return stop - n, stop


def thresholds(dp: np.ndarray, margin) -> np.ndarray:
    """``τ`` with ``(dp − x) + m > 0  ⇔  x < τ`` for every float ``x ≥ 0`` of ``dp``'s dtype.

    The oracle counts a hinge term ``d(a,p) − d(a,n) + m`` as positive when it is ``> 0``.
    With a margin below the rounding step of ``d(a,p)`` that is not
    ``d(a,n) < fl(d(a,p) + m)`` (``fl(1 + 1e-20) = 1`` would drop the ties
    ``d(a,n) = d(a,p)``).  ``fl(dp − x)`` does not increase with ``x``, and
    ``fl(y + m) > 0 ⇔ y > −m`` exactly, so the predicate holds exactly below a boundary
    ``τ`` within a few ulps of ``fl(dp + m)``: found by ``nextafter`` steps.  NaN stays NaN.
    """
    m = dp.dtype.type(margin)
    t = dp + m
    up = np.asarray(np.inf, dtype=dp.dtype)
    down = np.asarray(-np.inf, dtype=dp.dtype)
    for _ in range(4):  # two steps at most are ever needed; the rest is a guard
        hold = (dp - t) + m > 0
        if not hold.any():
            break
        t = np.where(hold, np.nextafter(t, up), t)
    for _ in range(4):
        prev = np.nextafter(t, down)
        lower = ~((dp - prev) + m > 0) & (t > 0)
        if not lower.any():
            break
        t = np.where(lower, prev, t)
    return t
