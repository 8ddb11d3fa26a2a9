"""The semi-hard choice: for every term ``(a, p)`` the negative ``n*`` nearest beyond
``d(a, p)`` (strictly), or the farthest negative when there is none; ties go to the
smallest index.

Two implementations: the portable array-API one (:func:`choose`: a stable argsort of the
negatives and a row-wise search) and the NumPy kernel (:func:`semihard_choice`), which
the CPU backends run natively (see :mod:`triplet_ref.mining`).  The choice is not
differentiable (indices); the loss gathers ``d(a, n*)`` from ``d`` itself.
"""
from __future__ import annotations

import numpy as np

from ..losses._common import count_true, scalar
from . import _blocks, _numba
from ._blocks import _UINT, _quiet, _term_blocks
from ._dispatch import Kernel, Step

__all__ = ["CHOICE", "choose", "semihard_choice"]


# --- portable (array API) -------------------------------------------------------------

def choose(ctx, d, neg, term):
    """Portable semi-hard mining: ``(chosen, semihard)`` index and flag matrices."""
    xp, be = ctx.xp, ctx.backend
    B = d.shape[1]  # the candidates (columns): d may be (B, R) against a reference set
    idt = be.index_dtype(xp)
    izero = xp.zeros((), dtype=idt, device=ctx.device)
    inf = scalar(ctx, float("inf"))
    nneg = count_true(ctx, neg, axis=1)
    dn = xp.where(neg, d, inf)
    order = xp.astype(be.argsort_rows(xp, dn), idt)  # stable: ties keep index order
    srt = be.take_rows(xp, dn, order)

    # first sorted position with d(a, n) > d(a, p): its value is the smallest such
    # distance and, the sort being stable, its index the smallest among ties
    first_greater = xp.astype(be.searchsorted_rows(xp, srt, d, side="right"), idt)
    semihard = term & (first_greater < nneg[:, None])
    # fallback: the largest negative distance, at its first sorted position
    last = xp.maximum(nneg - xp.ones((), dtype=idt, device=ctx.device), izero)
    largest = be.take_rows(xp, srt, last[:, None])
    first_largest = xp.astype(be.searchsorted_rows(xp, srt, largest, side="left"), idt)
    pos_sorted = xp.where(semihard, first_greater, first_largest)
    pos_sorted = xp.minimum(pos_sorted, xp.asarray(B - 1, dtype=idt, device=ctx.device))
    return be.take_rows(xp, order, pos_sorted), semihard


# --- the NumPy kernel ------------------------------------------------------------------

@_quiet
def semihard_choice(d: np.ndarray, neg: np.ndarray, term: np.ndarray):
    """The semi-hard negative of every term ``(a, p)``: ``(chosen, semihard)``, both
    (B, B); ``chosen`` is 0 off-term, ``semihard`` says whether the strict rule chose."""
    R, C = d.shape
    chosen = np.zeros((R, C), dtype=np.int64)
    semi = np.zeros((R, C), dtype=bool)
    for blk, r, c, db, nb, slot, kmax in _term_blocks(d, term, neg):
        rows = db.shape[0]
        if kmax <= _blocks.SMALL_K and d.dtype in _UINT:
            # few positives per anchor: per positive, the nearest negative beyond it by
            # one integer subtraction and one argmin over the distances' bit patterns
            # (non-negative floats order like their bits; integer arithmetic is exact,
            # so only equal distances tie, and argmin takes the first index)
            uint = _UINT[d.dtype]
            dn = np.where(nb, db, np.inf)
            dn += 0.0  # -0.0 -> +0.0
            bits = dn.view(uint)
            inf_bits = np.array(np.inf, dtype=d.dtype).view(uint)
            key = np.empty_like(bits)
            # fallback, the first farthest negative: + (2^n - bits(inf)) maps +inf (not a
            # negative) to 0 and keeps the finite distances' order above it
            np.add(bits, (~inf_bits) + uint.type(1), out=key)
            fallback = key.argmax(axis=1)
            T = np.full((rows, kmax), np.inf, dtype=d.dtype)
            T[r, slot] = db[r, c]
            T += 0.0
            Tb = T.view(uint) + uint.type(1)
            CH = np.zeros((rows, kmax), dtype=np.int64)
            ST = np.zeros((rows, kmax), dtype=bool)
            idx = np.arange(rows)
            for k in range(kmax):
                # bits(d_an) - bits(d_ap) - 1 (mod 2^n): small for d_an > d_ap, huge otherwise
                np.subtract(bits, Tb[:, k : k + 1], out=key)
                j = key.argmin(axis=1)
                v = dn[idx, j]
                ok = (v > T[:, k]) & (v < np.inf)
                CH[:, k] = np.where(ok, j, fallback)
                ST[:, k] = ok
            chosen[blk][r, c] = CH[r, slot]
            semi[blk][r, c] = ST[r, slot]
            continue
        # many terms per anchor (or a dtype without a bit-pattern trick): per row, its
        # negatives sorted once (ties by column) and every term searched in them
        start, stop = _blocks.row_spans(r, rows)
        cb, sb = chosen[blk], semi[blk]
        for a in np.flatnonzero(stop > start):
            s, e = start[a], stop[a]
            nc = np.flatnonzero(nb[a])
            if nc.size == 0:  # not a term's anchor (terms have a negative)
                continue
            dn = db[a, nc]
            dn += 0.0  # -0.0 -> +0.0
            if dn.dtype == np.float32:
                # (value bits, column) packed in one uint64 key: one SIMD sort gives the
                # values and a stable order (non-negative float32 bits order like the floats)
                key = dn.view(np.uint32).astype(np.uint64) << np.uint64(32)
                key |= nc.astype(np.uint64)
                key.sort()
                srt = (key >> np.uint64(32)).astype(np.uint32).view(np.float32)
                order = (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
            else:
                o = np.argsort(dn, kind="stable")
                srt, order = dn[o], nc[o]
            cols = c[s:e]
            k = np.searchsorted(srt, db[a, cols], side="right")  # first strictly farther
            strict = k < nc.size
            first_largest = np.searchsorted(srt, srt[-1], side="left")
            cb[a, cols] = np.where(strict, order[np.minimum(k, nc.size - 1)], order[first_largest])
            sb[a, cols] = strict
    return chosen, semi


CHOICE = Step(
    "semihard_choice", "batch_semihard", choose,
    Kernel(_numba.semihard_choice(semihard_choice), inputs=("d", "neg", "term"), outputs=("index", "bool")),
)
"""``(d, neg, term) -> (chosen, semihard)``: ``chosen`` (B, B) indices of the negatives
(0 off-term), ``semihard`` whether the strict rule chose; not differentiable."""
