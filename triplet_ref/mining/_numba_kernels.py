"""The numba bodies of the mining steps' NumPy kernels (imported by :mod:`._numba` only,
on the first kernel call that runs them: importing this module imports numba).

Rows in blocks (``prange``; compiled serial, ``_PARALLEL``: a parallel build doubles
the compile time and would compete with the BLAS threads on a 2-core machine), O(row)
scratch per block, no (B, B) temporary.  Each row: one pass collects its positives and
its negatives (compacted), then one of two passes by its number of positives K:

* at most ``small_k`` (``_numba.COMPILED_K``): one vectorised pass over the negatives per
  positive, O(K·C) per row, the fastest form for few positives (P×K batches);
* more: the bucket pass (hinge forward and backward, semi-hard choice), O(C + K·bucket)
  per row: the negatives counting-sorted into ``2·#negatives`` buckets of equal width
  over their finite range, every query answered from prefix arrays over the buckets
  below its own and a scan of its one bucket (see the section below).  No row goes back
  to the NumPy body.  Rows whose values crowd one bucket (all equal, one far outlier)
  are exact there too, only O(K·C) again.

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
from llvmlite import ir
from numba.extending import intrinsic, overload

__all__ = ["hinge_forward", "hinge_backward", "soft_forward", "soft_backward", "semihard_choice"]

_JIT = dict(cache=True, nogil=True)
_PARALLEL = False  # True: blocks of rows on numba's thread pool


@intrinsic
def _bits(typingctx, x):  # pragma: no cover (runs when numba compiles a caller; cached after)
    """The bit pattern of a float32/float64 scalar as int32/int64 (a bitcast)."""
    if not isinstance(x, types.Float):
        return None
    ity = types.int32 if x.bitwidth == 32 else types.int64

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(ity))

    return ity(x), codegen


@intrinsic
def _from_bits(typingctx, i, like):  # pragma: no cover (as _bits)
    """The float of ``like``'s type with bit pattern ``i`` (a bitcast)."""
    if not isinstance(like, types.Float):
        return None

    def codegen(context, builder, sig, args):
        ity = ir.IntType(like.bitwidth)
        return builder.bitcast(builder.trunc(args[0], ity) if args[0].type.width > like.bitwidth
                               else builder.sext(args[0], ity) if args[0].type.width < like.bitwidth
                               else args[0], context.get_value_type(like))

    return like(i, like), codegen


@nb.njit(**_JIT)
def _next(t, toward):
    """``np.nextafter(t, toward)`` (``toward`` ±inf), by one step of the bit pattern
    where ``t`` is positive and finite (no libm call)."""
    if t > 0 and t - t == 0:
        return _from_bits(_bits(t) + (1 if toward > t else -1), t)
    return np.nextafter(t, toward)


@nb.njit(**_JIT)
def _tau(dp, m, up, down):
    """``τ`` with ``(dp − x) + m > 0 ⇔ x < τ`` (``_blocks.thresholds`` for one value,
    in ``dp``'s dtype; ``up``/``down`` are ±inf of that dtype)."""
    t = dp + m
    for _ in range(4):  # pragma: no branch (a guard: it ends by its break)
        if (dp - t) + m > 0:
            t = _next(t, up)
        else:
            break
    for _ in range(4):
        prev = _next(t, down)
        if not ((dp - prev) + m > 0) and t > 0:
            t = prev
        else:
            return t
    # a margin of the other sign that cancels most of dp: fl(dp − x) is flat over many
    # floats x, so τ may lie far below fl(dp + m): bisect the bit patterns in [+0.0, t]
    # (``_blocks._bisect_down``; the rule is monotone in x)
    if not ((dp - (t - t)) + m > 0):
        return t - t  # +0.0: the rule fails everywhere
    lo = 0
    hi = _bits(t)
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        if (dp - _from_bits(mid, t)) + m > 0:
            lo = mid
        else:
            hi = mid
    return _from_bits(hi, t)


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
def _ordered_keys_impl(a):  # pragma: no cover (as _bits)
    itype, flip = (np.int32, np.int32(0x7FFFFFFF)) if a.dtype == types.float32 else \
        (np.int64, np.int64(0x7FFFFFFFFFFFFFFF))

    def impl(a):
        k = a.view(itype)
        for j in range(k.shape[0]):
            v = k[j]
            k[j] = v ^ flip if v < 0 else v
        return k

    return impl


if nb.config.DISABLE_JIT:  # pragma: no cover
    # NUMBA_DISABLE_JIT=1 (the README's coverage recipe runs the bodies as Python so that
    # coverage.py sees them): the bitcasts above are compiled-only intrinsics and overloads
    def _bits(x):
        x = np.asarray(x)
        return x.view(np.int32 if x.dtype == np.float32 else np.int64)[()]

    def _from_bits(i, like):
        like = np.asarray(like)
        itype = np.int32 if like.dtype == np.float32 else np.int64
        return np.asarray(i).astype(itype).view(like.dtype)[()]

    def _ordered_keys(a):
        itype, flip = (np.int32, np.int32(0x7FFFFFFF)) if a.dtype == np.float32 else \
            (np.int64, np.int64(0x7FFFFFFFFFFFFFFF))
        k = a.view(itype)
        k[k < 0] ^= flip
        return k


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


# --- the bucket pass: rows with many positives (more than ``small_k``) -----------------
#
# A row's negatives (the backward: its thresholds) are counting-sorted into ``nb``
# buckets of equal width over the range of the negatives' finite values (``_bucket``:
# monotone, x ≤ y ⇒ bucket(x) ≤ bucket(y), so every value of a lower bucket is below
# every value of a higher one; ±inf and any query outside the range clamp to the end
# buckets, a NaN query to bucket 0).  A query is answered from prefix counts and sums
# over the buckets below its own plus its own bucket: a masked, branch-free pass over
# the bucket's first ``_WINDOW`` slots and a plain one over the rest of a fuller bucket
# (the hinge forward and backward need no order within a bucket).  The semi-hard choice
# sorts within the buckets too (one insertion pass, stable: ties keep their column
# order; a merge sort for a crowded bucket): a term's choice is the value at its
# rank, found by the same masked count and a binary search.  O(C + nb + K·bucket) per
# row instead of O(K·C).  Values crowding one bucket (all equal, one far outlier) are
# exact too, the hinge then O(K·C) again, the choice O(C log C).

_BUCKETS = 2  # buckets per negative (nb = 2·#negatives): a bucket holds about one
_WINDOW = 4  # a query reads this many slots from its bucket's start branch-free (masked)
_CROWDED = 32  # a bucket with more values is merge-sorted, not by insertion


@nb.njit(**_JIT)
def _tau_fast(dp, m):
    """``(τ, ok)``: :func:`_tau`'s value where ``ok`` (``fl(d + m)`` or the float above
    it, positive and finite, the rule checked at it and one step below), branch-free."""
    t = dp + m
    b = _bits(t)
    b += 1 if (dp - t) + m > 0 else 0  # fl(d + m) rounded down: τ is the next float
    t1 = _from_bits(b, t)
    prev = _from_bits(b - 1, t)
    ok = (not ((dp - t1) + m > 0)) & ((dp - prev) + m > 0) & (t > 0) & (t1 - t1 == 0)
    return t1, ok


@nb.njit(**_JIT)
def _taus(drow, cols, k, m, up, down, tv):
    """``tv[i] = _tau(drow[cols[i]], …)`` for ``i < k``: one branch-free pass for the
    usual case (:func:`_tau_fast`), :func:`_tau` for the rest."""
    slow = 0
    for i in range(k):
        t, ok = _tau_fast(drow[cols[i]], m)
        tv[i] = t
        slow += 0 if ok else 1
    if slow:
        for i in range(k):
            dp = drow[cols[i]]
            if not _tau_fast(dp, m)[1]:
                tv[i] = _tau(dp, m, up, down)


@nb.njit(**_JIT)
def _bucket_range(dn, nn, items):
    """``(lo, scale, nb)``: ``nb`` buckets (``_BUCKETS`` per item to sort, ``items``)
    over ``dn[:nn]``'s finite values,
    ``bucket(x) = ⌊(x − lo)·scale⌋`` clamped to ``[0, nb)`` (``scale`` 0 where the
    values are one or the range does not fit: everything in bucket 0)."""
    lo = np.inf
    hi = -np.inf
    for j in range(nn):
        x = np.float64(dn[j])
        fin = x - x == 0.0
        lo = min(lo, x if fin else lo)
        hi = max(hi, x if fin else hi)
    nbk = max(1, items * _BUCKETS)
    if not lo < hi:  # one finite value, or none
        return (lo if lo <= hi else 0.0), 0.0, nbk
    scale = nbk / (hi - lo)
    if not scale < np.inf:
        scale = 0.0
    return lo, scale, nbk


@nb.njit(**_JIT)
def _bucket(x, lo, scale, top):
    """The bucket of ``x`` (any float; NaN → 0): ``⌊(x − lo)·scale⌋`` in ``[0, top]``,
    monotone in ``x``."""
    f = (np.float64(x) - lo) * scale
    if f >= top:
        return np.int64(top)
    if f > 0.0:
        return np.int64(f)
    return np.int64(0)


@nb.njit(**_JIT)
def _bucket_sort(vals, cols, n, lo, scale, nbk, bk, start, sv, sc):
    """``vals[:n]`` (and ``cols[:n]``) into ``sv``/``sc`` by a stable counting sort by
    bucket, bucket ``b`` at ``[start[b], start[b + 1])``."""
    top = np.float64(nbk - 1)
    start[: nbk + 2] = 0
    for j in range(n):
        bk[j] = _bucket(vals[j], lo, scale, top)
    for j in range(n):
        start[bk[j] + 2] += 1
    for b in range(nbk):
        start[b + 2] += start[b + 1]
    # start[b + 1]: the next free slot of bucket b (ends as the start of bucket b + 1)
    for j in range(n):
        q = start[bk[j] + 1]
        sv[q] = vals[j]
        sc[q] = cols[j]
        start[bk[j] + 1] = q + 1


@nb.njit(**_JIT)
def _sort_within(sv, sc, n, nbk, start, tv, tc):
    """Sort ``sv[:n]`` (and ``sc``), bucketed by :func:`_bucket_sort`, within its buckets,
    stable (no NaN): a merge sort for a crowded bucket (``tv``/``tc`` scratch), then one
    insertion pass (out of order only within a bucket)."""
    for b in range(nbk):
        s0 = start[b]
        s1 = start[b + 1]
        if s1 - s0 > _CROWDED:  # one far outlier, a cluster: O(s log s), not O(s²)
            _merge_sort(sv, sc, s0, s1, tv, tc)
    for q in range(1, n):
        y = sv[q]
        if sv[q - 1] > y:
            c = sc[q]
            p = q - 1
            while p >= 0 and sv[p] > y:
                sv[p + 1] = sv[p]
                sc[p + 1] = sc[p]
                p -= 1
            sv[p + 1] = y
            sc[p + 1] = c


@nb.njit(**_JIT)
def _merge_sort(sv, sc, s0, s1, tv, tc):
    """Stable bottom-up merge sort of ``sv[s0:s1]`` (and ``sc``) by value, through the
    scratch ``tv``/``tc`` (indices ``s0:s1`` of it)."""
    width = 1
    into_scratch = True
    while width < s1 - s0:
        if into_scratch:
            _merge_pass(sv, sc, tv, tc, s0, s1, width)
        else:
            _merge_pass(tv, tc, sv, sc, s0, s1, width)
        into_scratch = not into_scratch
        width *= 2
    if not into_scratch:  # the last pass wrote the scratch
        for q in range(s0, s1):
            sv[q] = tv[q]
            sc[q] = tc[q]


@nb.njit(**_JIT)
def _merge_pass(av, ac, bv, bc, s0, s1, width):
    """Merge the sorted runs of ``width`` of ``av[s0:s1]`` pairwise into ``bv`` (stable)."""
    for lo in range(s0, s1, 2 * width):
        mid = min(lo + width, s1)
        hi = min(lo + 2 * width, s1)
        i = lo
        j = mid
        for o in range(lo, hi):
            left = j >= hi or (i < mid and not av[j] < av[i])  # equal: the left one first
            if left:
                bv[o] = av[i]
                bc[o] = ac[i]
                i += 1
            else:
                bv[o] = av[j]
                bc[o] = ac[j]
                j += 1


@nb.njit(**_JIT)
def _rank(sv, start, b, x):
    """The number of values ``≤ x`` (``x`` in bucket ``b``, the buckets sorted within):
    the buckets below, then a count over bucket ``b`` (its first slots masked, the rest
    of a fuller one by binary search)."""
    s0 = start[b]
    s1 = start[b + 1]
    c = s0
    for w in range(_WINDOW):  # masked (the sorted arrays have _WINDOW slots of slack)
        y = sv[s0 + w]
        c += 1 if (s0 + w < s1) & (y <= x) else 0
    lo = s0 + _WINDOW  # the rest of a fuller bucket: a binary search (it is sorted)
    hi = s1
    while lo < hi:
        mid = (lo + hi) >> 1
        y = sv[mid]
        if y <= x:
            lo = mid + 1
        else:
            hi = mid
    return c + (lo - s0 - _WINDOW if lo > s0 + _WINDOW else 0)


@nb.njit(**_JIT)
def _forward_buckets(drow, cols, k, dn, ncols, nn, n_nan, m, up, down, out_row, count_row,
                     bk, start, sv, sc, ps, tv):
    """The hinge forward of one row (``hinge_forward``) by buckets (not sorted within:
    a count and a sum need no order): prefix counts and sums over the buckets below the
    threshold's, a masked sum over its bucket's first slots, a plain one over the rest."""
    lo, scale, nbk = _bucket_range(dn, nn, nn)
    _bucket_sort(dn, ncols, nn, lo, scale, nbk, bk, start, sv, sc)
    # ps[b]: Σ (x − lo) over the buckets below b (shifted: small sums, little cancellation)
    ps[: nbk + 1] = 0.0
    for j in range(nn):
        ps[bk[j] + 1] += np.float64(dn[j]) - lo
    for b in range(nbk):
        ps[b + 1] += ps[b]
    _taus(drow, cols, k, m, up, down, tv)
    top = np.float64(nbk - 1)
    m64 = np.float64(m)
    for i in range(k):
        p = cols[i]
        t = tv[i]
        b = _bucket(t, lo, scale, top)
        s0 = start[b]
        s1 = start[b + 1]
        c = s0
        sm = ps[b]
        # the bucket's first _WINDOW slots, masked (sv has _WINDOW slots of slack), then
        # the rest of a fuller bucket
        for w in range(_WINDOW):
            x = sv[s0 + w]
            h = (s0 + w < s1) & (x < t)
            c += 1 if h else 0
            sm += (np.float64(x) - lo) if h else 0.0
        for q in range(s0 + _WINDOW, s1):
            x = sv[q]
            h = x < t
            c += 1 if h else 0
            sm += (np.float64(x) - lo) if h else 0.0
        if n_nan > 0 or t != t:
            out_row[p] = np.nan
        elif c > 0:
            # L = Σ (v − x) over the counted x = c·(v − lo) − Σ (x − lo), v = d(a,p) + m
            val = c * (np.float64(drow[p]) + m64 - lo) - sm
            out_row[p] = val if val > 0.0 else 0.0
        count_row[p] = c


@nb.njit(**_JIT)
def _backward_buckets(drow, cols, k, dn, ncols, nn, m, up, down, g_row, c_row, out_row,
                      bk, start, tv, tg, sv, sg, gs):
    """The hinge backward of one row (``hinge_backward``): the thresholds bucketed over
    the negatives' range; per negative ``x``, Σ grad over the thresholds above it: the
    buckets above its own (suffix sums) and an exact scan of its one bucket."""
    lo, scale, nbk = _bucket_range(dn, nn, k)  # the thresholds are sorted
    _taus(drow, cols, k, m, up, down, tv)
    for i in range(k):
        p = cols[i]
        w = np.float64(g_row[p])
        out_row[p] = w * c_row[p]
        tg[i] = w
    _bucket_sort(tv, tg, k, lo, scale, nbk, bk, start, sv, sg)
    # gs[b]: Σ grad over the thresholds in the buckets above b
    gs[: nbk + 1] = 0.0
    for i in range(k):
        gs[bk[i]] += tg[i]
    above = 0.0
    for b in range(nbk - 1, -1, -1):
        g = gs[b]
        gs[b] = above
        above += g
    top = np.float64(nbk - 1)
    for j in range(nn):
        x = dn[j]
        b = _bucket(x, lo, scale, top)
        s0 = start[b]
        s1 = start[b + 1]
        acc = gs[b]
        for w in range(_WINDOW):  # masked, as in _forward_buckets (loads outside the select)
            gq = sg[s0 + w]
            acc += gq if (s0 + w < s1) & (x < sv[s0 + w]) else 0.0
        for q in range(s0 + _WINDOW, s1):
            gq = sg[q]
            acc += gq if x < sv[q] else 0.0
        out_row[ncols[j]] = 0.0 - acc  # +0.0 where no term, as the NumPy body


@nb.njit(**_JIT)
def _choice_buckets(drow, cols, k, dn, ncols, nn, far, zero, chosen_row, semi_row,
                    bk, start, sv, sc, tv, tc):
    """The semi-hard choice of one row (``semihard_choice``) on the sorted negatives
    (ties in column order): the first one beyond ``d(a,p)`` is at its rank, if finite."""
    lo, scale, nbk = _bucket_range(dn, nn, nn)
    _bucket_sort(dn, ncols, nn, lo, scale, nbk, bk, start, sv, sc)
    _sort_within(sv, sc, nn, nbk, start, tv, tc)
    sv[nn] = np.inf  # past the last: none
    sc[nn] = -1
    top = np.float64(nbk - 1)
    far_col = ncols[far]
    for i in range(k):
        col = cols[i]
        x = drow[col] + zero
        if x != x:
            chosen_row[col] = far_col
            continue
        q = _rank(sv, start, _bucket(x, lo, scale, top), x)
        ok = sv[q] < np.inf  # +inf is no strict choice
        at = sc[q]
        chosen_row[col] = at if ok else far_col
        semi_row[col] = ok


_ROWS = 32  # rows per parallel task (one set of scratch rows per task)


@nb.njit(parallel=_PARALLEL, **_JIT)
def hinge_forward(d, pos, neg, m, up, down, small_k, out, count):
    """``out[a,p] = Σ_{n: d(a,n) < τ} (d(a,p) + m − d(a,n))`` (≥ 0, float64 sums) and
    ``count[a,p]`` the number of those negatives, at positive pairs (NaN where a term
    reads a NaN distance); rows with more than ``small_k`` positives by buckets."""
    R, C = d.shape
    m64 = np.float64(m)
    zero = m - m
    for blk in nb.prange((R + _ROWS - 1) // _ROWS):
        cols = np.empty(C, dtype=np.int64)
        dn = np.empty(C, dtype=d.dtype)
        ncols = np.empty(C, dtype=np.int64)
        bk = np.empty(C, dtype=np.int64)
        start = np.empty(_BUCKETS * C + 2, dtype=np.int64)
        sv = np.empty(C + _WINDOW, dtype=d.dtype)  # _WINDOW slots of slack
        sc = np.empty(C + _WINDOW, dtype=np.int64)
        ps = np.empty(_BUCKETS * C + 1, dtype=np.float64)
        tv = np.empty(C, dtype=d.dtype)
        for a in range(blk * _ROWS, min(R, (blk + 1) * _ROWS)):
            drow = d[a]
            k, nn, n_nan = _split(drow, pos[a], neg[a], cols, dn, ncols, zero)
            if k > small_k:
                _forward_buckets(drow, cols, k, dn, ncols, nn, n_nan, m, up, down, out[a], count[a],
                                 bk, start, sv, sc, ps, tv)
                continue
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
def hinge_backward(d, pos, neg, m, up, down, small_k, grad, count, out):
    """``out[a,p] = grad[a,p]·count[a,p]``,
    ``out[a,n] = −Σ_{p: d(a,n) < τ(a,p)} grad[a,p]`` (float64 sums); rows with more
    than ``small_k`` positives by buckets."""
    R, C = d.shape
    zero = m - m
    for blk in nb.prange((R + _ROWS - 1) // _ROWS):
        cols = np.empty(C, dtype=np.int64)
        dn = np.empty(C, dtype=d.dtype)
        ncols = np.empty(C, dtype=np.int64)
        acc = np.empty(C, dtype=np.float64)
        bk = np.empty(C, dtype=np.int64)
        start = np.empty(_BUCKETS * C + 2, dtype=np.int64)
        tv = np.empty(C, dtype=d.dtype)
        sv = np.empty(C + _WINDOW, dtype=d.dtype)  # _WINDOW slots of slack
        tg = np.empty(C, dtype=np.float64)
        sg = np.empty(C + _WINDOW, dtype=np.float64)
        gs = np.empty(_BUCKETS * C + 1, dtype=np.float64)
        for a in range(blk * _ROWS, min(R, (blk + 1) * _ROWS)):
            drow = d[a]
            k, nn, n_nan = _split(drow, pos[a], neg[a], cols, dn, ncols, zero)
            if k == 0:
                continue
            if k > small_k:
                _backward_buckets(drow, cols, k, dn, ncols, nn, m, up, down, grad[a], count[a], out[a],
                                  bk, start, tv, tg, sv, sg, gs)
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
    ``t = d(a,p) + m − d(a,n)`` (in the dtype; float64 sums), ``count[a,p]`` the number of
    negatives: the direct form ``max(t, 0) + log1p(e^{−|t|})`` per term (the NumPy body
    factors the exps instead; compiled, the factored form measured slower: scalar log1p).
    O(K·C) per row: every row runs here."""
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
def semihard_choice(d, neg, term, zero, small_k, chosen, semi):
    """Per term ``(a, p)``: the negative nearest strictly beyond ``d(a,p)`` (ties: the
    smallest index), else the first farthest negative.  NaN distances are never chosen
    (unless every negative is NaN: the first negative), nor +inf by the strict rule;
    rows with more than ``small_k`` terms by buckets."""
    R, C = d.shape
    for blk in nb.prange((R + _ROWS - 1) // _ROWS):
        cols = np.empty(C, dtype=np.int64)
        dn = np.empty(C, dtype=d.dtype)
        ncols = np.empty(C, dtype=np.int64)
        one = np.empty(2, dtype=d.dtype)
        bk = np.empty(C, dtype=np.int64)
        start = np.empty(_BUCKETS * C + 2, dtype=np.int64)
        sv = np.empty(C + _WINDOW, dtype=d.dtype)  # _WINDOW slots of slack
        sc = np.empty(C + _WINDOW, dtype=np.int64)
        tv = np.empty(C, dtype=d.dtype)  # merge-sort scratch
        tc = np.empty(C, dtype=np.int64)
        for a in range(blk * _ROWS, min(R, (blk + 1) * _ROWS)):
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
            if k > small_k:
                far = 0  # the first farthest negative
                for j in range(1, nn):
                    if dn[j] > dn[far]:
                        far = j
                _choice_buckets(drow, cols, k, dn, ncols, nn, far, zero, chosen[a], semi[a],
                                bk, start, sv, sc, tv, tc)
                continue
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

@nb.njit(**_JIT)
def _add_rows(part, acc):
    """``acc[i] += part[a, i]`` over the rows ``a`` in order (the per-row partial sums of a
    ``prange`` loop, added deterministically after it)."""
    for a in range(part.shape[0]):
        for i in range(acc.shape[0]):
            acc[i] += part[a, i]


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
    _add_rows(part, acc)


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


# --- semi-hard sums after the choice (engineer "fused"; mining/semihard_sums.py) ---------

@nb.njit(parallel=_PARALLEL, **_JIT)
def semihard_sums(d, term, chosen, semi, m, acc):
    """``acc[:] = (Σ max(arg, 0), #{arg > 0}, #semi)`` over the terms, ``arg = (d(a,p) −
    d(a,n*)) + m`` in ``d``'s dtype (NaN stays NaN in the sum, is not counted)."""
    R, C = d.shape
    zero = d.dtype.type(0)
    part = np.zeros((R, 3), dtype=np.float64)
    for a in nb.prange(R):
        s = 0.0
        act = 0
        ns = 0
        for c in range(C):
            if term[a, c]:
                arg = (d[a, c] - d[a, chosen[a, c]]) + m
                s += np.float64(zero if arg <= zero else arg)
                act += 1 if arg > zero else 0
                ns += 1 if semi[a, c] else 0
        part[a, 0] = s
        part[a, 1] = act
        part[a, 2] = ns
    _add_rows(part, acc)


@nb.njit(parallel=_PARALLEL, **_JIT)
def semihard_grad(d, term, chosen, m, g, out):
    """``out`` (zeros) += ``g`` at every active term ``(a, p)`` (``arg > 0``) and −= ``g``
    at its chosen negative ``(a, n*)``."""
    R, C = d.shape
    zero = d.dtype.type(0)
    for a in nb.prange(R):
        for c in range(C):
            if term[a, c]:
                n = chosen[a, c]
                if (d[a, c] - d[a, n]) + m > zero:
                    out[a, c] += g
                    out[a, n] -= g


# --- the batch-hard choice (engineer "hard"; mining/hardest.py) ----------------------------
# One pass over each row: the label compare, the running arg-max over the positives and
# arg-min over the negatives (first index among ties; the first NaN wins, like
# numpy.argmax / argmin), no (B, R) temporary.  float32: branch-free (vectorised) on
# 64-bit keys (the distance's order-preserving bits, then the column), one max and one
# min reduction; float64 (no room for the column beside 64 bits): a scalar scan.

@nb.njit(**_JIT)
def _hardest_row_keys(drow, ya, Y, me):
    """float32: the best positive's and negative's 64-bit keys ``(bits' << 32) | col``
    (positives: ``~col``, so that the max takes the smallest column among ties)."""
    best_p = np.uint64(0)  # below every positive's key: none
    best_n = np.uint64(0xFFFFFFFFFFFFFFFF)  # above every negative's key: none
    bits = drow.view(np.uint32)
    low = np.uint64(0xFFFFFFFF)
    for j in range(drow.shape[0]):
        b = bits[j]
        b = np.uint32(0) if (b & np.uint32(0x7FFFFFFF)) == np.uint32(0) else b  # -0.0 -> +0.0
        # the float order as unsigned order: flip all bits of a negative, the sign of the rest
        k = b ^ (np.uint32(0xFFFFFFFF) if (b >> np.uint32(31)) != np.uint32(0) else np.uint32(0x80000000))
        nan = (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        kp = np.uint64(0xFFFFFFFF) if nan else np.uint64(k)  # a NaN wins the max ...
        kn = np.uint64(0) if nan else np.uint64(k)  # ... and the min
        col = np.uint64(j)
        same = Y[j] == ya
        cp = (kp << np.uint64(32)) | (low - col) if (same and j != me) else np.uint64(0)
        cn = (kn << np.uint64(32)) | col if not same else np.uint64(0xFFFFFFFFFFFFFFFF)
        best_p = max(best_p, cp)
        best_n = min(best_n, cn)
    return best_p, best_n


@nb.njit(**_JIT)
def _hardest_row_scan(drow, ya, Y, me):
    """Any float dtype: ``(hp, hn)`` columns by a scalar scan (-1: none)."""
    bp = -1
    bn = -1
    vp = drow[0]
    vn = drow[0]
    nan_p = False
    nan_n = False
    for j in range(drow.shape[0]):
        v = drow[j]
        if Y[j] == ya:
            if j == me or nan_p:
                continue
            if v != v:
                bp = j
                nan_p = True
            elif bp < 0 or v > vp:
                bp = j
                vp = v
        else:
            if nan_n:
                continue
            if v != v:
                bn = j
                nan_n = True
            elif bn < 0 or v < vn:
                bn = j
                vn = v
    return bp, bn


@nb.njit(parallel=_PARALLEL, **_JIT)
def hardest_keys(d, y, Y, own, hp, hn, valid):
    """float32 (fewer than 2³² columns): ``hp[a, 0]`` / ``hn[a, 0]``: the column of row
    ``a``'s largest distance among its positives (``Y[j] == y[a, 0]``, ``j != own[a, 0]``)
    / smallest among its negatives (0 where there is none); ``valid[a, 0]``: it has both."""
    low = np.uint64(0xFFFFFFFF)
    for a in nb.prange(d.shape[0]):
        kp, kn = _hardest_row_keys(d[a], y[a, 0], Y, own[a, 0])
        has_p = kp != np.uint64(0)
        has_n = kn != np.uint64(0xFFFFFFFFFFFFFFFF)
        hp[a, 0] = np.int64(low - (kp & low)) if has_p else 0
        hn[a, 0] = np.int64(kn & low) if has_n else 0
        valid[a, 0] = has_p and has_n


@nb.njit(parallel=_PARALLEL, **_JIT)
def hardest(d, y, Y, own, hp, hn, valid):
    """:func:`hardest_keys` for any float dtype, by a scalar scan of each row."""
    for a in nb.prange(d.shape[0]):
        bp, bn = _hardest_row_scan(d[a], y[a, 0], Y, own[a, 0])
        hp[a, 0] = bp if bp >= 0 else 0
        hn[a, 0] = bn if bn >= 0 else 0
        valid[a, 0] = bp >= 0 and bn >= 0
