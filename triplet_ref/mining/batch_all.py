"""The batch-all row sums ``L[a, p] = Σ_n h(d(a, p) − d(a, n) + m)`` and the per-pair count
of positive triplets: the hinge and the softplus (soft) versions.

Each step has two implementations here: the portable array-API one (:func:`hinge_rows`:
sorted negatives, a row-wise search and prefix sums; :func:`soft_rows`: blocks of anchors)
and the NumPy kernel (:func:`batch_all_forward` / :func:`batch_all_backward`,
:func:`soft_forward` / :func:`soft_backward`), which the CPU backends run natively (see
:mod:`triplet_ref.mining`).
"""
from __future__ import annotations

import numpy as np

from ..losses._common import as_float, count_true, scalar
from . import _blocks, _numba, _ranks
from ._blocks import _quiet, _term_blocks
from ._dispatch import Kernel, Step

__all__ = ["HINGE", "SOFT", "hinge_rows", "hinge_rows_linear", "soft_rows", "batch_all_forward", "batch_all_backward"]

# soft=True cannot be summed from sorted distances (softplus has no closed-form sum), so
# it is computed for blocks of anchors; a block holds at most this many elements
# (b × B × B), plus one B × B block when B² is larger: memory stays O(B²).
_SOFT_BLOCK_ELEMENTS = 1 << 22


# --- portable (array API) -------------------------------------------------------------

def hinge_rows(ctx, d, pos, neg, m):
    """``L[a, p]`` and the per-pair count of positive triplets, from sorted negatives."""
    xp, be = ctx.xp, ctx.backend
    B = d.shape[1]  # the candidates (columns): d may be (B, R) against a reference set
    zero = scalar(ctx, 0)
    inf = scalar(ctx, float("inf"))
    idt = be.index_dtype(xp)
    nneg = count_true(ctx, neg, axis=1)

    # negatives ascending, +inf after them (the sort is differentiable)
    srt = be.sort_rows(xp, xp.where(neg, d, inf))
    col = xp.arange(B, dtype=idt, device=ctx.device)
    real = col[None, :] < nneg[:, None]
    # shift each row by its smallest negative: the prefix sums stay small, which keeps
    # float32 cancellation in c·v − Σ d(a, n) low; the shift cancels exactly in L
    has_neg = nneg > xp.zeros((), dtype=idt, device=ctx.device)
    base = xp.where(has_neg, srt[:, 0], zero)
    shifted = xp.where(real, srt - base[:, None], zero)
    prefix = xp.cumulative_sum(shifted, axis=1, include_initial=True)  # (B, B + 1)

    mm = scalar(ctx, m)
    v = d + mm
    izero = xp.zeros((), dtype=idt, device=ctx.device)
    ione = xp.ones((), dtype=idt, device=ctx.device)
    count = xp.astype(be.searchsorted_rows(xp, srt, v, side="left"), idt)  # #{d(a,n) < v}
    # The oracle's rule is (d(a,p) − d(a,n)) + m > 0; it differs from d(a,n) < fl(d(a,p) + m)
    # only for the negatives within a rounding step of v (a margin below d(a,p)'s ulp
    # makes exact ties positive).  Step across the tie block on each side of the count:
    # every element of a block has one value, so the rule holds for all of it or none.
    last = xp.asarray(B - 1, dtype=idt, device=ctx.device)
    for up in (True, False):
        at = xp.minimum(xp.maximum(count if up else count - ione, izero), last)
        x = be.take_rows(xp, srt, at)
        ok = (d - x) + mm > zero
        if up:
            move = pos & (count < nneg[:, None]) & ok
        else:
            move = pos & (count > izero) & ~ok
        jump = xp.astype(be.searchsorted_rows(xp, srt, x, side="right" if up else "left"), idt)
        count = xp.where(move, jump, count)
    count = xp.where(pos, count, izero)
    below = be.take_rows(xp, prefix, count)
    cf = as_float(ctx, count)
    per_pair = xp.where(pos, cf * (v - base[:, None]) - below, zero)
    # Σ (v − d) over the counted negatives is ≥ 0; rounding must not make it negative
    per_pair = xp.maximum(per_pair, zero)
    return per_pair, count


def soft_rows(ctx, d, pos, neg, m):
    """softplus version: ``(L, count, slope)`` at positive pairs (0 elsewhere), shapes
    ``(B, R)``:

      ``L[a, p] = Σ_n softplus(d(a,p) − d(a,n) + m)``, ``slope[a, p] = ∂L/∂m = Σ_n σ(·)``,
      ``count[a, p] = #negatives of a`` (softplus > 0: every valid triplet counts),

    sums over the negatives ``n`` of anchor ``a``; ``count`` in the index dtype.

    Complexity (``K_max`` the most positives of one anchor, ``K̄`` the mean):

    * labels known (eager NumPy, torch, CuPy, array-api-strict, eager JAX also under
      ``jax.grad``): one pass per positive slot ``k = 1 … K_max``, over the rows of the
      anchors that have a ``k``-th positive only — ``O(B·R·K̄)`` time in all, ``O(B·R)``
      memory per slot (under autograd the slots' ``(rows, R)`` intermediates are kept for the
      backward pass: ``O(B·R·K̄)``);
    * labels traced (``jax.jit``: ``K_max`` is not known when the function is traced, and
      the shapes must be static): on a backend with :attr:`Backend.slot_loops` (JAX) the
      same per-slot passes over every anchor, ``(B, R)`` each, in a loop of ``R`` static
      steps of which the first ``K_max`` (traced) do work (``Backend.map_slots``:
      ``lax.map`` over ``jax.checkpoint``-ed ``lax.cond``) — ``O(B·R·K_max)`` time,
      ``O(B·R)`` memory, forward and gradient (twice differentiable); elsewhere blocks of
      anchors, ``(b, R, R)`` each with ``b·R² ≤ 2²²`` elements (at least one anchor), one
      after the other — ``O(B·R²)`` time.
    """
    from ..backends._scale import concrete_int

    xp, be = ctx.xp, ctx.backend
    B, R = d.shape  # R = B, or the size of a reference set
    idt = be.index_dtype(xp)
    npos = count_true(ctx, pos, axis=1)
    kmax = concrete_int(xp.max(npos)) if B and R else 0
    if kmax is None:
        if be.slot_loops:
            return _soft_rows_traced(ctx, d, pos, neg, m)
        return _soft_rows_blocks(ctx, d, pos, neg, m)
    zero = scalar(ctx, 0)
    mm = scalar(ctx, m)
    izero = xp.zeros((), dtype=idt, device=ctx.device)
    nneg = count_true(ctx, neg, axis=1)
    count = xp.where(pos, nneg[:, None], izero)
    if kmax == 0:  # no positive pair: zeros, still connected to d for autodiff
        z = xp.where(pos, d, zero)
        return z, count, z
    # rank[a, j] = k for a's k-th positive (columns ascending)
    rank = xp.cumulative_sum(xp.astype(pos, idt), axis=1)
    sums, slopes = [], []
    for k in range(1, kmax + 1):
        kk = xp.asarray(k, dtype=idt, device=ctx.device)
        has = npos >= kk  # the anchors with a k-th positive
        nhas = concrete_int(count_true(ctx, has))
        if nhas == B:
            dk, rk, pk, nk = d, rank, pos, neg
        else:
            rows = xp.nonzero(has)[0]
            dk, rk, pk, nk = (xp.take(a, rows, axis=0) for a in (d, rank, pos, neg))
        dp = xp.sum(xp.where(pk & (rk == kk), dk, zero), axis=1)  # d(a, k-th positive)
        t = dp[:, None] - dk + mm
        sp = be.softplus(xp, t)
        s = xp.sum(xp.where(nk, sp, zero), axis=1)
        g = xp.sum(xp.where(nk, xp.exp(t - sp), zero), axis=1)  # σ(t) = e^{t − softplus(t)}
        if nhas != B:
            # back to all B anchors: anchor a is entry (#anchors before it that have one)
            at = xp.cumulative_sum(xp.astype(has, idt)) - xp.ones((), dtype=idt, device=ctx.device)
            at = xp.maximum(at, izero)
            s = xp.where(has, xp.take(s, at), zero)
            g = xp.where(has, xp.take(g, at), zero)
        sums.append(s)
        slopes.append(g)
    # L[a, j] = sums[rank[a, j] − 1][a] at positives: one gather of (B, R) from (B, K_max)
    at = xp.minimum(xp.maximum(rank - xp.ones((), dtype=idt, device=ctx.device), izero),
                    xp.asarray(kmax - 1, dtype=idt, device=ctx.device))
    L = xp.where(pos, be.take_rows(xp, xp.stack(sums, axis=1), at), zero)
    slope = xp.where(pos, be.take_rows(xp, xp.stack(slopes, axis=1), at), zero)
    return L, count, slope


def _soft_rows_traced(ctx, d, pos, neg, m):
    """:func:`soft_rows` with traced labels (static shapes) where the backend loops over a
    traced number of slots: slot ``k`` (0-based) is every anchor's ``k``-th positive (the
    columns with positives first, ascending: one stable argsort), one ``(B, R)`` pass per
    slot, ``K_max`` of the ``R`` slots doing work: O(B·R·K_max) time, O(B·R) memory."""
    xp, be = ctx.xp, ctx.backend
    B, R = d.shape
    idt = be.index_dtype(xp)
    zero = scalar(ctx, 0)
    mm = scalar(ctx, m)
    izero = xp.zeros((), dtype=idt, device=ctx.device)
    ione = xp.ones((), dtype=idt, device=ctx.device)
    npos = count_true(ctx, pos, axis=1)
    order = be.argsort_rows(xp, xp.astype(~pos, idt))  # the positives' columns first

    def slot(k):
        col = xp.take(order, xp.reshape(k, (1,)), axis=1)  # (B, 1): the k-th positive
        t = be.take_rows(xp, d, col) - d + mm
        sp = be.softplus(xp, t)
        has = npos > k
        s = xp.sum(xp.where(neg, sp, zero), axis=1)
        g = xp.sum(xp.where(neg, xp.exp(t - sp), zero), axis=1)  # σ(t) = e^{t − softplus(t)}
        return xp.where(has, s, zero), xp.where(has, g, zero)

    sums, slopes = be.map_slots(xp, slot, R, xp.max(npos))  # (R, B) each
    # L[a, j] = sums[rank[a, j] − 1, a] at positives
    rank = xp.cumulative_sum(xp.astype(pos, idt), axis=1)
    at = xp.minimum(xp.maximum(rank - ione, izero), xp.asarray(R - 1, dtype=idt, device=ctx.device))
    L = xp.where(pos, be.take_rows(xp, xp.permute_dims(sums, (1, 0)), at), zero)
    slope = xp.where(pos, be.take_rows(xp, xp.permute_dims(slopes, (1, 0)), at), zero)
    count = xp.where(pos, count_true(ctx, neg, axis=1)[:, None], izero)
    return L, count, slope


def _soft_rows_blocks(ctx, d, pos, neg, m):
    """:func:`soft_rows` with static shapes and no slot loop: blocks of anchors, each
    ``(b, R, R)`` with ``b·R² ≤ 2²²`` elements, one after the other
    (``Backend.map_row_blocks``): O(B·R²) time."""
    xp, be = ctx.xp, ctx.backend
    B, R = d.shape
    zero = scalar(ctx, 0)
    mm = scalar(ctx, m)
    idt = be.index_dtype(xp)
    blk = max(1, min(B, _SOFT_BLOCK_ELEMENTS // max(1, R * R)))

    def block(da, pa, na):
        t = da[:, :, None] - da[:, None, :] + mm  # (b, p, n)
        mask = pa[:, :, None] & na[:, None, :]
        sp = be.softplus(xp, t)
        return (xp.sum(xp.where(mask, sp, zero), axis=2),
                xp.sum(xp.where(mask, xp.exp(t - sp), zero), axis=2))  # σ(t) = e^{t − softplus(t)}

    rows, slopes = be.map_row_blocks(xp, block, blk, d, pos, neg)
    # softplus > 0 on all of R: every valid triplet is positive (docs/semantics.md), so the
    # count of a positive pair is its anchor's number of negatives (no (b, R, R) count)
    count = xp.where(pos, count_true(ctx, neg, axis=1)[:, None], xp.zeros((), dtype=idt, device=ctx.device))
    return rows, count, slopes


# --- the NumPy kernel ------------------------------------------------------------------

# the forward's sorted branch (the row's negatives sorted by 32-bit keys, the thresholds
# ranked among them) costs about as much as this many passes over the row: rows with
# more positives take it (measured at B = 4096, float32: 8 single-threaded; its sub-blocks
# run in threads where the pass per positive does not, hence fewer with threads)
FORWARD_SMALL_K = 8
FORWARD_SMALL_K_THREADED = 6

@_quiet
def batch_all_forward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin):
    """``L[a, p] = Σ_n max(d(a,p) − d(a,n) + m, 0)`` and
    ``count[a, p] = #{n: d(a,p) − d(a,n) + m > 0}`` (int32) at positive pairs, 0 elsewhere.

    Shapes ``(R, C)`` (d float32/float64/longdouble, masks bool); sums accumulate in
    float64.  A term is positive exactly when the oracle's ``d(a,p) − d(a,n) + m > 0`` is:
    ``d(a,n) < τ`` (:func:`._blocks.thresholds`).  Each anchor takes one of three branches
    by its number of positives K_a: at most ``min(SMALL_K, FORWARD_SMALL_K)``, one pass
    over the row per positive (O(C·K_a)); more, one sort of the row's negatives (32-bit
    keys, O(C log C)) and each threshold's rank among them (:func:`._ranks.ranks`) with
    their running sums (float32 distances ``>= 0``); float64, ``np.longdouble`` or
    negative values, a sort and a search per row (correct everywhere, not fast).
    """
    R, C = d.shape
    out = np.zeros((R, C), dtype=d.dtype)
    count = np.zeros((R, C), dtype=np.int32)
    m = d.dtype.type(margin)
    _blocks.for_row_groups(pos, (d, pos, neg), (out, count), lambda *a: _forward_few(*a, m),
                           lambda *a: _forward_many(*a, m), FORWARD_SMALL_K_THREADED, FORWARD_SMALL_K)
    return out, count


def _forward_few(db, pb, nb, out, count, m):
    """Few positives per anchor (P×K batches): one pass over the row per positive beats
    sorting it.  Σ max(τ − d, 0) − c·(τ − v) = Σ (v − d) over the c counted negatives;
    padded slots hold −inf and add nothing."""
    rows = db.shape[0]
    r, c = np.nonzero(pb)
    slot, kmax = _blocks._slots(r, rows)
    dp = db[r, c]
    tau = _blocks.thresholds(dp, m)
    v = dp.astype(np.float64) + np.float64(m)
    dn = np.where(nb, db, np.inf)
    T = np.full((rows, kmax), -np.inf, dtype=db.dtype)
    T[r, slot] = tau
    S = np.zeros((rows, kmax), dtype=np.float64)
    K = np.zeros((rows, kmax), dtype=np.int32)
    h = np.empty_like(dn)
    for k in range(kmax):
        np.subtract(T[:, k : k + 1], dn, out=h)
        np.maximum(h, 0, out=h)
        S[:, k] = np.add.reduce(h, axis=1, dtype=np.float64)
        K[:, k] = np.count_nonzero(h, axis=1)
    cnt = K[r, slot]
    val = S[r, slot] - np.where(cnt > 0, cnt * (tau.astype(np.float64) - v), 0.0)
    out[r, c] = np.maximum(val, 0.0)
    count[r, c] = cnt


def _hinge_rows(db, pb, nb, m):
    """The block's rows sorted (:class:`._blocks.SortedRows`): ``τ`` at the positives
    (category 0: a threshold sorts before a negative of equal value, ``d(a,n) < τ`` being
    strict), the negatives' distances (1), anything else after them (2); None where the
    values do not pack (a negative value)."""
    v = db + db.dtype.type(0)  # -0.0 -> +0.0 (a copy)
    at = np.flatnonzero(pb)
    fv = v.reshape(-1)
    fv[at] = _blocks.thresholds(fv[at], m)
    if not _blocks.packable(v):
        return None
    return _blocks.SortedRows(v, pb, nb)


def _forward_many(db, pb, nb, out, count, threaded, m):
    """Many positives per anchor: per row, the thresholds and the negatives sorted
    together once; a running count and sum of the negatives give every threshold's
    ``#{n: d(a,n) < τ}`` and ``Σ d(a,n)`` over them, with no search."""
    if db.dtype != np.float32:
        return _forward_rows(db, pb, nb, out, count, m)
    _blocks.sorted_sub_blocks(*db.shape, lambda sl: _forward_sorted(db[sl], pb[sl], nb[sl], out[sl], count[sl], m),
                              threaded)


def _forward_sorted(db, pb, nb, out, count, m):
    """The row's negatives sorted (32-bit keys: their values' bits; only the negatives when
    every row of the sub-block has as many), each threshold's rank among them
    (:func:`._ranks.ranks`: ``#{n: d(a,n) < τ}``, exact) and their running sums."""
    v = db + db.dtype.type(0)  # -0.0 -> +0.0 (a copy)
    rows, C = v.shape
    at = np.flatnonzero(pb)  # the positives (flat, row-major)
    tau = _blocks.thresholds(v.reshape(-1)[at], m)
    if not (_blocks.packable(v) and _blocks.packable(tau.reshape(1, -1))):
        return _forward_rows(db, pb, nb, out, count, m)
    s, n = _ranks.sorted_negatives(v.view(np.uint32), nb, columns=False)
    M = s.shape[1]
    qrow = at // C
    K = _ranks.ranks(s, n, qrow, tau.view(np.uint32), strict=True)  # #{n: d(a,n) < τ}
    sf = s.view(np.float32)
    if int(n.min(initial=M)) < M:
        sf = np.where(np.arange(M)[None, :] < n[:, None], sf, np.float32(0))
    if M:
        P = _blocks.running_sums(sf)  # Σ of the first j + 1 sorted negatives
        idx = qrow * M
        idx += K
        idx -= 1
        S = np.where(K > 0, P.reshape(-1)[np.maximum(idx, 0)], 0.0)
    else:  # no negative in the sub-block
        S = 0.0
    L = np.take(np.ascontiguousarray(db).reshape(-1), at).astype(np.float64)  # d(a,p)
    L += np.float64(m)
    L *= K
    L -= S
    np.maximum(L, 0.0, out=L)
    _blocks.flat(out)[at] = L
    _blocks.flat(count)[at] = K


def _forward_rows(db, pb, nb, out, count, m):
    """Any dtype and sign: per row, its negatives sorted once and every threshold
    searched in them."""
    C = db.shape[1]
    ps = np.zeros(C + 1, dtype=np.float64)
    for a in range(db.shape[0]):
        cols = np.flatnonzero(pb[a])  # not empty: the group's rows hold a term
        dp = db[a, cols]
        tau = _blocks.thresholds(dp, m)
        v = dp.astype(np.float64) + np.float64(m)
        dn = db[a][nb[a]]
        dn.sort()
        np.cumsum(dn, dtype=np.float64, out=ps[1 : dn.size + 1])
        k = np.searchsorted(dn, tau, side="left")  # #{n: d(a,n) < τ}
        out[a, cols] = np.maximum(k * v - ps[k], 0.0)
        count[a, cols] = k


@_quiet
def batch_all_backward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin,
                       grad: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Gradient of ``Σ grad ⊙ L`` with respect to ``d`` (shape and dtype of ``d``).

    ``∂/∂d(a,p) = grad[a,p]·count[a,p]`` and
    ``∂/∂d(a,n) = −Σ_{p: d(a,p) − d(a,n) + m > 0} grad[a,p]``; the branches of
    :func:`batch_all_forward`.
    """
    R, C = d.shape
    out = np.zeros((R, C), dtype=d.dtype)
    m = d.dtype.type(margin)
    grad = np.broadcast_to(grad, (R, C))
    _blocks.for_row_groups(pos, (d, pos, neg, grad, count), (out,), lambda *a: _backward_few(*a, m),
                           lambda *a: _backward_many(*a, m), _blocks.SMALL_K_THREADED)
    return out


def _backward_few(db, pb, nb, gb, cb, ob, m):
    rows, C = db.shape
    ob[...] = np.where(pb, gb * cb, 0)
    r, c = np.nonzero(pb)
    slot, kmax = _blocks._slots(r, rows)
    tau = _blocks.thresholds(db[r, c], m)
    T = np.full((rows, kmax), -np.inf, dtype=db.dtype)
    W = np.zeros((rows, kmax), dtype=db.dtype)
    T[r, slot] = tau
    W[r, slot] = gb[r, c]
    acc = np.zeros((rows, C), dtype=db.dtype)
    tmp = np.empty_like(acc)
    hit = np.empty(acc.shape, dtype=bool)
    for k in range(kmax):
        np.less(db, T[:, k : k + 1], out=hit)
        np.multiply(hit, W[:, k : k + 1], out=tmp)
        acc += tmp
    np.multiply(acc, nb, out=acc)
    ob -= acc


def _backward_many(db, pb, nb, gb, cb, ob, threaded, m):
    """Many positives per anchor: the keys of :func:`_forward_many`; a reverse running
    sum of the thresholds' grads gives every negative its ``Σ grad`` over the thresholds
    above it."""
    if db.dtype != np.float32:
        return _backward_rows(db, pb, nb, gb, cb, ob, m)
    _blocks.sorted_sub_blocks(
        *db.shape, lambda sl: _backward_sorted(db[sl], pb[sl], nb[sl], gb[sl], cb[sl], ob[sl], m), threaded)


def _backward_sorted(db, pb, nb, gb, cb, ob, m):
    srt = _hinge_rows(db, pb, nb, m)
    if srt is None:
        return _backward_rows(db, pb, nb, gb, cb, ob, m)
    at = srt.where(0)  # the thresholds, in sorted order
    src = _blocks.flat(srt.source)[at]
    g = np.take(np.ascontiguousarray(gb).reshape(-1), src)  # grad may be a broadcast view
    gs = np.zeros(db.shape, dtype=db.dtype)  # the positives' grads in sorted order, 0 elsewhere
    _blocks.flat(gs)[at] = g
    tail = _blocks.running_sums(gs, reverse=True)  # at a negative: Σ grad over τ > d(a,n)
    _blocks.flat(ob)[src] = g * np.take(np.ascontiguousarray(cb).reshape(-1), src)
    neg = srt.where(1)
    _blocks.flat(ob)[_blocks.flat(srt.source)[neg]] = -_blocks.flat(tail)[neg]


def _backward_rows(db, pb, nb, gb, cb, ob, m):
    """Any dtype and sign: per row, its thresholds sorted and each negative searched in
    them; Σ grad over the thresholds above it."""
    ob[...] = np.where(pb, gb * cb, 0)
    for a in range(db.shape[0]):
        cols = np.flatnonzero(pb[a])  # not empty: the group's rows hold a term
        t = _blocks.thresholds(db[a, cols], m)
        o = np.argsort(t)
        w = gb[a, cols]
        tail = np.zeros(cols.size + 1, dtype=np.float64)
        tail[:-1] = np.cumsum(w[o][::-1], dtype=np.float64)[::-1]  # Σ grad over τ > x
        nc = np.flatnonzero(nb[a])
        idx = np.searchsorted(t[o], db[a, nc], side="right")
        ob[a, nc] -= tail[idx].astype(db.dtype)


# --- the NumPy soft kernel: softplus(t) = log1p(e^{v−c} · e^{c−d(a,n)}) ----------------
#
# t = d(a,p) + m − d(a,n) = (v − c) + (c − d(a,n)) for any row shift c, so with the row's
# factors e_n = e^{c − d(a,n)} (one exp per entry) and e_p = e^{v − c} (one per positive)
# each term is x = e_p·e_n = e^t (a multiply), softplus(t) = log1p(x) and
# σ(t) = x/(1 + x): one transcendental per term instead of exp and log1p.  c is the middle
# of the range [lo, hi] of the row's distances and its values v, w = hi − lo: the factors
# lie in [e^{−w/2}, e^{w/2}] and x in [e^{−w}, e^{w}], so nothing overflows and no factor
# underflows while w ≤ _soft_span(dtype); a row with a wider or non-finite range (NaN
# included) takes the direct form max(t, 0) + log1p(e^{−|t|}).  The error of x is that of
# exp at arguments |v − c|, |c − d| ≤ w/2 (≈ eps·w/2 relative, c cancels exactly), the
# order of the direct form's rounding of t = v − d(a,n) (≈ eps·max(v, d)).

# elements per sub-block of rows: the inner loop's scratch stays in the L2 cache
_SOFT_SUB_ELEMENTS = 1 << 15


def _soft_span(dtype) -> float:
    """The widest row range ``w = hi − lo`` the factored form takes in ``dtype``: every
    factor ``e^{±w/2}`` a normal number and every product ``e^{±w}`` finite (0.9 of the
    exponent range: 78.6 in float32, 637 in float64)."""
    fi = np.finfo(dtype)
    return 0.9 * float(min(np.log(fi.max), -np.log(fi.tiny)))


class _SoftRows:
    """A row block's soft terms, its rows that hold one ordered by their number of
    positives (descending: slot ``k``'s rows are the first ``nk[k]``).

    ``rows``: the block-local row of each ordered row (None: the same rows, in order);
    ``db, nb, npos``: the ordered rows' distances, negatives and number of positives;
    ``r, slot``: the terms' ordered row and rank in it; ``brow, c``: their row and
    column in the block, ``dest`` their flat index there; ``V`` (n, kmax): ``v = d(a,p) + m`` per slot (0 in empty slots);
    ``shift`` (n,): the row's ``c``; ``Ep`` (n, kmax): ``e^{v − c}`` (0 in empty slots and
    on the rows of the direct form); ``direct``: those rows (ordered indices)."""

    def __init__(self, db, pb, nb, m):
        C = db.shape[1]
        flat = np.flatnonzero(pb)
        r, c = np.divmod(flat, C)  # np.nonzero(pb), 10× faster on a 2-D mask
        npos = np.bincount(r, minlength=db.shape[0])
        if npos.size and npos[-1] > 0 and bool(np.all(npos[:-1] >= npos[1:])):
            self.rows = None  # every row holds a term, already in order (P×K batches)
        else:
            order = np.argsort(-npos, kind="stable")
            self.rows = order[: int(np.count_nonzero(npos))]
            db, pb, nb, npos = db[self.rows], pb[self.rows], nb[self.rows], npos[self.rows]
            r, c = np.divmod(np.flatnonzero(pb), C)
        self.db, self.nb, self.npos = db, nb, npos
        self.brow, self.c = (r, c) if self.rows is None else (self.rows[r], c)  # in the block
        self.dest = flat if self.rows is None else self.brow * C + c  # flat, in the block
        self.n = n = db.shape[0]
        self.kmax = kmax = int(npos[0]) if n else 0
        if kmax == 0:  # no term in the block
            return
        start = np.zeros(n, dtype=np.intp)
        np.cumsum(npos[:-1], out=start[1:])
        self.r, self.slot = r, np.arange(r.size) - start[r]
        self.nk = [int(np.searchsorted(-npos, -k, side="left")) for k in range(kmax)]  # #{npos > k}
        dt = db.dtype.type
        V = np.zeros((n, kmax), dtype=db.dtype)
        V[r, self.slot] = db[r, c] + m
        self.V = V
        live = np.arange(kmax) < npos[:, None]
        # the range of the whole row (a superset of the negatives': no masked reduction)
        lo = np.minimum(np.min(db, axis=1), np.min(np.where(live, V, dt(np.inf)), axis=1))
        hi = np.maximum(np.max(db, axis=1), np.max(np.where(live, V, dt(-np.inf)), axis=1))
        w = hi - lo
        safe = w <= dt(_soft_span(db.dtype))  # False for NaN and ±inf
        self.shift = np.where(safe, lo + w / dt(2), dt(0))
        self.Ep = np.exp(np.where(live & safe[:, None], V - self.shift[:, None], dt(-np.inf)))
        self.direct = np.flatnonzero(~safe)

    def sub_blocks(self):
        """``(s0, s1, e_n)`` per sub-block of the ordered rows: ``e_n = e^{c − d(a,n)}``
        at the negatives, 0 elsewhere (shape ``(s1 − s0, C)``, a reused buffer; garbage on
        the rows of the direct form)."""
        C = self.db.shape[1]
        sub = max(1, _SOFT_SUB_ELEMENTS // max(C, 1))
        buf = np.empty((min(sub, self.n), C), dtype=self.db.dtype)
        for s0 in range(0, self.n, sub):
            s1 = min(self.n, s0 + sub)
            en = buf[: s1 - s0]
            np.subtract(self.shift[s0:s1, None], self.db[s0:s1], out=en)
            np.exp(en, out=en)
            np.multiply(en, self.nb[s0:s1], out=en)
            yield s0, s1, en

    def slots(self, s0, s1):
        """``(k, e)``: the slots of the sub-block's rows, slot ``k`` on rows ``s0:e``."""
        for k in range(self.kmax):
            e = min(s1, self.nk[k])
            if e <= s0:
                break
            yield k, e

    def scatter(self, out, vals):
        """``out[row, col] = vals[r, slot]`` at the terms (``out`` C-contiguous, the
        block's shape)."""
        out.reshape(-1)[self.dest] = vals[self.r, self.slot]


def _soft_direct_sums(db, nb, V, npos, kmax):
    """The direct form for a few rows: ``(S, G)`` (rows, kmax) float64, summed over the
    negatives ``nb`` only (a positive at +inf: t = +inf against every finite negative)."""
    one = db.dtype.type(1)
    rows = db.shape[0]
    S = np.zeros((rows, kmax), dtype=np.float64)
    G = np.zeros((rows, kmax), dtype=np.float64)
    for k in range(kmax):
        live = npos > k
        t = V[live, k : k + 1] - db[live]
        q = np.negative(t)
        np.minimum(q, t, out=q)
        np.exp(q, out=q)  # e^{−|t|}
        h = np.log1p(q)
        pos_t = t > 0
        np.maximum(t, 0, out=t)
        h += t  # softplus(t) = max(t, 0) + log1p(e^{−|t|})
        S[live, k] = np.add.reduce(h, axis=1, dtype=np.float64, where=nb[live])
        # σ(t) = 1/(1 + e^{−|t|}) for t > 0, e^{−|t|}/(1 + e^{−|t|}) otherwise
        np.add(q, one, out=h)
        np.divide(np.where(pos_t, one, q), h, out=h)
        G[live, k] = np.add.reduce(h, axis=1, dtype=np.float64, where=nb[live])
    return S, G


def _soft_direct_grad(db, nb, V, W, npos, kmax):
    """The direct form of ``Σ_p w_p·σ(t)`` at the negatives ``nb`` of a few rows
    (rows, C), 0 elsewhere."""
    one = db.dtype.type(1)
    acc = np.zeros(db.shape, dtype=db.dtype)
    for k in range(kmax):
        live = npos > k
        t = V[live, k : k + 1] - db[live]
        q = np.negative(t)
        np.minimum(q, t, out=q)
        np.exp(q, out=q)
        s = np.add(q, one)
        np.divide(np.where(t > 0, one, q), s, out=s)
        s *= W[live, k : k + 1]
        acc[live] += np.where(nb[live], s, 0)
    return acc


@_quiet
def soft_forward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin):
    """The softplus row sums: ``(L, count, slope)`` at positive pairs, 0 elsewhere.

    ``L[a,p] = Σ_n softplus(t)`` and ``slope[a,p] = ∂L/∂m = Σ_n σ(t)`` with
    ``t = d(a,p) − d(a,n) + m``, shapes ``(R, C)``, dtype of ``d`` (float32/float64;
    longdouble too); ``count[a,p]`` (int32) the number of negatives (every valid triplet is
    positive).

    Per anchor row a shift ``c`` (the middle of the row's range, its distances and its
    ``d(a,p) + m``) and one exp per entry, ``e_n = e^{c − d(a,n)}``; per positive
    ``e_p = e^{d(a,p) + m − c}``; each term is then ``x = e_p·e_n = e^t``,
    ``softplus(t) = log1p(x)``, ``σ(t) = x/(1 + x)``: a multiply and one log1p per term
    instead of an exp and a log1p.  Rows whose range ``w`` is too wide for that
    (``_soft_span``: 78.6 in float32, 637 in float64) or not finite take the direct form
    ``max(t, 0) + log1p(e^{−|t|})`` (sums in float64).  Accuracy: ``x`` carries the
    rounding of exp's arguments (≤ w/2 each: ≈ eps·w/2 relative), the order of the direct
    form's rounding of ``t``; relative, so tiny terms (``t`` down to ``−w``) keep their
    digits.  The factored rows' sums are one BLAS matrix-vector product per slot, in the
    dtype (SIMD partial sums: within 3 eps of float64 sums, measured on 1024–16384
    positive terms).  One pass over the row per positive, over the anchors that have that
    many positives (rows ordered by their count): O(Σ_a K_a · C) = O(B²·K̄) time,
    O(rows·C) scratch (sub-blocks of ``_SOFT_SUB_ELEMENTS``, cache-sized).
    """
    R, C = d.shape
    out = np.zeros((R, C), dtype=d.dtype)
    slope = np.zeros((R, C), dtype=d.dtype)
    count = np.zeros((R, C), dtype=np.int32)
    m = d.dtype.type(margin)
    one = d.dtype.type(1)
    nneg = np.count_nonzero(neg, axis=1).astype(np.int32)
    for blk in _blocks._row_blocks(R, C):
        P = _SoftRows(d[blk], pos[blk], neg[blk], m)
        if P.kmax == 0:
            continue
        S = np.zeros((P.n, P.kmax), dtype=d.dtype)
        G = np.zeros((P.n, P.kmax), dtype=d.dtype)
        ones = np.ones(C, dtype=d.dtype)
        scratch = None
        for s0, s1, en in P.sub_blocks():
            if scratch is None:
                scratch = np.empty_like(en), np.empty((2,) + en.shape, dtype=en.dtype)
            for k, e in P.slots(s0, s1):
                x, h = scratch[0][: e - s0], scratch[1][:, : e - s0]
                np.multiply(en[: e - s0], P.Ep[s0:e, k : k + 1], out=x)  # e^t
                np.log1p(x, out=h[0])  # softplus(t)
                np.add(x, one, out=h[1])
                np.divide(x, h[1], out=h[1])  # σ(t)
                sums = h @ ones  # both row sums in one BLAS call (SIMD partial sums)
                S[s0:e, k] = sums[0]
                G[s0:e, k] = sums[1]
        if P.direct.size:
            rows = P.direct
            S[rows], G[rows] = _soft_direct_sums(P.db[rows], P.nb[rows], P.V[rows], P.npos[rows], P.kmax)
        P.scatter(out[blk], S)
        P.scatter(slope[blk], G)
        count[blk].reshape(-1)[P.dest] = nneg[blk][P.brow]
    return out, count, slope


@_quiet
def soft_backward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin,
                  grad: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Gradient of ``Σ grad ⊙ L`` (softplus) with respect to ``d``:
    ``∂/∂d(a,p) = grad[a,p]·slope[a,p]``, ``∂/∂d(a,n) = −Σ_p grad[a,p]·σ(t(a,p,n))``
    (``σ(t) = x/(1 + x)``, ``x = e^{d(a,p) + m − c}·e^{c − d(a,n)}`` as in
    :func:`soft_forward`, whose direct form the same rows take; no exp or log per term:
    a multiply, an add and a divide each).  Shapes ``(R, C)``, dtype of ``d``; ``grad`` and
    ``slope`` may be broadcast views."""
    R, C = d.shape
    m = d.dtype.type(margin)
    one = d.dtype.type(1)
    grad = np.broadcast_to(grad, (R, C))
    slope = np.broadcast_to(slope, (R, C))
    out = np.zeros((R, C), dtype=d.dtype)
    for blk in _blocks._row_blocks(R, C):
        P = _SoftRows(d[blk], pos[blk], neg[blk], m)
        if P.kmax == 0:
            continue
        gb, ob = grad[blk], out[blk]
        W = np.zeros((P.n, P.kmax), dtype=d.dtype)
        W[P.r, P.slot] = gb[P.brow, P.c]
        EW = P.Ep * W  # w·e^{v − c}
        scratch = None
        for s0, s1, en in P.sub_blocks():
            if scratch is None:
                scratch = np.empty_like(en), np.empty_like(en), np.empty_like(en)
            acc = scratch[2][: s1 - s0]
            acc.fill(0)
            for k, e in P.slots(s0, s1):
                x, h = scratch[0][: e - s0], scratch[1][: e - s0]
                np.multiply(en[: e - s0], P.Ep[s0:e, k : k + 1], out=x)  # e^t
                np.add(x, one, out=h)
                np.multiply(en[: e - s0], EW[s0:e, k : k + 1], out=x)  # w·e^t
                np.divide(x, h, out=h)  # w·σ(t)
                acc[: e - s0] += h
            if P.rows is None:
                np.subtract(ob[s0:s1], acc, out=ob[s0:s1])
            else:
                ob[P.rows[s0:s1]] -= acc
        if P.direct.size:
            rows = P.direct
            at = rows if P.rows is None else P.rows[rows]
            acc = _soft_direct_grad(P.db[rows], P.nb[rows], P.V[rows], W[rows], P.npos[rows], P.kmax)
            ob[at] = np.subtract(0, acc)  # +0.0 off the negatives
        # the positives: grad·slope (after the negatives: a positive is no negative)
        ob.reshape(-1)[P.dest] = gb[P.brow, P.c] * slope[blk][P.brow, P.c]
    return out


def hinge_rows_linear(ctx, d, pos, neg, margin, t, count):
    """The derivative of :func:`hinge_rows`'s ``L`` in ``d`` along a tangent ``t`` (B, B):
    ``(J t)[a, p] = count[a, p]·t[a, p] − Σ_{n counted} t[a, n]`` at positive pairs, 0
    elsewhere.  The counted negatives (``d(a, n) < d(a, p) + m``) are the first
    ``count[a, p]`` of the row's negatives in ascending order, so one sort, a prefix sum
    of ``t`` in that order and a gather give it: O(B² log B), array API, differentiable.
    ``L`` is piecewise linear in ``d``, so this is exact away from the hinge kinks.
    Bridges use it for second-order derivatives of the native kernel."""
    xp, be = ctx.xp, ctx.backend
    zero = scalar(ctx, 0)
    inf = scalar(ctx, float("inf"))
    idt = be.index_dtype(xp)
    order = xp.astype(be.argsort_rows(xp, xp.where(neg, d, inf)), idt)
    ts = be.take_rows(xp, xp.where(neg, t, zero), order)
    prefix = xp.cumulative_sum(ts, axis=1, include_initial=True)
    cnt = xp.where(pos, xp.astype(count, idt), xp.zeros((), dtype=idt, device=ctx.device))
    below = be.take_rows(xp, prefix, cnt)
    return xp.where(pos, as_float(ctx, cnt) * t - below, zero)


HINGE = Step(
    "batch_all_hinge", "batch_all", hinge_rows,
    Kernel(_numba.hinge_forward(batch_all_forward), inputs=("d", "pos", "neg", "margin"),
           outputs=("float", "int32"), backward=_numba.hinge_backward(batch_all_backward),
           saved=(1,), slopes={3: 1}, linear=hinge_rows_linear),
)
"""``(d, pos, neg, margin) -> (L, count)``: ``L`` (B, B) of ``d``'s dtype, differentiable in
``d`` and the margin; ``count`` the number of positive triplets per pair (integers)."""

SOFT = Step(
    "batch_all_soft", "batch_all", soft_rows,
    Kernel(_numba.soft_forward(soft_forward), inputs=("d", "pos", "neg", "margin"),
           outputs=("float", "int32", "float"), backward=_numba.soft_backward(soft_backward),
           saved=(2,), slopes={3: 2}),
)
"""``(d, pos, neg, margin) -> (L, count, slope)`` with the softplus: ``L`` (B, B) of ``d``'s
dtype, differentiable in ``d`` and the margin; ``count`` the number of valid triplets per
pair; ``slope = ∂L/∂m = Σ_n σ(d(a,p) − d(a,n) + m)`` (float)."""
