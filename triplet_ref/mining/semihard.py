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
from ._blocks import _UINT, _quiet
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
    (R, C) (``d`` may be (B, R) against a reference set); ``chosen`` (int64) is 0 off-term,
    ``semihard`` says whether the strict rule chose.

    Each anchor takes one of three branches by its number of terms K_a: at most
    ``SMALL_K``, one pass over the row per term (O(C·K_a)); more, one sort of the row's
    packed keys (O(C log C), float32 distances ``>= 0``); float64, ``np.longdouble`` or
    negative values, a stable argsort per row (correct everywhere, not fast)."""
    R, C = d.shape
    chosen = np.zeros((R, C), dtype=np.int64)
    semi = np.zeros((R, C), dtype=bool)
    few = _few_terms if d.dtype in _UINT else _per_row
    _blocks.for_row_groups(term, (d, neg, term), (chosen, semi), few, _many_terms)
    return chosen, semi


def _few_terms(db, nb, tb, chosen, semi):
    """Few terms per anchor: per term slot, the nearest negative beyond it by one integer
    subtraction and one argmin over the distances' bit patterns (non-negative floats order
    like their bits; integer arithmetic is exact, so only equal distances tie, and argmin
    takes the first index)."""
    rows = db.shape[0]
    r, c = np.nonzero(tb)
    slot, kmax = _blocks._slots(r, rows)
    uint = _UINT[db.dtype]
    dn = np.where(nb, db, np.inf)
    dn += 0.0  # -0.0 -> +0.0
    bits = dn.view(uint)
    inf_bits = np.array(np.inf, dtype=db.dtype).view(uint)
    key = np.empty_like(bits)
    # fallback, the first farthest negative: + (2^n - bits(inf)) maps +inf (not a
    # negative) to 0 and keeps the finite distances' order above it
    np.add(bits, (~inf_bits) + uint.type(1), out=key)
    fallback = key.argmax(axis=1)
    T = np.full((rows, kmax), np.inf, dtype=db.dtype)
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
    chosen[r, c] = CH[r, slot]
    semi[r, c] = ST[r, slot]


def _many_terms(db, nb, tb, chosen, semi, threaded):
    """Many terms per anchor, float32: per row the keys ``(distance, category, column)``
    sorted once, a negative before a term of equal distance (:mod:`._blocks`).  The
    nearest negative strictly beyond a term is the first negative after it in that order
    (the smallest column among equal distances): a reverse running minimum of the
    negatives' positions gives it for every term at once."""
    if db.dtype != np.float32:
        return _per_row(db, nb, tb, chosen, semi)
    _blocks.sorted_sub_blocks(*db.shape, lambda sl: _sorted_block(db[sl], nb[sl], tb[sl], chosen[sl], semi[sl]),
                              threaded)


def _sorted_block(db, nb, tb, chosen, semi):
    v = db + db.dtype.type(0)  # -0.0 -> +0.0 (a copy)
    if not _blocks.packable(v):
        return _per_row(db, nb, tb, chosen, semi)
    rows, C = v.shape
    # negatives category 0, terms 1: a negative sorts before a term of equal distance, so
    # the negatives after a term are strictly farther
    srt = _blocks.SortedRows(v, nb, tb)
    top = np.uint32(1 << 31)
    # the position of the first negative at or after each position (>= 2^31: none)
    nxt = (srt.category != np.uint32(0)).astype(np.uint32)
    nxt <<= np.uint32(31)
    nxt |= np.arange(C, dtype=np.uint32)
    np.minimum.accumulate(nxt[:, ::-1], axis=1, out=nxt[:, ::-1])
    at = srt.where(1)  # the terms, in sorted order
    row = at // C
    base = row * C
    nt = _blocks.flat(nxt)[at]
    strict = nt < top
    np.minimum(nt, np.uint32(C - 1), out=nt)
    pick = _blocks.flat(srt.source)[base + nt] - base
    # none beyond: the farthest negative, the first column among equal distances (argmax
    # takes the first; non-negative floats order like their bits, NaN last as in the sort)
    nbits = v.view(np.uint32) * nb
    far = np.argmax(nbits, axis=1)
    zero = nbits[np.arange(rows), far] == 0  # every negative at distance 0 (or none)
    far[zero] = np.argmax(nb[zero], axis=1)
    pick = np.where(strict, pick, far[row])
    src = _blocks.flat(srt.source)[at]
    _blocks.flat(chosen)[src] = pick
    _blocks.flat(semi)[src] = strict


def _per_row(db, nb, tb, chosen, semi):
    """Any dtype and sign: per row, its negatives in a stable order (ties by column) and
    every term searched in them."""
    for a in range(db.shape[0]):
        cols = np.flatnonzero(tb[a])
        nc = np.flatnonzero(nb[a])
        if cols.size == 0 or nc.size == 0:  # not a term's anchor (terms have a negative)
            continue
        dn = db[a, nc] + db.dtype.type(0)  # -0.0 -> +0.0
        o = np.argsort(dn, kind="stable")
        srt, order = dn[o], nc[o]
        k = np.searchsorted(srt, db[a, cols], side="right")  # first strictly farther
        strict = k < nc.size
        first_largest = np.searchsorted(srt, srt[-1], side="left")
        chosen[a, cols] = np.where(strict, order[np.minimum(k, nc.size - 1)], order[first_largest])
        semi[a, cols] = strict


CHOICE = Step(
    "semihard_choice", "batch_semihard", choose,
    Kernel(_numba.semihard_choice(semihard_choice), inputs=("d", "neg", "term"), outputs=("index", "bool")),
)
"""``(d, neg, term) -> (chosen, semihard)``: ``chosen`` (B, B) indices of the negatives
(0 off-term), ``semihard`` whether the strict rule chose; not differentiable."""
