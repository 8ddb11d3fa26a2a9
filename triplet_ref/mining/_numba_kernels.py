"""The numba bodies of the mining steps' NumPy kernels (imported by :mod:`._numba` only,
on the first kernel call that runs them: importing this module imports numba).

Rows in blocks (``prange``; compiled serial, ``_PARALLEL``: a parallel build doubles
the compile time and would compete with the BLAS threads on a 2-core machine), O(row)
scratch per block, no (B, B) temporary.  Each row: one pass collects its positives and
its negatives (compacted), then one vectorised pass over the negatives per positive:
O(K·C) per row, the fastest form for few positives (P×K batches).  A row with more than ``small_k`` positives
(``_numba.COMPILED_K``) is left to the NumPy body, which sorts it with a SIMD sort (a
comparison sort compiled here is several times slower on fresh data): the kernels
flag those rows in ``many`` and :mod:`._numba` runs the NumPy body on them.

Semantics are those of the NumPy kernels (``batch_all.py``, ``semihard.py``): a hinge
term counts when ``d(a,p) − d(a,n) + m > 0`` exactly (the threshold rule of
:func:`._blocks.thresholds`, here per scalar), sums accumulate in float64, ties of the
semi-hard choice go to the smallest index.  A term reading a NaN distance is NaN and not
counted.  The callers (:mod:`._numba`) pass C-contiguous writable arrays and allocate
the outputs (zeros).
"""
from __future__ import annotations

import numba as nb
import numpy as np
from numba import types
from numba.extending import overload

__all__ = ["hinge_forward", "hinge_backward", "soft_forward", "soft_backward", "semihard_choice",
           "row_counts"]

_JIT = dict(cache=True, nogil=True)
_PARALLEL = False  # True: blocks of rows on numba's thread pool


@nb.njit(**_JIT)
def _tau(dp, m, up, down):
    """``τ`` with ``(dp − x) + m > 0 ⇔ x < τ`` (``_blocks.thresholds`` for one value,
    in ``dp``'s dtype; ``up``/``down`` are ±inf of that dtype)."""
    t = dp + m
    for _ in range(4):
        if (dp - t) + m > 0:
            t = np.nextafter(t, up)
        else:
            break
    for _ in range(4):
        prev = np.nextafter(t, down)
        if not ((dp - prev) + m > 0) and t > 0:
            t = prev
        else:
            break
    return t


@nb.njit(fastmath={"reassoc"}, **_JIT)
def _below(dn, nn, t):
    """``(#{j: dn[j] < t}, Σ_{dn[j] < t} (t − dn[j]))`` over ``dn[:nn]`` (float64 sum,
    any order: a vectorised pass)."""
    c = 0
    s = 0.0
    t64 = np.float64(t)
    for j in range(nn):
        x = dn[j]
        h = x < t
        c += 1 if h else 0
        s += (t64 - np.float64(x)) if h else 0.0
    return c, s


@nb.njit(**_JIT)
def _add_below(acc, dn, nn, t, w):
    """``acc[j] += w`` where ``dn[j] < t`` (a vectorised pass)."""
    for j in range(nn):
        acc[j] += w if dn[j] < t else 0.0


def _ordered_keys(a):
    """Signed integers of ``a``'s width that order like its floats (no NaN, no −0.0):
    ``a`` reinterpreted in place (negative floats' magnitude bits flipped)."""


@overload(_ordered_keys)
def _ordered_keys_impl(a):
    itype, flip = (np.int32, np.int32(0x7FFFFFFF)) if a.dtype == types.float32 else \
        (np.int64, np.int64(0x7FFFFFFFFFFFFFFF))

    def impl(a):
        k = a.view(itype)
        for j in range(k.shape[0]):
            v = k[j]
            k[j] = v ^ flip if v < 0 else v
        return k

    return impl


@nb.njit(**_JIT)
def _min_above(keys, nn, t, big):
    """The smallest ``keys[j] > t`` over ``keys[:nn]`` (``big`` when none): an integer
    minimum, a vectorised pass."""
    best = big
    for j in range(nn):
        y = keys[j]
        y = y if y > t else big
        best = min(best, y)
    return best


@nb.njit(**_JIT)
def _count(mask_row):
    """The number of ``True`` in a row (a vectorised pass)."""
    k = 0
    for c in range(mask_row.shape[0]):
        k += 1 if mask_row[c] else 0
    return k


@nb.njit(**_JIT)
def row_counts(mask, out):
    """``out[a]`` = the number of ``True`` in row ``a``."""
    for a in range(mask.shape[0]):
        out[a] = _count(mask[a])


@nb.njit(**_JIT)
def _split(drow, term_row, neg_row, cols, dn, ncols, zero):
    """One branchless pass over a row: the term columns into ``cols``, the negatives'
    values (NaN excluded, −0.0 as +0.0) into ``dn`` and their columns into ``ncols``, ascending:
    ``(k, nn, number of NaN negatives)``."""
    k = 0
    nn = 0
    n_nan = 0
    for c in range(drow.shape[0]):
        x = drow[c]
        cols[k] = c
        k += 1 if term_row[c] else 0
        q = neg_row[c]
        real = x == x
        dn[nn] = x + zero  # −0.0 → +0.0
        ncols[nn] = c
        nn += 1 if (q and real) else 0
        n_nan += 1 if (q and not real) else 0
    return k, nn, n_nan


_ROWS = 32  # rows per parallel task (one set of scratch rows per task)


@nb.njit(parallel=_PARALLEL, **_JIT)
def hinge_forward(d, pos, neg, m, up, down, small_k, out, count, many):
    """``out[a,p] = Σ_{n: d(a,n) < τ} (d(a,p) + m − d(a,n))`` (≥ 0, float64 sums) and
    ``count[a,p]`` the number of those negatives, at positive pairs (NaN where a term
    reads a NaN distance); rows with more than ``small_k`` positives: ``many[a]``."""
    R, C = d.shape
    m64 = np.float64(m)
    zero = m - m
    for blk in nb.prange((R + _ROWS - 1) // _ROWS):
        cols = np.empty(C, dtype=np.int64)
        dn = np.empty(C, dtype=d.dtype)
        ncols = np.empty(C, dtype=np.int64)
        for a in range(blk * _ROWS, min(R, (blk + 1) * _ROWS)):
            if _count(pos[a]) > small_k:
                many[a] = True
                continue
            drow = d[a]
            k, nn, n_nan = _split(drow, pos[a], neg[a], cols, dn, ncols, zero)
            # per positive: Σ (τ − x) over the negatives x < τ, then
            # L = Σ (v − x) = S + c·(v − τ) with v = d(a,p) + m
            for i in range(k):
                p = cols[i]
                t = _tau(drow[p], m, up, down)
                c, sm = _below(dn, nn, t)
                if n_nan > 0 or t != t:
                    out[a, p] = np.nan
                elif c > 0:
                    val = sm + c * (np.float64(drow[p]) + m64 - np.float64(t))
                    out[a, p] = val if val > 0.0 else 0.0
                count[a, p] = c


@nb.njit(parallel=_PARALLEL, **_JIT)
def hinge_backward(d, pos, neg, m, up, down, small_k, grad, count, out, many):
    """``out[a,p] = grad[a,p]·count[a,p]``,
    ``out[a,n] = −Σ_{p: d(a,n) < τ(a,p)} grad[a,p]`` (float64 sums); rows with more
    than ``small_k`` positives: ``many[a]``."""
    R, C = d.shape
    zero = m - m
    for blk in nb.prange((R + _ROWS - 1) // _ROWS):
        cols = np.empty(C, dtype=np.int64)
        dn = np.empty(C, dtype=d.dtype)
        ncols = np.empty(C, dtype=np.int64)
        acc = np.empty(C, dtype=np.float64)
        for a in range(blk * _ROWS, min(R, (blk + 1) * _ROWS)):
            if _count(pos[a]) > small_k:
                many[a] = True
                continue
            drow = d[a]
            k, nn, n_nan = _split(drow, pos[a], neg[a], cols, dn, ncols, zero)
            if k == 0:
                continue
            acc[:nn] = 0.0
            for i in range(k):
                p = cols[i]
                out[a, p] = np.float64(grad[a, p]) * count[a, p]
                _add_below(acc, dn, nn, _tau(drow[p], m, up, down), np.float64(grad[a, p]))
            for j in range(nn):
                out[a, ncols[j]] = 0.0 - acc[j]  # +0.0 where no term, as the NumPy body


@nb.njit(**_JIT)
def _softplus_sigmoid(t, one, zero):
    """``(softplus(t), σ(t))`` without overflow, in ``t``'s dtype."""
    e = np.exp(-abs(t))
    sp = (t if t > zero else zero) + np.log1p(e)
    sg = (one if t > zero else e) / (one + e)
    return sp, sg


@nb.njit(parallel=_PARALLEL, **_JIT)
def soft_forward(d, pos, neg, m, one, out, count, slope):
    """``out[a,p] = Σ_n softplus(t)``, ``slope[a,p] = Σ_n σ(t)`` with
    ``t = d(a,p) + m − d(a,n)`` (in the dtype, as the NumPy body; float64 sums),
    ``count[a,p]`` the number of negatives.  O(K·C) per row: every row runs here."""
    R, C = d.shape
    zero = one - one
    for blk in nb.prange((R + _ROWS - 1) // _ROWS):
        cols = np.empty(C, dtype=np.int64)
        dn = np.empty(C, dtype=d.dtype)
        ncols = np.empty(C, dtype=np.int64)
        for a in range(blk * _ROWS, min(R, (blk + 1) * _ROWS)):
            drow = d[a]
            k, nn, n_nan = _split(drow, pos[a], neg[a], cols, dn, ncols, zero)
            for i in range(k):
                p = cols[i]
                v = drow[p] + m
                s = 0.0
                g = 0.0
                for j in range(nn):
                    sp, sg = _softplus_sigmoid(v - dn[j], one, zero)
                    s += sp
                    g += sg
                out[a, p] = np.nan if n_nan > 0 else s
                slope[a, p] = np.nan if n_nan > 0 else g
                count[a, p] = nn + n_nan


@nb.njit(parallel=_PARALLEL, **_JIT)
def soft_backward(d, pos, neg, m, one, grad, slope, out):
    """``out[a,p] = grad[a,p]·slope[a,p]``, ``out[a,n] = −Σ_p grad[a,p]·σ(t)``."""
    R, C = d.shape
    zero = one - one
    for blk in nb.prange((R + _ROWS - 1) // _ROWS):
        cols = np.empty(C, dtype=np.int64)
        dn = np.empty(C, dtype=d.dtype)
        ncols = np.empty(C, dtype=np.int64)
        acc = np.empty(C, dtype=np.float64)
        for a in range(blk * _ROWS, min(R, (blk + 1) * _ROWS)):
            drow = d[a]
            k, nn, n_nan = _split(drow, pos[a], neg[a], cols, dn, ncols, zero)
            if k == 0:
                continue
            acc[:nn] = 0.0
            for i in range(k):
                p = cols[i]
                out[a, p] = grad[a, p] * slope[a, p]
                v = drow[p] + m
                w = np.float64(grad[a, p])
                for j in range(nn):
                    acc[j] += w * _softplus_sigmoid(v - dn[j], one, zero)[1]
            for j in range(nn):
                out[a, ncols[j]] = 0.0 - acc[j]
            if n_nan > 0:  # σ(NaN) = NaN
                for c in range(C):
                    if neg[a, c] and drow[c] != drow[c]:
                        out[a, c] = np.nan


@nb.njit(parallel=_PARALLEL, **_JIT)
def semihard_choice(d, neg, term, zero, small_k, chosen, semi, many):
    """Per term ``(a, p)``: the negative nearest strictly beyond ``d(a,p)`` (ties: the
    smallest index), else the first farthest negative.  NaN distances are never chosen
    (unless every negative is NaN: the first negative), nor +inf by the strict rule;
    rows with more than ``small_k`` terms: ``many[a]``."""
    R, C = d.shape
    for blk in nb.prange((R + _ROWS - 1) // _ROWS):
        cols = np.empty(C, dtype=np.int64)
        dn = np.empty(C, dtype=d.dtype)
        ncols = np.empty(C, dtype=np.int64)
        one = np.empty(2, dtype=d.dtype)
        for a in range(blk * _ROWS, min(R, (blk + 1) * _ROWS)):
            if _count(term[a]) > small_k:
                many[a] = True
                continue
            drow = d[a]
            k, nn, n_nan = _split(drow, term[a], neg[a], cols, dn, ncols, zero)
            if k == 0:
                continue
            if nn == 0:
                if n_nan > 0:  # every negative NaN: the first one, as the fallback
                    first = 0
                    while not neg[a, first]:
                        first += 1
                    for i in range(k):
                        chosen[a, cols[i]] = first
                continue  # no negative: nothing to choose (0, not semi-hard)
            keys = _ordered_keys(dn[:nn])  # dn as ordered integers, in place
            one[1] = np.inf
            big = _ordered_keys(one[1:])[0]  # +inf's key: not a strict choice
            far = 0  # the first farthest negative
            for j in range(1, nn):
                if keys[j] > keys[far]:
                    far = j
            for i in range(k):
                col = cols[i]
                x = drow[col]
                if x != x:
                    chosen[a, col] = ncols[far]
                    continue
                one[0] = x + zero
                best = _min_above(keys, nn, _ordered_keys(one[:1])[0], big)
                if best < big:
                    j = 0
                    while keys[j] != best:  # its first position: ties to the smallest index
                        j += 1
                    chosen[a, col] = ncols[j]
                    semi[a, col] = True
                else:
                    chosen[a, col] = ncols[far]


# --- contrastive pair sums (engineer "fused"; mining/contrastive.py) ---------------------
# One pass over the pairs, branch-free per element (vectorised): each term in the
# distances' dtype exactly as the portable formula computes it, sums in float64.

@nb.njit(fastmath={"reassoc"}, **_JIT)
def _contrastive_row(drow, prow, nrow, m, half, zero):
    s = 0.0
    sl = 0.0
    c = 0
    for j in range(drow.shape[0]):
        x = drow[j]
        g = m - np.sqrt(x)
        g = zero if g <= zero else g  # max(g, 0), NaN stays NaN
        t = half * x if prow[j] else (half * (g * g) if nrow[j] else zero)
        s += np.float64(t)
        sl += np.float64(g) if nrow[j] else 0.0
        c += 1 if t > zero else 0
    return s, sl, c


@nb.njit(parallel=_PARALLEL, **_JIT)
def contrastive_sums(d2, pos, neg, m, acc):
    """``acc[:] = (Σ t, Σ_neg max(m − √d², 0), #{t > 0})`` (see mining/contrastive.py)."""
    R = d2.shape[0]
    half = d2.dtype.type(0.5)
    zero = d2.dtype.type(0)
    part = np.zeros((R, 3), dtype=np.float64)
    for a in nb.prange(R):
        s, sl, c = _contrastive_row(d2[a], pos[a], neg[a], m, half, zero)
        part[a, 0] = s
        part[a, 1] = sl
        part[a, 2] = c
    for a in range(R):
        for i in range(3):
            acc[i] += part[a, i]


@nb.njit(error_model="numpy", **_JIT)  # IEEE division (no ZeroDivisionError branch): vectorised
def _contrastive_grad_row(drow, prow, nrow, m, g, orow, zero):
    half_g = g * drow.dtype.type(0.5)
    two = drow.dtype.type(2)
    for j in range(drow.shape[0]):
        e = np.sqrt(drow[j])
        gap = m - e
        gap = zero if gap <= zero else gap
        v = -(g * gap) / (two * e)  # selected only where e > 0
        orow[j] = half_g if prow[j] else (v if (nrow[j] and e > zero) else zero)


@nb.njit(parallel=_PARALLEL, **_JIT)
def contrastive_grad(d2, pos, neg, m, g, out):
    """``out = g · ∂(Σ t)/∂d²``: ½g at positives, ``−g·max(m − e, 0)/(2e)`` at negatives
    with ``e > 0``, 0 elsewhere."""
    zero = d2.dtype.type(0)
    for a in nb.prange(d2.shape[0]):
        _contrastive_grad_row(d2[a], pos[a], neg[a], m, g, out[a], zero)
