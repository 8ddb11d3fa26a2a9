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
from . import _blocks, _numba
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
      the shapes must be static): blocks of anchors, ``(b, R, R)`` each with
      ``b·R² ≤ 2²²`` elements (at least one anchor) — ``O(B·R²)`` time, the blocks' memory
      ``O(max(2²², R²))`` forward (and ``O(B·R²)`` kept for a backward pass).
    """
    from ..backends._scale import concrete_int

    xp, be = ctx.xp, ctx.backend
    B, R = d.shape  # R = B, or the size of a reference set
    idt = be.index_dtype(xp)
    npos = count_true(ctx, pos, axis=1)
    kmax = concrete_int(xp.max(npos)) if B and R else 0
    if kmax is None:
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


def _soft_rows_blocks(ctx, d, pos, neg, m):
    """:func:`soft_rows` with static shapes (``jax.jit``): blocks of anchors, each
    ``(b, R, R)`` with ``b·R² ≤ 2²²`` elements: O(B·R²) time, O(max(2²², R²)) memory."""
    xp, be = ctx.xp, ctx.backend
    B, R = d.shape
    zero = scalar(ctx, 0)
    idt = be.index_dtype(xp)
    blk = max(1, min(B, _SOFT_BLOCK_ELEMENTS // max(1, R * R)))
    rows, counts, slopes = [], [], []
    for start in range(0, B, blk):
        stop = min(B, start + blk)
        da = d[start:stop, :]
        t = da[:, :, None] - da[:, None, :] + scalar(ctx, m)  # (b, p, n)
        mask = pos[start:stop, :, None] & neg[start:stop, None, :]
        sp = be.softplus(xp, t)
        rows.append(xp.sum(xp.where(mask, sp, zero), axis=2))
        slopes.append(xp.sum(xp.where(mask, xp.exp(t - sp), zero), axis=2))  # σ(t) = e^{t − softplus(t)}
        # softplus > 0 on all of R: every valid triplet is positive (docs/semantics.md)
        counts.append(xp.sum(xp.astype(mask, idt), axis=2))
    if len(rows) == 1:
        return rows[0], counts[0], slopes[0]
    return xp.concat(rows, axis=0), xp.concat(counts, axis=0), xp.concat(slopes, axis=0)


# --- the NumPy kernel ------------------------------------------------------------------

@_quiet
def batch_all_forward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin):
    """``L[a, p] = Σ_n max(d(a,p) − d(a,n) + m, 0)`` and
    ``count[a, p] = #{n: d(a,p) − d(a,n) + m > 0}`` (int32) at positive pairs, 0 elsewhere.

    Shapes ``(R, C)`` (d float32/float64/longdouble, masks bool); sums accumulate in
    float64.  A term is positive exactly when the oracle's ``d(a,p) − d(a,n) + m > 0`` is
    (:func:`._blocks.thresholds`).  Time: O(R·C·K) for at most ``SMALL_K`` positives per
    anchor (one pass per positive), else O(R·C log C) (each row sorted once, its
    thresholds searched in it).
    """
    R, C = d.shape
    out = np.zeros((R, C), dtype=d.dtype)
    count = np.zeros((R, C), dtype=np.int32)
    m = d.dtype.type(margin)
    for blk, r, c, db, nb, slot, kmax in _term_blocks(d, pos, neg):
        rows = db.shape[0]
        dp = db[r, c]
        tau = _blocks.thresholds(dp, m)
        v = dp.astype(np.float64) + np.float64(m)
        if kmax <= _blocks.SMALL_K:
            # few positives per anchor (P×K batches): one pass over the row per positive
            # beats sorting it.  Σ max(τ − d, 0) − c·(τ − v) = Σ (v − d) over the c
            # counted negatives; padded slots hold −inf and add nothing.
            dn = np.where(nb, db, np.inf)
            T = np.full((rows, kmax), -np.inf, dtype=d.dtype)
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
            out[blk][r, c] = np.maximum(val, 0.0)
            count[blk][r, c] = cnt
            continue
        # many positives per anchor: per row, its negatives sorted once and every
        # threshold searched in them (the row stays in cache)
        ob, cb = out[blk], count[blk]
        start, stop = _blocks.row_spans(r, rows)
        ps = np.zeros(C + 1, dtype=np.float64)
        for a in np.flatnonzero(stop > start):
            s, e = start[a], stop[a]
            dn = db[a][nb[a]]
            dn.sort()
            np.cumsum(dn, dtype=np.float64, out=ps[1 : dn.size + 1])
            k = np.searchsorted(dn, tau[s:e], side="left")  # #{n: d(a,n) < τ}
            cols = c[s:e]
            ob[a, cols] = np.maximum(k * v[s:e] - ps[k], 0.0)
            cb[a, cols] = k
    return out, count


@_quiet
def batch_all_backward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin,
                       grad: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Gradient of ``Σ grad ⊙ L`` with respect to ``d`` (shape and dtype of ``d``).

    ``∂/∂d(a,p) = grad[a,p]·count[a,p]`` and
    ``∂/∂d(a,n) = −Σ_{p: d(a,p) − d(a,n) + m > 0} grad[a,p]``.
    """
    R, C = d.shape
    out = np.zeros((R, C), dtype=d.dtype)
    m = d.dtype.type(margin)
    grad = np.broadcast_to(grad, (R, C))
    for blk, r, c, db, nb, slot, kmax in _term_blocks(d, pos, neg):
        gb, ob = grad[blk], out[blk]
        ob[...] = np.where(pos[blk], gb * count[blk], 0)  # blocks without a term stay 0
        rows = db.shape[0]
        tau = _blocks.thresholds(db[r, c], m)
        w = gb[r, c]
        if kmax <= _blocks.SMALL_K:
            T = np.full((rows, kmax), -np.inf, dtype=d.dtype)
            W = np.zeros((rows, kmax), dtype=d.dtype)
            T[r, slot] = tau
            W[r, slot] = w
            acc = np.zeros((rows, C), dtype=d.dtype)
            tmp = np.empty_like(acc)
            hit = np.empty(acc.shape, dtype=bool)
            for k in range(kmax):
                np.less(db, T[:, k : k + 1], out=hit)
                np.multiply(hit, W[:, k : k + 1], out=tmp)
                acc += tmp
            np.multiply(acc, nb, out=acc)
            ob -= acc
            continue
        # many positives per anchor: per row, its thresholds sorted and each negative
        # searched in them; Σ grad over the thresholds above it
        start, stop = _blocks.row_spans(r, rows)
        for a in np.flatnonzero(stop > start):
            s, e = start[a], stop[a]
            t = tau[s:e]
            o = np.argsort(t)
            tail = np.zeros(e - s + 1, dtype=np.float64)
            tail[:-1] = np.cumsum(w[s:e][o][::-1], dtype=np.float64)[::-1]  # Σ grad over τ > x
            nc = np.flatnonzero(nb[a])
            idx = np.searchsorted(t[o], db[a, nc], side="right")
            ob[a, nc] -= tail[idx].astype(d.dtype)
    return out


@_quiet
def soft_forward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin):
    """The softplus row sums: ``(L, count, slope)`` at positive pairs, 0 elsewhere.

    ``L[a,p] = Σ_n softplus(t)`` and ``slope[a,p] = ∂L/∂m = Σ_n σ(t)`` with
    ``t = d(a,p) − d(a,n) + m`` (dtype of ``d``, accumulated in float64);
    ``count[a,p]`` (int32) the number of negatives (every valid triplet is positive).
    One pass over the row per positive, over the anchors that have that many
    positives: O(Σ_a K_a · C) = O(B²·K̄) time, O(rows·C) scratch.
    """
    R, C = d.shape
    out = np.zeros((R, C), dtype=d.dtype)
    slope = np.zeros((R, C), dtype=d.dtype)
    count = np.zeros((R, C), dtype=np.int32)
    m = d.dtype.type(margin)
    one = d.dtype.type(1)
    for blk, r, c, db, nb, slot, kmax in _term_blocks(d, pos, neg):
        rows = db.shape[0]
        npos = np.bincount(r, minlength=rows)
        dn = np.where(nb, db, np.inf)  # t = −inf off the negatives: softplus 0, σ 0
        V = np.zeros((rows, kmax), dtype=d.dtype)
        V[r, slot] = db[r, c] + m
        S = np.zeros((rows, kmax), dtype=np.float64)
        G = np.zeros((rows, kmax), dtype=np.float64)
        for k in range(kmax):
            live = npos > k
            every = bool(live.all())
            t = (V[:, k : k + 1] - dn) if every else (V[live, k : k + 1] - dn[live])
            q = np.negative(t)
            np.minimum(q, t, out=q)
            np.exp(q, out=q)  # e^{−|t|}
            h = np.log1p(q)
            pos_t = t > 0
            np.maximum(t, 0, out=t)
            h += t  # softplus(t) = max(t, 0) + log1p(e^{−|t|})
            S[live, k] = np.add.reduce(h, axis=1, dtype=np.float64)
            # σ(t) = 1/(1 + e^{−|t|}) for t > 0, e^{−|t|}/(1 + e^{−|t|}) otherwise
            np.add(q, one, out=h)
            np.divide(np.where(pos_t, one, q), h, out=h)
            G[live, k] = np.add.reduce(h, axis=1, dtype=np.float64)
        out[blk][r, c] = S[r, slot]
        slope[blk][r, c] = G[r, slot]
        count[blk][r, c] = np.count_nonzero(nb, axis=1)[r]
    return out, count, slope


@_quiet
def soft_backward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin,
                  grad: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Gradient of ``Σ grad ⊙ L`` (softplus) with respect to ``d``:
    ``∂/∂d(a,p) = grad[a,p]·slope[a,p]``, ``∂/∂d(a,n) = −Σ_p grad[a,p]·σ(t(a,p,n))``."""
    R, C = d.shape
    out = np.zeros((R, C), dtype=d.dtype)
    m = d.dtype.type(margin)
    one = d.dtype.type(1)
    grad = np.broadcast_to(grad, (R, C))
    for blk, r, c, db, nb, slot, kmax in _term_blocks(d, pos, neg):
        gb, ob = grad[blk], out[blk]
        ob[...] = np.where(pos[blk], gb * slope[blk], 0)
        rows = db.shape[0]
        npos = np.bincount(r, minlength=rows)
        dn = np.where(nb, db, np.inf)
        V = np.zeros((rows, kmax), dtype=d.dtype)
        W = np.zeros((rows, kmax), dtype=d.dtype)
        V[r, slot] = db[r, c] + m
        W[r, slot] = gb[r, c]
        acc = np.zeros((rows, C), dtype=d.dtype)
        for k in range(kmax):
            live = npos > k
            every = bool(live.all())
            t = (V[:, k : k + 1] - dn) if every else (V[live, k : k + 1] - dn[live])
            q = np.negative(t)
            np.minimum(q, t, out=q)
            np.exp(q, out=q)
            s = np.add(q, one)
            np.divide(np.where(t > 0, one, q), s, out=s)
            s *= W[:, k : k + 1] if every else W[live, k : k + 1]
            if every:
                acc += s
            else:
                acc[live] += s
        ob -= acc
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
