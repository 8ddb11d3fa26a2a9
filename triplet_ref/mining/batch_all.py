"""The batch-all row sums ``L[a, p] = Σ_n h(d(a, p) − d(a, n) + m)`` and the per-pair count
of positive triplets: the hinge and the softplus (soft) versions.

Two implementations of the hinge step live here: the portable array-API one
(:func:`hinge_rows`: sorted negatives, a row-wise search and prefix sums) and the NumPy
kernel (:func:`batch_all_forward` / :func:`batch_all_backward`), which the CPU backends
run natively (see :mod:`triplet_ref.mining`).  The soft step has the portable version only.
"""
from __future__ import annotations

import numpy as np

from ..losses._common import as_float, count_true, scalar
from ._blocks import _SMALL_K, _quiet, _sorted_negatives, _term_blocks, bsearch
from ._dispatch import Kernel, Step

__all__ = ["HINGE", "SOFT", "hinge_rows", "soft_rows", "batch_all_forward", "batch_all_backward"]

# soft=True cannot be summed from sorted distances (softplus has no closed-form sum), so
# it is computed for blocks of anchors; a block holds at most this many elements
# (b × B × B), plus one B × B block when B² is larger: memory stays O(B²).
_SOFT_BLOCK_ELEMENTS = 1 << 22


# --- portable (array API) -------------------------------------------------------------

def hinge_rows(ctx, d, pos, neg, m):
    """``L[a, p]`` and the per-pair count of positive triplets, from sorted negatives."""
    xp, be = ctx.xp, ctx.backend
    B = d.shape[0]
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

    v = d + scalar(ctx, m)
    count = be.searchsorted_rows(xp, srt, v, side="left", where=pos)  # #{n: d(a,n) < v}
    count = xp.where(pos, xp.astype(count, idt), xp.zeros((), dtype=idt, device=ctx.device))
    below = be.take_rows(xp, prefix, count)
    cf = as_float(ctx, count)
    per_pair = xp.where(pos, cf * (v - base[:, None]) - below, zero)
    # Σ (v − d) over the counted negatives is ≥ 0; rounding must not make it negative
    per_pair = xp.maximum(per_pair, zero)
    return per_pair, count


def soft_rows(ctx, d, pos, neg, m):
    """softplus version: blocks of anchors, each ``(b, B, B)`` with b·B² ≤ the budget."""
    xp, be = ctx.xp, ctx.backend
    B = d.shape[0]
    zero = scalar(ctx, 0)
    idt = be.index_dtype(xp)
    blk = max(1, min(B, _SOFT_BLOCK_ELEMENTS // (B * B)))
    rows, counts = [], []
    for start in range(0, B, blk):
        stop = min(B, start + blk)
        da = d[start:stop, :]
        t = da[:, :, None] - da[:, None, :] + scalar(ctx, m)  # (b, p, n)
        mask = pos[start:stop, :, None] & neg[start:stop, None, :]
        lt = xp.where(mask, be.softplus(xp, t), zero)
        rows.append(xp.sum(lt, axis=2))
        # softplus > 0 on all of R: every valid triplet is positive (docs/semantics.md)
        counts.append(xp.sum(xp.astype(mask, idt), axis=2))
    if len(rows) == 1:
        return rows[0], counts[0]
    return xp.concat(rows, axis=0), xp.concat(counts, axis=0)


# --- the NumPy kernel ------------------------------------------------------------------

@_quiet
def batch_all_forward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin: float):
    """``L[a, p] = Σ_n max(d(a,p) − d(a,n) + m, 0)`` and ``count[a, p] = #{n: d(a,n) < d(a,p) + m}``
    (int32) at positive pairs, 0 elsewhere.  Sums are accumulated in float64."""
    B = d.shape[0]
    out = np.zeros((B, B), dtype=d.dtype)
    count = np.zeros((B, B), dtype=np.int32)
    m = d.dtype.type(margin)
    for blk, r, c, db, nb, slot, kmax in _term_blocks(d, pos, neg):
        rows = db.shape[0]
        if kmax <= _SMALL_K:
            # few positives per anchor (P×K batches): one pass over the row per positive
            # beats sorting it.  Padded slots hold -inf and add nothing.
            dn = np.where(nb, db, np.inf)
            V = np.full((rows, kmax), -np.inf, dtype=d.dtype)
            V[r, slot] = db[r, c] + m
            S = np.zeros((rows, kmax), dtype=np.float64)
            C = np.zeros((rows, kmax), dtype=np.int32)
            h = np.empty_like(dn)
            for k in range(kmax):
                np.subtract(V[:, k : k + 1], dn, out=h)
                np.maximum(h, 0, out=h)
                S[:, k] = np.add.reduce(h, axis=1, dtype=np.float64)
                C[:, k] = np.count_nonzero(h, axis=1)
            out[blk][r, c] = S[r, slot]
            count[blk][r, c] = C[r, slot]
            continue
        srt, _ = _sorted_negatives(db, nb, with_order=False)
        nneg = nb.sum(axis=1)
        base = np.where(nneg > 0, srt[:, 0], 0).astype(np.float64)
        real = np.arange(B)[None, :] < nneg[:, None]
        shifted = np.where(real, srt - base[:, None], 0.0)
        prefix = np.cumsum(shifted, axis=1, dtype=np.float64)
        v = db[r, c] + m
        k = bsearch(srt, r, v, "left")
        below = np.where(k > 0, prefix[r, np.maximum(k - 1, 0)], 0.0)
        vals = k * (v.astype(np.float64) - base[r]) - below
        out[blk][r, c] = np.maximum(vals, 0.0)
        count[blk][r, c] = k
    return out, count


@_quiet
def batch_all_backward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin: float,
                       grad: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Gradient of ``Σ grad ⊙ L`` with respect to ``d``.

    ``∂/∂d(a,p) = grad[a,p]·count[a,p]`` and
    ``∂/∂d(a,n) = −Σ_{p: d(a,n) < d(a,p) + m} grad[a,p]``.
    """
    B = d.shape[0]
    out = np.zeros((B, B), dtype=d.dtype)
    m = d.dtype.type(margin)
    grad = np.broadcast_to(grad, (B, B))
    for blk, r, c, db, nb, slot, kmax in _term_blocks(d, pos, neg):
        gb, ob = grad[blk], out[blk]
        ob[...] = np.where(pos[blk], gb * count[blk], 0)  # blocks without a term stay 0
        rows = db.shape[0]
        thr = db[r, c] + m
        w = gb[r, c]
        if kmax <= _SMALL_K:
            T = np.full((rows, kmax), -np.inf, dtype=d.dtype)
            W = np.zeros((rows, kmax), dtype=d.dtype)
            T[r, slot] = thr
            W[r, slot] = w
            acc = np.zeros((rows, B), dtype=d.dtype)
            tmp = np.empty_like(acc)
            hit = np.empty(acc.shape, dtype=bool)
            for k in range(kmax):
                np.less(db, T[:, k : k + 1], out=hit)
                np.multiply(hit, W[:, k : k + 1], out=tmp)
                acc += tmp
            np.multiply(acc, nb, out=acc)
            ob -= acc
            continue
        # many positives per anchor: per row, sort the thresholds and search each negative
        for a in range(rows):
            sel = r == a
            if not sel.any():
                continue
            t = thr[sel]
            o = np.argsort(t)
            ts = t[o]
            tail = np.concatenate([np.cumsum(w[sel][o][::-1])[::-1], [0.0]])  # Σ w over t > x
            idx = np.searchsorted(ts, db[a], side="right")
            ob[a] -= np.where(nb[a], tail[idx], 0).astype(d.dtype)
    return out


HINGE = Step(
    "batch_all_hinge", "batch_all", hinge_rows,
    Kernel(batch_all_forward, inputs=("d", "pos", "neg", "margin"), outputs=("float", "int32"),
           backward=batch_all_backward, saved=(1,), slopes={3: 1}),
)
"""``(d, pos, neg, margin) -> (L, count)``: ``L`` (B, B) of ``d``'s dtype, differentiable in
``d`` and the margin; ``count`` the number of positive triplets per pair (integers)."""

SOFT = Step("batch_all_soft", "batch_all", soft_rows)
"""``(d, pos, neg, margin) -> (L, count)`` with the softplus: portable only."""
