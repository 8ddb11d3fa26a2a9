"""NumPy helpers shared by the mining steps' kernels (row blocks, searches, sorted rows).

The kernels are the "native primitive" for every CPU backend: NumPy calls them directly,
the torch backend registers them as custom ops for CPU tensors (opaque to torch.compile),
and the JAX backend reaches them through a host callback (``buffer_callback``) on CPU.  Inside a kernel
shapes may depend on data (they run eagerly), which lets them skip everything that is
not a term: only positive pairs are searched.

NumPy sorts float32 rows with SIMD sorting networks (x86-simd-sort), an order of
magnitude faster than torch.sort or XLA's sort on CPU; that is the whole point.

All kernels take ``d`` (B, B) float distances, bool masks, and return NumPy arrays.
"""
from __future__ import annotations

import functools
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

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


def _row_groups(terms: np.ndarray, small_k: int):
    """Per row block, the rows that hold a term, split by their number of terms:
    ``(rows, few)`` pairs, ``rows`` a slice (every row of the block in that group) or an
    index array, ``few`` true for at most ``small_k`` terms per row.

    Each group runs its own branch, so a few anchors with many positives (a big class in
    an otherwise P×K batch) do not send their whole block down the sorted branch."""
    R, C = terms.shape
    for blk in _row_blocks(R, C):
        npos = np.count_nonzero(terms[blk], axis=1)
        few = (npos > 0) & (npos <= small_k)
        many = npos > small_k
        nfew, nmany = int(np.count_nonzero(few)), int(np.count_nonzero(many))
        n = blk.stop - blk.start
        for group, count, is_few in ((few, nfew, True), (many, nmany, False)):
            if count == n:
                yield blk, is_few
            elif count:
                yield blk.start + np.flatnonzero(group), is_few


def for_row_groups(terms: np.ndarray, inputs, outputs, few, many, threaded_small_k=None, small_k=None) -> None:
    """Run ``few(*inputs[rows], *outputs[rows])`` or ``many(..., threaded)`` on each group
    of :func:`_row_groups`; the branch functions write into the (zeroed) output rows they
    are given.  Rows without a term are left as they are.

    ``threaded``: the call is large (``THREAD_MIN_ELEMENTS``) and there are several cores,
    so the sorted branch runs its sub-blocks in threads; then it beats one pass per term
    from fewer terms on, and anchors with more than ``min(SMALL_K, threaded_small_k)``
    terms take it (the hinge kernels: measured at B = 4096, float32, 2 cores).  ``small_k``,
    if given, caps ``SMALL_K`` with or without threads (a kernel whose sorted branch is
    cheap)."""
    threaded = terms.size >= THREAD_MIN_ELEMENTS and cpu_count() > 1
    cap = small_k
    small_k = SMALL_K if not threaded or threaded_small_k is None else min(SMALL_K, threaded_small_k)
    if cap is not None:
        small_k = min(small_k, cap)
    for rows, is_few in _row_groups(terms, small_k):
        ins = [a[rows] for a in inputs]
        run = few if is_few else (lambda *a: many(*a, threaded))
        if isinstance(rows, slice):
            run(*ins, *[o[rows] for o in outputs])
            continue
        outs = [np.zeros((rows.size,) + o.shape[1:], dtype=o.dtype) for o in outputs]
        run(*ins, *outs)
        for o, t in zip(outputs, outs):
            o[rows] = t


# --- the sorted branch: one sort per row of packed (value, category, column) keys -------
#
# A float32 ``x >= 0`` orders like its bit pattern, so the uint64 key
# ``bits(x) << 32 | category << 30 | column`` sorts a row by value, then category, then
# column: one SIMD sort of integers gives the order of the values with every tie broken
# by the rule the kernel needs (the category decides between a threshold or term and a
# negative of equal value; the column gives the smallest index first).  Value, category
# and column are read back from the sorted keys' 32-bit halves: no argsort, no search.

_COLUMN_BITS = 30
COLUMN_MASK = np.uint32((1 << _COLUMN_BITS) - 1)
_LO, _HI = (0, 1) if sys.byteorder == "little" else (1, 0)  # the uint32 halves of a uint64

# rows per sub-block of the sorted branch: its dozen (rows, C) temporaries stay in cache
_SORT_BLOCK_ELEMENTS = 1 << 16
# the sorted branch runs its sub-blocks in threads (NumPy releases the GIL in sorts and
# array loops) when a kernel call has at least this many elements; tests set it to 0
THREAD_MIN_ELEMENTS = 1 << 20
# with threads, the hinge kernels sort the rows of more than this many positives (their
# pass per positive costs about as much as a threaded sort from 10 positives on)
SMALL_K_THREADED = 10


def packable(values: np.ndarray) -> bool:
    """Whether the packed keys serve ``values``: float32 with ``-0.0`` made ``+0.0``, no
    value below zero (NaN is fine: it sorts after +inf), at most 2^30 columns."""
    return (values.dtype == np.float32 and values.shape[1] <= (1 << _COLUMN_BITS)
            and not float(np.fmin.reduce(values, axis=None, initial=0)) < 0)


class SortedRows:
    """The rows of a block sorted by packed keys ``bits(value) << 32 | category << 30 |
    column``, categories 0 for ``first``, 1 for ``second`` (disjoint bool masks), 2 for
    every other entry.  ``values`` float32 ``>= 0`` (NaN allowed), ``-0.0`` made ``+0.0``.

    Attributes: ``key`` (rows, C) uint64 sorted; ``value`` (float32 view) and ``low``
    (uint32 view: category and column) of its halves; ``category`` (uint32, rows × C);
    ``source`` the flat index ``r·C + column`` (intp) each sorted entry came from."""

    def __init__(self, values: np.ndarray, first: np.ndarray, second: np.ndarray):
        rows, C = values.shape
        # low half: 2 − 2·first − second (arithmetic, not a select: a select on a random
        # mask mispredicts a branch per element), then the column
        low = first.astype(np.uint32)
        low <<= np.uint32(1)
        low += second
        np.subtract(np.uint32(2), low, out=low)
        low <<= np.uint32(_COLUMN_BITS)
        low |= np.arange(C, dtype=np.uint32)
        self.key = key = np.empty((rows, C), dtype=np.uint64)
        halves = key.view(np.uint32).reshape(rows, C, 2)
        np.copyto(halves[..., _HI], values.view(np.uint32))
        np.copyto(halves[..., _LO], low)
        key.sort(axis=1)
        self.value = halves[..., _HI].view(np.float32)
        self.low = halves[..., _LO]
        self.category = self.low >> np.uint32(_COLUMN_BITS)
        self.source = np.bitwise_and(key, np.uint64(COLUMN_MASK)).view(np.intp)
        self.source += np.arange(0, rows * C, C, dtype=np.intp)[:, None]

    def where(self, category: int) -> np.ndarray:
        """Flat positions (in the sorted block) of the entries of a category, row-major."""
        return np.flatnonzero(self.category == np.uint32(category))


def running_sums(x: np.ndarray, reverse: bool = False) -> np.ndarray:
    """Running sums along the rows of float32 ``x`` (from the end with ``reverse``), as
    float64.

    Where ``x`` is finite the sums are exact integer sums of ``x`` in fixed point (``x``
    scaled by a power of two so that a row's sum stays below 2^62, truncated: an error
    below ``C² · max|x| · 2^-62``, beside ``C · max|x| · 2^-53`` for a float64 running
    sum) — an integer running sum is several times faster than a float64 one, whose
    additions wait on each other.  Otherwise a float64 running sum."""
    rows, C = x.shape
    big = max(float(x.max(initial=0)), -float(x.min(initial=0)))
    if not math.isfinite(big):
        y = x[:, ::-1] if reverse else x
        out = np.cumsum(y, axis=1, dtype=np.float64)
        return out[:, ::-1] if reverse else out
    if big == 0:
        return np.zeros((rows, C), dtype=np.float64)
    shift = min(62 - C.bit_length() - math.frexp(big)[1], 127)  # |x|·2^shift < 2^62 / C
    q = (x * np.float32(2.0**shift)).astype(np.int64)  # exact scaling, truncated
    y = q[:, ::-1] if reverse else q
    np.cumsum(y, axis=1, out=y)
    out = q.astype(np.float64)
    out *= 2.0**-shift
    return out


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def sorted_sub_blocks(rows: int, cols: int, fn: Callable[[slice], None], threaded: bool) -> None:
    """``fn(sl)`` for sub-blocks ``sl`` of ``rows`` rows (each at most
    ``_SORT_BLOCK_ELEMENTS`` elements), in ``cpu_count()`` threads if ``threaded``; ``fn``
    writes disjoint rows.  Scratch: a dozen sub-blocks per thread."""
    step = max(1, _SORT_BLOCK_ELEMENTS // max(cols, 1))
    slices = [slice(s, min(rows, s + step)) for s in range(0, rows, step)]
    workers = min(cpu_count(), len(slices)) if threaded else 1

    def quiet(sl):  # np.errstate is per thread
        with np.errstate(invalid="ignore", over="ignore"):
            fn(sl)

    in_threads(quiet if workers > 1 else fn, slices, workers)


def in_threads(fn: Callable[[slice], None], slices, workers: int) -> None:
    """``fn(sl)`` for every ``sl`` of ``slices``, in ``workers`` threads (a pool started
    per call: none survives a fork), or in the calling thread when ``workers <= 1``; a
    worker's exception is re-raised in the caller."""
    if workers <= 1:
        for sl in slices:
            fn(sl)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, slices):  # re-raises a worker's exception
            pass


def flat(a: np.ndarray) -> np.ndarray:
    """The 1-D view of a C-contiguous array (never a copy: writes through it land)."""
    if not a.flags.c_contiguous:
        raise RuntimeError("triplet_ref internal error: a kernel block is not C-contiguous")
    return a.reshape(-1)


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
    uint = _UINT.get(t.dtype)
    if uint is not None and not (t.view(uint) >> uint.type(8 * t.itemsize - 1)).any():
        # no sign bit set (t >= +0.0 or +NaN): a step to the next float up or down is
        # one more or one less in the bit pattern, added branch-free where it applies
        bits = t.view(uint)
        a = dp - t
        a += m
        step = a > 0
        for _ in range(4):  # fl(dp + m) rounded down: τ is the next float up (one step)
            if not step.any():
                break
            bits += step
            np.subtract(dp, t, out=a)
            a += m
            np.greater(a, 0, out=step)
        for _ in range(4):
            np.subtract(dp, (bits - uint.type(1)).view(t.dtype), out=a)
            a += m
            np.less_equal(a, 0, out=step)  # ~(a > 0): a is not NaN where t > 0
            step &= t > 0
            if not step.any():
                break
            bits -= step
        return t
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
