"""The numba pass of the euclidean distance matrix (imported by :func:`.sqdist.stripe_kernel`
only, on the first call that runs it: importing this module imports numba).

:func:`sqdist_stripe` finishes one stripe of rows of a matrix whose part on and above the
diagonal holds the Gram products of the shifted rows: the epilogue ``d² = (|x_i|² +
|x_j|²) − 2 G_ij`` (NumPy's order of operations), the close-pair test of the float
refinement (``d²_ij < thr_i + thr_j``, :func:`triplet_ref.distances.close_pair_threshold`),
the clamp at 0, the square root, the zero diagonal and the exact mirror image below the
diagonal — one sweep over cache-sized column tiles instead of five passes over the
stripe, the transposed copy in 8 × 4 blocks (measured fastest at B = 4096: the writes
stay in a few pages and lines).  The per-row loops run on 0-based slices (LLVM
vectorises them only so) and are free of NaN-swallowing ``max``: a NaN stays NaN.
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["sqdist_stripe"]

_JIT = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")

#: the mirror's blocks: W columns of the stripe become W rows below it, H rows at a time
_W = 8
_H = 4


@nb.njit(**_JIT)
def _count_close(row, sq, thr, sr, tr):
    """``#{c : (sr + sq_c) − 2 row_c < tr + thr_c}`` (vectorised; NaN is not close)."""
    two = row.dtype.type(2)
    h = 0
    for c in range(row.shape[0]):
        v = (sr + sq[c]) - two * row[c]
        h += v < tr + thr[c]
    return h


@nb.njit(**_JIT)
def _finish(row, sq, sr, sqrt):
    """In place: ``row_c ← max((sr + sq_c) − 2 row_c, 0)``, square-rooted when ``sqrt``
    (NaN stays NaN)."""
    two = row.dtype.type(2)
    zero = row.dtype.type(0)
    if sqrt:
        for c in range(row.shape[0]):
            v = (sr + sq[c]) - two * row[c]
            row[c] = np.sqrt(zero if v < zero else v)
    else:
        for c in range(row.shape[0]):
            v = (sr + sq[c]) - two * row[c]
            row[c] = zero if v < zero else v


@nb.njit(**_JIT)
def sqdist_stripe(d, sq, thr, i, i2, c_lo, c_hi, tile, sqrt, out_r, out_c, out_v, count):
    """Finish the rows ``i:i2`` of ``d`` ``(B, B)`` in the columns ``c_lo:c_hi``
    (``c_lo >= i``), in place, ``tile`` columns at a time (the stripe's tile stays in
    cache between its epilogue and its mirror: 128 columns of 512 rows, float32, measured
    best at B = 4096; 64-256 came within a few percent).

    On entry ``d[r, c]`` (``r`` in ``i:i2``, ``c > r``) holds ``G_rc``; ``sq`` ``(B,)`` the
    Gram diagonal, ``thr`` ``(B,)`` the close-pair weights ``tau·sq`` (``-inf``: no test).
    On return, for those ``r < c``: ``d[r, c] = d[c, r] = finish(sq_r + sq_c − 2 G_rc)``
    (clamped at 0, square-rooted when ``sqrt``) and ``d[c, c] = 0`` for ``c`` in
    ``c_lo:c_hi`` ∩ ``i:i2``.  Every pair with ``d²_rc < thr_r + thr_c`` (before the
    clamp) is appended to ``out_r, out_c, out_v`` (``d²`` clamped, not square-rooted) from
    position ``count`` while they have room.  Returns ``count`` plus the number of such
    pairs (more than the buffers' length: some were not stored).  Calls on disjoint
    column ranges of one stripe touch disjoint entries (threads may run them at once)."""
    cap = out_r.shape[0]
    two = d.dtype.type(2)
    zero = d.dtype.type(0)
    for c0 in range(c_lo, c_hi, tile):
        c2 = min(c_hi, c0 + tile)
        for r in range(i, min(i2, c2)):
            s = max(c0, r + 1)
            if r >= c0:
                d[r, r] = zero
            if s >= c2:
                continue
            sr = sq[r]
            tr = thr[r]
            row = d[r, s:c2]
            sqv = sq[s:c2]
            thv = thr[s:c2]
            if _count_close(row, sqv, thv, sr, tr):
                for c in range(row.shape[0]):
                    v = (sr + sqv[c]) - two * row[c]
                    if v < tr + thv[c]:
                        if count < cap:
                            out_r[count] = r
                            out_c[count] = s + c
                            out_v[count] = zero if v < zero else v
                        count += 1
            _finish(row, sqv, sr, sqrt)
        # the tile's mirror image: d[c, r] = d[r, c] for r < c
        for b0 in range(c0, c2, _W):
            b1 = min(c2, b0 + _W)
            for r0 in range(i, i2, _H):
                r1 = min(i2, r0 + _H)
                if r0 >= b1:
                    break
                if b0 >= r1 and b1 - b0 == _W and r1 - r0 == _H:
                    for b in range(_W):
                        dst = d[b0 + b]
                        for a in range(_H):
                            dst[r0 + a] = d[r0 + a, b0 + b]
                else:
                    for c in range(b0, b1):
                        for r in range(r0, min(r1, c)):
                            d[c, r] = d[r, c]
    return count
