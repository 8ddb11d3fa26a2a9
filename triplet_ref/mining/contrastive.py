"""The contrastive pair sums in one pass: from the squared distances and the label masks
to the loss's sum, its derivative in the margin and the number of positive terms.

With ``e = √d²`` and ``g = max(m − e, 0)``, each pair ``(a, j)`` holds the term::

    t(a, j) = ½·d²(a, j)    at a positive pair
              ½·g(a, j)²     at a negative pair
              0             elsewhere (the anchor itself)

and the step returns, all 0-d of ``d²``'s dtype::

    total  = Σ t                         (the loss's "sum")
    slope  = ∂total/∂m = Σ_negatives g
    n_pos  = #{(a, j): t(a, j) > 0}       (info: fraction_positive)

Gradient: ``∂total/∂d²(a, j) = ½`` at a positive pair, ``−g / (2e)`` at a negative one
(0 where ``e = 0``: the library's ``safe_sqrt`` rule), 0 elsewhere.

Two implementations: the portable array-API one (:func:`pair_sums`, from
:func:`pair_terms`, the ``(B, R)`` terms, which the loss's ``reduction="none"`` uses
directly) and the NumPy kernel (:func:`contrastive_forward` / :func:`contrastive_backward`,
numba body in ``_numba_kernels.py``): one pass over the pairs, no ``(B, R)`` temporary in
the forward (the CPU backends run it natively, see :mod:`triplet_ref.mining`; torch's
backward then is one ``(B, R)`` pass instead of autograd over several intermediates).
Each term is computed in ``d²``'s dtype exactly as the portable formula computes it; the
sums accumulate in float64.
"""
from __future__ import annotations

import numpy as np

from ..losses._common import as_float, scalar
from . import _numba
from ._blocks import _quiet
from ._dispatch import Kernel, Step

__all__ = ["SUMS", "pair_terms", "pair_sums", "contrastive_forward", "contrastive_backward"]


# --- portable (array API) -------------------------------------------------------------

def pair_terms(ctx, d2, pos, neg, m):
    """``(t, g)``: the ``(B, R)`` terms ``t`` (above) and ``g = max(m − e, 0)`` (all pairs)."""
    xp, be = ctx.xp, ctx.backend
    e = be.safe_sqrt(xp, d2)
    zero = scalar(ctx, 0)
    half = scalar(ctx, 0.5)
    gap = xp.maximum(scalar(ctx, m) - e, zero)
    t = xp.where(pos, half * d2, xp.where(neg, half * (gap * gap), zero))
    return t, gap


def pair_sums(ctx, d2, pos, neg, m):
    """``(total, slope, n_pos)``, 0-d arrays of the compute dtype (differentiable in ``d2``
    and ``m`` by the backend's autodiff)."""
    xp = ctx.xp
    t, gap = pair_terms(ctx, d2, pos, neg, m)
    zero = scalar(ctx, 0)
    return (xp.sum(t), xp.sum(xp.where(neg, gap, zero)), xp.sum(as_float(ctx, t > zero)))


def pair_sums_backward(ctx, d2, pos, neg, m, grad):
    """The gradients of ``grad · total`` in ``(d2, pos, neg, m)`` as array-API expressions
    (differentiable again: the bridges' second-order path)."""
    xp, be = ctx.xp, ctx.backend
    zero = scalar(ctx, 0)
    one = scalar(ctx, 1)
    e = be.safe_sqrt(xp, d2)
    gap = xp.maximum(scalar(ctx, m) - e, zero)
    live = e > zero
    inv = xp.where(live, one / (scalar(ctx, 2) * xp.where(live, e, one)), zero)  # d e / d d²
    g = xp.astype(grad, d2.dtype)
    gd = xp.where(pos, scalar(ctx, 0.5) * g, xp.where(neg, -(g * gap) * inv, zero))
    gm = xp.sum(xp.where(neg, g * gap, zero))
    gm = xp.astype(gm, m.dtype) if hasattr(m, "dtype") else gm
    return gd, None, None, gm


# --- the NumPy kernel ------------------------------------------------------------------

#: elements per row block of the NumPy body (its temporaries stay in cache)
_BLOCK = 1 << 16


def _blocks(d2):
    R, C = d2.shape
    step = max(1, _BLOCK // max(1, C))
    for s in range(0, R, step):
        yield slice(s, min(R, s + step))


@_quiet
def contrastive_forward(d2: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin):
    """``(total, slope, n_pos)`` (0-d arrays of ``d2``'s dtype; sums in float64) of
    ``d2`` ``(R, C)`` (float) and the masks ``pos``, ``neg`` ``(R, C)`` (bool)."""
    dt = d2.dtype.type
    m, half, zero = dt(margin), dt(0.5), dt(0)
    total = slope = 0.0
    n_pos = 0
    for sl in _blocks(d2):
        db, pb, nb = d2[sl], pos[sl], neg[sl]
        gap = np.sqrt(db)
        np.subtract(m, gap, out=gap)
        np.maximum(gap, zero, out=gap)  # NaN stays NaN
        t = gap * gap
        t *= half
        t = np.where(pb, db * half, np.where(nb, t, zero))
        total += float(np.add.reduce(t, axis=None, dtype=np.float64))
        slope += float(np.add.reduce(np.where(nb, gap, zero), axis=None, dtype=np.float64))
        n_pos += int(np.count_nonzero(t > zero))
    return tuple(np.asarray(v, dtype=d2.dtype) for v in (total, slope, n_pos))


@_quiet
def contrastive_backward(d2: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin, grad,
                         slope=None) -> np.ndarray:
    """``grad · ∂total/∂d2`` ``(R, C)`` of ``d2``'s dtype (``grad`` 0-d)."""
    dt = d2.dtype.type
    m, half, zero = dt(margin), dt(0.5), dt(0)
    g = dt(np.asarray(grad).reshape(()))
    two = dt(2)
    out = np.empty(d2.shape, dtype=d2.dtype)
    for sl in _blocks(d2):
        db, pb, nb = d2[sl], pos[sl], neg[sl]
        e = np.sqrt(db)
        gap = np.subtract(m, e)
        np.maximum(gap, zero, out=gap)
        gap *= -g
        live = e > zero
        den = np.where(live, e, dt(1))
        den *= two
        gap /= den
        out[sl] = np.where(pb, half * g, np.where(nb & live, gap, zero))
    return out


def _numba_forward(k, numpy_body, d2, pos, neg, margin):
    d2, pos, neg = _numba._c(d2), _numba._c(pos), _numba._c(neg)
    acc = np.zeros(3, dtype=np.float64)
    _numba._run(k.contrastive_sums, d2, pos, neg, d2.dtype.type(margin), acc)
    return tuple(np.asarray(v, dtype=d2.dtype) for v in acc)


def _numba_backward(k, numpy_body, d2, pos, neg, margin, grad, slope=None):
    d2, pos, neg = _numba._c(d2), _numba._c(pos), _numba._c(neg)
    out = np.empty(d2.shape, dtype=d2.dtype)
    g = d2.dtype.type(np.asarray(grad).reshape(()))
    _numba._run(k.contrastive_grad, d2, pos, neg, d2.dtype.type(margin), g, out)
    return out


SUMS = Step(
    "contrastive_sums", "batch_contrastive", pair_sums,
    Kernel(_numba.Accelerated(contrastive_forward, _numba_forward), inputs=("d2", "pos", "neg", "margin"),
           outputs=("float", "float", "float"),
           backward=_numba.Accelerated(contrastive_backward, _numba_backward),
           saved=(1,), slopes={3: 1}, scalars=(0, 1, 2), backward_ad=pair_sums_backward, fusible=True),
)
"""``(d2, pos, neg, margin) -> (total, slope, n_pos)``, 0-d: ``total`` differentiable in
``d2`` and the margin, ``slope = ∂total/∂m``, ``n_pos`` the number of positive terms."""
