"""The semi-hard choice: for every term ``(a, p)`` the negative ``n*`` nearest beyond
``d(a, p)`` (strictly), or the farthest negative when there is none; ties go to the
smallest index.

Two implementations: the portable array-API one (:func:`choose`: a stable argsort of the
negatives and a row-wise search) and the NumPy kernel (:func:`semihard_choice`), which
the CPU backends run natively (see :mod:`triplet_ref.mining`).  The choice is not
differentiable (indices); the loss gathers ``d(a, n*)`` from ``d`` itself.
"""
from __future__ import annotations

import math

import numpy as np

from ..losses._common import count_true, scalar
from . import _blocks, _numba, _ranks
from ._blocks import _LO, _UINT, _quiet
from ._dispatch import Kernel, Step

__all__ = ["CHOICE", "choose", "semihard_choice", "choice_and_sums"]


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
    negatives (packed keys ``bits << 32 | column``) and each term's rank among them
    (:func:`._ranks.ranks`, float32 distances ``>= 0``); float64, ``np.longdouble`` or
    negative values, a stable argsort per row (correct everywhere, not fast)."""
    chosen, semi, _ = choice_and_sums(d, neg, term, None)
    return chosen, semi


def choice_and_sums(d: np.ndarray, neg: np.ndarray, term: np.ndarray, margin):
    """:func:`semihard_choice`'s ``(chosen, semihard)`` and, with a ``margin``, the terms'
    sums in the same pass over them (:mod:`.semihard_sums`): ``(total, active, n_semi)``
    with ``arg = (d(a, p) − d(a, n*)) + m`` in ``d``'s dtype, ``total = Σ max(arg, 0)``
    (float64 partial sums, added exactly: the result does not depend on the order in
    which the row blocks finish), ``active = #{arg > 0}``, ``n_semi = #semihard``; None
    without a margin."""
    R, C = d.shape
    chosen = np.zeros((R, C), dtype=np.int64)
    semi = np.zeros((R, C), dtype=bool)
    parts = None if margin is None else []
    m = None if margin is None else d.dtype.type(margin)
    few = _few_terms if d.dtype in _UINT else _per_row
    _blocks.for_row_groups(term, (d, neg, term), (chosen, semi), lambda *a: few(*a, m=m, parts=parts),
                           lambda *a: _many_terms(*a, m=m, parts=parts))
    if parts is None:
        return chosen, semi, None
    return chosen, semi, (math.fsum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts))


def _add_sums(parts, m, dp, dn, strict):
    """Append the terms' ``(Σ max(arg, 0), #{arg > 0}, #strict)`` to ``parts`` (if any)."""
    if parts is None:
        return
    arg = dp - dn
    arg += m
    h = np.maximum(arg, arg.dtype.type(0))  # NaN stays NaN
    parts.append((float(np.add.reduce(h, dtype=np.float64)), int(np.count_nonzero(arg > 0)),
                  int(np.count_nonzero(strict))))


def _few_terms(db, nb, tb, chosen, semi, m=None, parts=None):
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
    ch, st = CH[r, slot], ST[r, slot]
    chosen[r, c] = ch
    semi[r, c] = st
    _add_sums(parts, m, db[r, c], db[r, ch], st)


def _many_terms(db, nb, tb, chosen, semi, threaded, m=None, parts=None):
    """Many terms per anchor, float32: per row the negatives sorted once by their keys
    ``(distance, column)`` (:func:`._ranks.sorted_negatives`), and every term's rank among
    them (:func:`._ranks.ranks`: the negatives at or below its distance): the negative at
    that rank is the nearest one strictly beyond it, the smallest column among equal
    distances."""
    if db.dtype != np.float32:
        return _per_row(db, nb, tb, chosen, semi, m, parts)
    _blocks.sorted_sub_blocks(
        *db.shape, lambda sl: _sorted_block(db[sl], nb[sl], tb[sl], chosen[sl], semi[sl], m, parts), threaded)


def _sorted_block(db, nb, tb, chosen, semi, m=None, parts=None):
    v = db + db.dtype.type(0)  # -0.0 -> +0.0 (a copy)
    if not _blocks.packable(v):
        return _per_row(db, nb, tb, chosen, semi, m, parts)
    rows, C = v.shape
    bits = v.view(np.uint32)
    at = np.flatnonzero(tb)  # the terms (flat, row-major)
    r_all = np.arange(rows)
    row = np.repeat(r_all, np.count_nonzero(tb, axis=1))
    q = bits.reshape(-1)[at]  # the terms' distances (bits)
    s, n = _ranks.sorted_negatives(bits, nb, columns=True)
    M = s.shape[1]
    none = n[row] == 0 if M == 0 or int(n.min()) == 0 else None  # terms without a negative
    if M:
        sv = _ranks.high_halves(s)
        # the first negative strictly beyond a term: at its rank #{n: d(a,n) <= d(a,p)}
        k = _ranks.ranks(sv, n, row, q, strict=False)
        strict = k < n[row]
        # none beyond: the farthest negative, the first of its distance (NaN last, as in
        # the sort); every negative at distance 0: the first negative
        far = np.maximum(n - 1, 0)  # the last negative, then back over its equals
        top = sv[r_all, far]
        while True:
            back = far > 0
            back &= sv[r_all, far - 1] == top
            if not back.any():
                break
            far -= back
        k = np.where(strict, k, far[row])
        k += row * M  # flat, in the sorted block
        pick = s.view(np.uint32).reshape(-1)[2 * k + _LO].astype(np.int64)
        dn = sv.reshape(-1)[k]  # the chosen negative's distance (bits)
    else:  # no negative in the sub-block
        strict = np.zeros(at.size, dtype=bool)
        pick = np.zeros(at.size, dtype=np.int64)
        dn = None
    if none is not None:  # a term without a negative (only in direct kernel calls): index 0
        pick[none] = 0
    _blocks.flat(chosen)[at] = pick
    _blocks.flat(semi)[at] = strict
    if parts is not None:
        if none is not None:
            dn = bits.reshape(-1)[row * C + pick]
        _add_sums(parts, m, q.view(np.float32), dn.view(np.float32), strict)


def _per_row(db, nb, tb, chosen, semi, m=None, parts=None):
    """Any dtype and sign: per row, its negatives in a stable order (ties by column) and
    every term searched in them."""
    dps, dns, sts = [], [], []
    for a in range(db.shape[0]):
        cols = np.flatnonzero(tb[a])
        nc = np.flatnonzero(nb[a])
        if cols.size == 0:
            continue
        if nc.size == 0:  # not a term's anchor (terms have a negative): index 0
            ch, st = np.zeros(cols.size, dtype=np.int64), np.zeros(cols.size, dtype=bool)
        else:
            dn = db[a, nc] + db.dtype.type(0)  # -0.0 -> +0.0
            o = np.argsort(dn, kind="stable")
            srt, order = dn[o], nc[o]
            k = np.searchsorted(srt, db[a, cols], side="right")  # first strictly farther
            st = k < nc.size
            first_largest = np.searchsorted(srt, srt[-1], side="left")
            ch = np.where(st, order[np.minimum(k, nc.size - 1)], order[first_largest])
            chosen[a, cols] = ch
            semi[a, cols] = st
        if parts is not None:
            dps.append(db[a, cols])
            dns.append(db[a, ch])
            sts.append(st)
    if parts is not None and dps:
        _add_sums(parts, m, np.concatenate(dps), np.concatenate(dns), np.concatenate(sts))


CHOICE = Step(
    "semihard_choice", "batch_semihard", choose,
    Kernel(_numba.semihard_choice(semihard_choice), inputs=("d", "neg", "term"), outputs=("index", "bool")),
)
"""``(d, neg, term) -> (chosen, semihard)``: ``chosen`` (B, B) indices of the negatives
(0 off-term), ``semihard`` whether the strict rule chose; not differentiable."""
