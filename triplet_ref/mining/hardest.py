"""The batch-hard choice: per anchor row, its hardest positive and its hardest negative.

For the ``(B, R)`` distances ``d`` from the anchors (labels ``y``, ``(B,)``) to the
candidates (labels ``Y``, ``(R,)``), anchor ``a``'s own column (excluded as a positive)
being ``a + offset`` (none when that is not in ``[0, R)``: a reference set passes
``offset = R``)::

    positives P(a) = {j : Y[j] = y[a], j ≠ a + offset},   negatives N(a) = {j : Y[j] ≠ y[a]}
    hp(a) = argmax_{j ∈ P(a)} d(a, j),     hn(a) = argmin_{j ∈ N(a)} d(a, j)
    valid(a) = P(a) ≠ ∅ and N(a) ≠ ∅

ties to the smallest index; a NaN distance wins (the first NaN, like ``numpy.argmax``);
``hp`` / ``hn`` are 0 where ``P(a)`` / ``N(a)`` is empty.  The step returns the indices
(the index dtype) and ``valid`` (bool), all ``(B,)``; it is not differentiable: the loss
gathers ``d(a, hp(a))`` and ``d(a, hn(a))`` from ``d`` itself, so the gradient is the
backend's scatter to those two entries per row.

Two implementations: the portable array-API one (:func:`choose`: the label masks, a
masked ``argmax`` / ``argmin`` per row) and the NumPy kernel (:func:`hardest`: row
blocks of the same formulas; numba body in ``_numba_kernels.py``: one pass over each
row, no ``(B, R)`` temporary).  The CPU backends run the kernel natively (see
:mod:`triplet_ref.mining`): torch's reductions over ``(B, R)`` bool masks were most of
its forward.
"""
from __future__ import annotations

import numpy as np

from ..losses._common import scalar
from . import _numba
from ._blocks import _quiet
from ._dispatch import Kernel, Step

__all__ = ["CHOICE", "choose", "hardest", "masks"]


# --- portable (array API) -------------------------------------------------------------

def masks(ctx, d, y, Y, offset):
    """``(pos, neg)`` ``(B, R)`` bool from the labels and the own-column offset."""
    xp = ctx.xp
    B, R = d.shape
    eq = y[:, None] == Y[None, :]
    idt = offset.dtype
    rows = xp.arange(B, dtype=idt, device=ctx.device)
    cols = xp.arange(R, dtype=idt, device=ctx.device)
    same = cols[None, :] == (rows + offset)[:, None]
    return eq & ~same, ~eq


def choose(ctx, d, y, Y, offset):
    """Portable batch-hard choice: ``(hp, hn, valid)``, ``(B,)`` each (see the module
    docstring)."""
    xp = ctx.xp
    pos, neg = masks(ctx, d, y, Y, offset)
    inf = scalar(ctx, float("inf"))
    valid = xp.any(pos, axis=1) & xp.any(neg, axis=1)
    # argmax/argmin return the first (smallest) index among ties on every backend
    hp = xp.argmax(xp.where(pos, d, -inf), axis=1)
    hn = xp.argmin(xp.where(neg, d, inf), axis=1)
    return hp, hn, valid


# --- the NumPy kernel ------------------------------------------------------------------

#: elements per row block of the NumPy body (its temporaries stay in cache)
_BLOCK = 1 << 16


@_quiet
def hardest(d: np.ndarray, y: np.ndarray, Y: np.ndarray, offset):
    """``(hp, hn, valid)``: ``(B,)`` int64, int64, bool, for ``d`` ``(B, R)`` float,
    ``y`` ``(B,)`` and ``Y`` ``(R,)`` integer labels and the 0-d own-column ``offset``.

    Row blocks of the portable formulas (the same ``where`` / ``argmax`` / ``argmin``, so
    the same ties and NaN rule); O(block) temporaries."""
    B, R = d.shape
    y, Y = np.asarray(y), np.asarray(Y)
    own = np.arange(B, dtype=np.int64) + np.int64(np.asarray(offset).reshape(()))
    hp = np.zeros(B, dtype=np.int64)
    hn = np.zeros(B, dtype=np.int64)
    valid = np.zeros(B, dtype=bool)
    if B == 0 or R == 0:
        return hp, hn, valid
    ninf, inf = d.dtype.type(-np.inf), d.dtype.type(np.inf)
    step = max(1, _BLOCK // R)
    for s in range(0, B, step):
        e = min(B, s + step)
        db = d[s:e]
        eq = y[s:e, None] == Y[None, :]
        has_neg = ~eq.all(axis=1)
        r = np.arange(e - s)
        c = own[s:e]
        mine = (c >= 0) & (c < R)
        eq[r[mine], c[mine]] = False  # the anchor itself: not a positive
        has_pos = eq.any(axis=1)
        hp[s:e] = np.where(eq, db, ninf).argmax(axis=1)
        eq[r[mine], c[mine]] = True  # nor a negative
        hn[s:e] = np.where(eq, inf, db).argmin(axis=1)
        valid[s:e] = has_pos & has_neg
    return hp, hn, valid


def _numba_forward(k, numpy_body, d, y, Y, offset):
    B, R = d.shape
    d = np.ascontiguousarray(d)  # read-only (a JAX buffer) is fine: no copy
    # labels as int64 (a bijection of every integer dtype: equality is kept), one
    # compiled variant; the rows' labels and own columns as (B, 1) so that the row
    # threads split them with d
    y = np.ascontiguousarray(np.asarray(y).astype(np.int64, copy=False).reshape(B, 1))
    Y = np.ascontiguousarray(np.asarray(Y).astype(np.int64, copy=False))
    own = (np.arange(B, dtype=np.int64) + np.int64(np.asarray(offset).reshape(()))).reshape(B, 1)
    hp = np.zeros((B, 1), dtype=np.int64)
    hn = np.zeros((B, 1), dtype=np.int64)
    valid = np.zeros((B, 1), dtype=bool)
    if B and R:
        keys = d.dtype == np.float32 and R < 0xFFFFFFFF  # the branch-free pass on 64-bit keys
        _numba._run_rows(k.hardest_keys if keys else k.hardest, d, y, Y, own, hp, hn, valid)
    return hp.reshape(B), hn.reshape(B), valid.reshape(B)


CHOICE = Step(
    "hardest", "batch_hard", choose,
    Kernel(_numba.Accelerated(hardest, _numba_forward), inputs=("d", "y", "Y", "offset"),
           outputs=("index", "index", "bool"), rows=(0, 1, 2)),
)
"""``(d, y, Y, offset) -> (hp, hn, valid)``: ``(B,)`` indices of each anchor's hardest
positive and hardest negative (0 where it has none) and whether it has both; not
differentiable."""
