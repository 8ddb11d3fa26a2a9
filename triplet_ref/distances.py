"""Pairwise distances from the Gram matrix, with an exact zero diagonal and safe gradients."""
from __future__ import annotations

from .backends import computes_in_full_precision
from typing import Any

from .backends import Context, resolve
from .backends._base import check_choice
from .mining import SQDIST, run

__all__ = ["pairwise_distances", "METRICS"]

METRICS = ("euclidean", "sqeuclidean", "cosine")


@computes_in_full_precision
def pairwise_distances(embeddings: Any, ref_embeddings: Any = None, *, metric: str = "euclidean",
                       backend: Any = None):
    """All pairwise distances between the rows of ``embeddings``.

    With ``ref_embeddings`` ``(R, D)``: the ``(B, R)`` cross distances ``d(x_i, r_j)`` (no
    zero diagonal: the two sets are distinct samples; see :func:`cross_distance_matrix`).

    ===============  ====================================================================
    ``euclidean``    ``d(i, j) = ||x_i - x_j||_2``
    ``sqeuclidean``  ``d(i, j) = ||x_i - x_j||_2^2``
    ``cosine``       ``d(i, j) = 1 - <x_i, x_j> / (||x_i|| ||x_j||)``; a zero row has cosine 0
                     with every other row (so distance 1)
    ===============  ====================================================================

    For every metric ``d(i, i) == 0`` exactly, ``d >= 0`` and ``d`` is exactly symmetric.
    Gradients are finite everywhere; at ``d == 0`` (diagonal, duplicate rows) the
    euclidean gradient is 0 (a safe square root that leaves non-zero distances unbiased).

    The euclidean metrics use the Gram trick on rows shifted by the first row (distances
    do not change when a common offset is subtracted, and the shift removes most of the
    cancellation ``|x_i|^2 + |x_j|^2 - 2<x_i, x_j>`` suffers for embeddings far from the
    origin, while keeping dyadic inputs exact).

    Args:
      embeddings: ``(B, D)`` real floating array (NumPy, torch, JAX, CuPy,
        array-api-strict or a nested list).
      metric: ``"euclidean"`` (default), ``"sqeuclidean"`` or ``"cosine"``.
      backend: ``None`` keeps the embeddings' framework and device; a name or module
        converts NumPy/list input to that framework.

    Returns:
      ``(B, B)`` array of the embeddings' dtype on their device (float16/bfloat16 inputs
      are computed in float32 and cast back).
    """
    check_choice(metric, "metric", METRICS)
    ctx, x, _ = resolve(embeddings, None, backend)
    if ref_embeddings is not None:
        from .losses._pairs import resolve_reference

        r, _ = resolve_reference(ctx, x, ref_embeddings, None, labels_needed=False)
        return ctx.finish(cross_distance_matrix(ctx, x, r, metric))
    return ctx.finish(distance_matrix(ctx, x, metric))


def distance_matrix(ctx: Context, x, metric: str):
    """Pairwise distances of resolved, validated ``x`` (compute dtype) — the shared step
    every loss calls."""
    xp, be = ctx.xp, ctx.backend
    if metric == "cosine":
        sq = xp.sum(x * x, axis=1)
        norm = be.safe_sqrt(xp, sq)
        zero = xp.zeros((), dtype=x.dtype, device=ctx.device)
        one = xp.ones((), dtype=x.dtype, device=ctx.device)
        nonzero = norm > zero
        inv = xp.where(nonzero, one / xp.where(nonzero, norm, one), zero)
        xn = x * inv[:, None]
        g = xn @ xn.T
        # 1 - cos, symmetric, clamped to [0, 2] and exactly 0 on the diagonal
        half = xp.asarray(0.5, dtype=x.dtype, device=ctx.device)
        d = one - (g + g.T) * half
        two = xp.asarray(2.0, dtype=x.dtype, device=ctx.device)
        d = xp.minimum(d, two)
        return be.finish_sqdist(xp, d, sqrt=False)
    return run(SQDIST, ctx, x, metric == "sqeuclidean")


def gram_sqdist(ctx: Context, x, squared: bool):
    """The portable euclidean (``squared=False``) or squared distances of the rows of
    ``x``: the Gram formula (the portable implementation of :data:`triplet_ref.mining.SQDIST`)."""
    xp, be = ctx.xp, ctx.backend
    # shift by the first row: distances are translation invariant, the shift removes a
    # common offset (the Gram trick's cancellation grows with |x|²), and subtracting a
    # row keeps dyadic inputs exact (a mean would not), so exact ties stay ties
    xc = x - x[:1, :]
    G = xc @ xc.T
    # |x_i|² from the Gram diagonal, not from a separate sum: the same kernel computes
    # G_ii, G_jj and G_ij, so two equal rows give d² = 0 exactly instead of a rounding
    # residue ~eps·|x|² whose square root (~sqrt(eps)·|x|, 1e-2 in float32) would be a
    # spurious distance.  A copy, because a backend may update G in place.
    n = G.shape[0]
    sq = xp.astype(xp.reshape(G, (n * n,))[:: n + 1], G.dtype, copy=True)
    d2 = be.gram_to_sqdist(xp, G, sq)
    return be.finish_sqdist(xp, d2, sqrt=not squared)


def row_distances(ctx: Context, a, b, metric: str):
    """``d(a_i, b_i)`` for paired rows (the explicit-tuple losses): shape ``(N,)``.

    Computed from differences, not a Gram matrix, so it is exact up to rounding.
    """
    xp, be = ctx.xp, ctx.backend
    if metric == "cosine":
        zero = xp.zeros((), dtype=a.dtype, device=ctx.device)
        one = xp.ones((), dtype=a.dtype, device=ctx.device)
        na = be.safe_sqrt(xp, xp.sum(a * a, axis=1))
        nb = be.safe_sqrt(xp, xp.sum(b * b, axis=1))
        den = na * nb
        ok = den > zero
        cos = xp.where(ok, xp.sum(a * b, axis=1) / xp.where(ok, den, one), zero)
        two = xp.asarray(2.0, dtype=a.dtype, device=ctx.device)
        return xp.minimum(xp.maximum(one - cos, zero), two)
    diff = a - b
    d2 = xp.sum(diff * diff, axis=1)
    return be.safe_sqrt(xp, d2) if metric == "euclidean" else d2


def cross_distance_matrix(ctx: Context, x, r, metric: str):
    """Distances ``d(x_i, r_j)`` between the rows of ``x`` ``(B, D)`` and of a reference set
    ``r`` ``(R, D)`` (both resolved, in the compute dtype): shape ``(B, R)``.

    The Gram formula on rows shifted by ``x[0]`` (like :func:`distance_matrix`), clamped at
    0, with the safe square root. No entry is zero by definition: the two sets are distinct
    samples (docs/semantics.md, "Reference sets"). A reference row equal to an anchor is at
    a rounding residue ``~eps·|x|²`` of 0 in squared distance, not at exactly 0 (the square
    path gets its exact zeros from the Gram diagonal, which a cross product has not).
    """
    xp, be = ctx.xp, ctx.backend
    zero = xp.zeros((), dtype=x.dtype, device=ctx.device)
    one = xp.ones((), dtype=x.dtype, device=ctx.device)
    if metric == "cosine":
        def unit(a):
            norm = be.safe_sqrt(xp, xp.sum(a * a, axis=1))
            nz = norm > zero
            return a * xp.where(nz, one / xp.where(nz, norm, one), zero)[:, None]

        g = unit(x) @ unit(r).T
        two = xp.asarray(2.0, dtype=x.dtype, device=ctx.device)
        return xp.minimum(xp.maximum(one - g, zero), two)
    x0 = x[:1, :]
    xc, rc = x - x0, r - x0
    G = xc @ rc.T
    two = xp.asarray(2.0, dtype=x.dtype, device=ctx.device)
    d2 = xp.sum(xc * xc, axis=1)[:, None] + xp.sum(rc * rc, axis=1)[None, :] - two * G
    d2 = be.clamp_min0(xp, d2)
    return be.safe_sqrt(xp, d2) if metric == "euclidean" else d2
