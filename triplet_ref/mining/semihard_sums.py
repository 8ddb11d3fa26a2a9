"""The semi-hard loss's sums in one step: the choice (:mod:`.semihard`) and, in the same
kernel call, the pass over the terms that follows it.

For every term ``(a, p)`` (a positive pair whose anchor has a negative) with its chosen
negative ``n*`` (:data:`.semihard.CHOICE`)::

    arg(a, p) = (d(a, p) − d(a, n*)) + m,      l(a, p) = max(arg, 0)

the step returns ``total = Σ l`` (the loss's "sum"), ``active = #{arg > 0}`` (also
``∂total/∂m``), ``n_semi`` (the terms whose ``n*`` the strict rule chose), all 0-d of
``d``'s dtype, and ``chosen`` ``(B, R)`` (the index of ``n*``, 0 off-term).

Gradient: ``∂total/∂d(a, p) = 1`` and ``∂total/∂d(a, n*) −= 1`` for every active term
(``arg > 0``; at ``arg = 0`` exactly the derivative taken is 0, docs/semantics.md).

Two implementations: the portable array-API one (:func:`sums`: the choice step, a
row-wise gather of ``d(a, n*)`` and the hinge over ``(B, R)`` arrays) and the NumPy
kernel (:func:`semihard_forward` / :func:`semihard_backward`, numba body in
``_numba_kernels.py``): the choice kernel, then one pass over the terms only — no
``(B, R)`` gather, hinge or mask (the CPU backends run it natively; torch's backward is
then a scatter of the active terms instead of autograd through a ``(B, R)`` gather).
Each term is computed in ``d``'s dtype exactly as the portable formula computes it; the
sums accumulate in float64.
"""
from __future__ import annotations

import numpy as np

from ..losses._common import as_float, hinge, scalar
from . import _numba
from ._blocks import _quiet
from ._dispatch import Kernel, Step, run
from .semihard import CHOICE, choice_and_sums

__all__ = ["SUMS", "sums", "sums_linear", "semihard_forward", "semihard_backward"]


# --- portable (array API) -------------------------------------------------------------

def sums(ctx, d, neg, term, m):
    """``(total, active, n_semi, chosen)`` (see the module docstring); differentiable in
    ``d`` and ``m`` by the backend's autodiff."""
    xp, be = ctx.xp, ctx.backend
    zero = scalar(ctx, 0)
    chosen, semihard = run(CHOICE, ctx, d, neg, term)
    chosen = xp.astype(chosen, be.index_dtype(xp), copy=False)
    arg = d - be.take_rows(xp, d, chosen) + scalar(ctx, m)
    per_pair = xp.where(term, hinge(ctx, arg, soft=False), zero)
    active = xp.sum(as_float(ctx, term & (arg > zero)))
    return xp.sum(per_pair), active, xp.sum(as_float(ctx, semihard)), chosen


def sums_linear(ctx, d, neg, term, m, t, active, chosen):
    """The derivative of ``total`` in ``d`` along a tangent ``t`` ``(B, R)``:
    ``Σ_{active terms} t(a, p) − t(a, n*)`` (0-d).  ``total`` is piecewise linear in
    ``d``: bridges use this for second-order derivatives of the native kernel."""
    xp, be = ctx.xp, ctx.backend
    zero = scalar(ctx, 0)
    ch = xp.astype(chosen, be.index_dtype(xp), copy=False)
    arg = d - be.take_rows(xp, d, ch) + scalar(ctx, m)
    return xp.sum(xp.where(term & (arg > zero), t - be.take_rows(xp, t, ch), zero))


# --- the NumPy kernel ------------------------------------------------------------------

def _terms(d, term, chosen, margin):
    """The terms' rows, columns, chosen negatives and ``arg`` (in ``d``'s dtype)."""
    r, c = np.nonzero(term)
    n = chosen[r, c]
    arg = d[r, c] - d[r, n]
    arg += d.dtype.type(margin)
    return r, c, n, arg


@_quiet
def semihard_forward(d: np.ndarray, neg: np.ndarray, term: np.ndarray, margin):
    """``(total, active, n_semi, chosen)`` of ``d`` ``(R, C)`` (float) and the masks
    ``neg``, ``term`` ``(R, C)`` (bool): the choice kernel's NumPy body, which sums the
    terms as it chooses (:func:`.semihard.choice_and_sums`: no second pass over them)."""
    chosen, _, vals = choice_and_sums(d, neg, term, margin)
    return (*(np.asarray(v, dtype=d.dtype) for v in vals), chosen)


@_quiet
def semihard_backward(d: np.ndarray, neg: np.ndarray, term: np.ndarray, margin, grad,
                      active=None, chosen=None) -> np.ndarray:
    """``grad · ∂total/∂d`` ``(R, C)`` of ``d``'s dtype (``grad`` 0-d; ``chosen`` the
    forward's)."""
    g = d.dtype.type(np.asarray(grad).reshape(()))
    out = np.zeros(d.shape, dtype=d.dtype)
    r, c, n, arg = _terms(d, term, np.asarray(chosen), margin)
    on = arg > 0
    r, c, n = r[on], c[on], n[on]
    out[r, c] = g  # a term's own column is never a negative
    np.subtract.at(out, (r, n), g)  # several terms may share a negative
    return out


def _numba_forward(k, numpy_body, d, neg, term, margin):
    d, neg, term = _numba._c(d), _numba._c(neg), _numba._c(term)
    chosen, semi = CHOICE.kernel.forward.numba(d, neg, term)
    acc = np.zeros(3, dtype=np.float64)
    _numba._run(k.semihard_sums, d, term, _numba._c(chosen), _numba._c(semi), d.dtype.type(margin), acc)
    return (*(np.asarray(v, dtype=d.dtype) for v in acc), chosen)


def _numba_backward(k, numpy_body, d, neg, term, margin, grad, active=None, chosen=None):
    d, term = _numba._c(d), _numba._c(term)
    chosen = _numba._c(np.asarray(chosen, dtype=np.int64))
    out = np.zeros(d.shape, dtype=d.dtype)
    g = d.dtype.type(np.asarray(grad).reshape(()))
    _numba._run(k.semihard_grad, d, term, chosen, d.dtype.type(margin), g, out)
    return out


SUMS = Step(
    "semihard_sums", "batch_semihard", sums,
    Kernel(_numba.Accelerated(semihard_forward, _numba_forward), inputs=("d", "neg", "term", "margin"),
           outputs=("float", "float", "float", "index"),
           backward=_numba.Accelerated(semihard_backward, _numba_backward),
           saved=(1, 3), slopes={3: 1}, linear=sums_linear, scalars=(0, 1, 2)),
)
"""``(d, neg, term, margin) -> (total, active, n_semi, chosen)``: ``total`` 0-d,
differentiable in ``d`` and the margin (``∂total/∂m = active``); ``chosen`` ``(B, R)``."""
