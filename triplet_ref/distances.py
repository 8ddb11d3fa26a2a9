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
    every loss calls.

    Both metrics families take the fast Gram route (one matrix product) and then hand the
    few pairs the Gram formula cannot resolve to ``Backend.refine_sqdist``, which recomputes
    them from the coordinates (see ``close_pair_threshold``) and gives bitwise-identical
    rows identical distances (exactly 0 between them)."""
    xp, be = ctx.xp, ctx.backend
    if metric == "cosine":
        # cosine is scale invariant: scale every row by a power of two (exact) so its
        # largest entry is about 1; the squared norm then neither under- nor overflows
        xs = pow2_scaled_rows(xp, x)
        sq = xp.sum(xs * xs, axis=1)
        norm = be.safe_sqrt(xp, sq)
        zero = xp.zeros((), dtype=x.dtype, device=ctx.device)
        one = xp.ones((), dtype=x.dtype, device=ctx.device)
        nonzero = norm > zero
        inv = xp.where(nonzero, one / xp.where(nonzero, norm, one), zero)
        xn = xs * inv[:, None]
        g = xn @ xn.T
        # 1 - cos, symmetric, clamped to [0, 2] and exactly 0 on the diagonal
        half = xp.asarray(0.5, dtype=x.dtype, device=ctx.device)
        d = one - (g + g.T) * half
        two = xp.asarray(2.0, dtype=x.dtype, device=ctx.device)
        d = xp.minimum(d, two)
        # unit rows: the Gram error on 1 - cos is ~eps; the threshold is tau·(w_i + w_j) = tau
        w = xp.full((x.shape[0],), 0.5, dtype=x.dtype, device=ctx.device)
        d = be.refine_sqdist(xp, xs, d, w, close_pair_threshold(xp, x.dtype), cosine_pairs)
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
    # G_ii, G_jj and G_ij, so the residue of two equal rows is ~eps·|x|² at most (and the
    # refinement below then makes it exactly 0).  A copy, because a backend may update G
    # in place.
    sq = be.gram_diagonal(xp, G)
    # d² = sq_i + sq_j - 2 G_ij, the close pairs recomputed from x, clamped, diagonal 0
    return be.sqdist_from_gram(xp, x, G, sq, close_pair_threshold(xp, x.dtype),
                               sqeuclidean_pairs, not squared)


# ------------------------------------------------------------------ close-pair refinement
#: ``tau = CLOSE_PAIR_FACTOR · sqrt(eps)``: see ``close_pair_threshold``.
CLOSE_PAIR_FACTOR = 100.0
#: False only inside ``unrefined()`` (the benchmark's baseline): tau is then 0
_REFINE = [True]


class unrefined:
    """Context manager for measurement only (``benchmarks/accuracy.py``): inside it the
    close-pair refinement is switched off — ``close_pair_threshold`` returns 0, and every
    backend then skips the search as well as the recomputation — so the distances are the
    bare Gram formula's, as before the refinement existed.  Read when a function is traced
    (``jax.jit``) or called; not thread-safe; not public API."""

    def __enter__(self):
        _REFINE[0] = False
        return self

    def __exit__(self, *exc):
        _REFINE[0] = True


def close_pair_threshold(xp, dtype) -> float:
    """``tau``: a pair whose Gram-formula value ``d²_ij < tau·(w_i + w_j)`` is recomputed
    from the coordinates (``w`` = the shifted rows' squared norms; 1/2 for cosine).

    The Gram formula's absolute error on ``d²_ij`` is at most ``gamma·eps·(w_i + w_j)``,
    ``gamma`` measured at most 16 (``python tests/measure_tolerance.py --close`` and
    ``--close --dtype float64``: NumPy, torch and JAX matmuls, D up to 1024); every pair
    left to it therefore has relative error at most ``gamma·eps/tau = 0.16·sqrt(eps)`` on
    ``d²`` (5.5e-5 in float32, 2.4e-9 in float64; half that on ``d``), and every refined
    pair is a direct difference, accurate to a few eps.  tau is 0.035 in float32 (pairs
    closer than ~0.26 of their norm are refined) and 1.5e-6 in float64.  ``tau == 0``
    (only inside :class:`unrefined`) means: no refinement, no search.
    """
    if not _REFINE[0]:
        return 0.0  # ``unrefined()``: no pair is close, nothing is searched
    return CLOSE_PAIR_FACTOR * float(xp.finfo(dtype).eps) ** 0.5


def sqeuclidean_pairs(xp, a, b):
    """``|a - b|²`` over the last axis (broadcasting): the refinement's direct formula."""
    diff = a - b
    return xp.sum(diff * diff, axis=-1)


def cosine_pairs(xp, a, b):
    """``1 - cos(a, b)`` over the last axis (broadcasting), accurate for close pairs.

    ``1 - cos = |â - b̂|² / 2`` with ``â - b̂ = [(a - b) + b̂·(|b| − |a|)] / |a|`` and
    ``|b| − |a| = <b − a, b + a> / (|a| + |b|)``: no term cancels catastrophically, so the
    result is accurate relative to itself when a and b have similar norms (the error is
    ``~eps·|a − b| / |a|`` on ``|â − b̂|``).  A zero row gives 1.  ``a`` and ``b`` must not
    overflow when squared (``pow2_scaled_rows``).
    """
    sa = xp.sum(a * a, axis=-1)
    sb = xp.sum(b * b, axis=-1)
    one = xp.ones_like(sa)
    ok = (sa > 0) & (sb > 0)
    na = xp.sqrt(xp.where(ok, sa, one))
    nb = xp.sqrt(xp.where(ok, sb, one))
    diff = a - b
    delta = -xp.sum(diff * (a + b), axis=-1) / (na + nb)  # |b| - |a|, without cancellation
    u = (diff + b * (delta / nb)[..., None]) / na[..., None]
    return xp.where(ok, xp.sum(u * u, axis=-1) * 0.5, one)


def pow2_scaled_rows(xp, x):
    """Each row of ``x`` multiplied by a power of two (exactly) so that its largest
    absolute entry lies in [0.5, 4): the squared norm of a non-zero row then neither
    underflows nor overflows, and directions are unchanged bit for bit.  Zero rows stay
    zero; non-finite rows become NaN."""
    m = xp.max(xp.abs(x), axis=1)
    two = xp.full_like(m, 2.0)
    e = xp.floor(xp.log2(xp.where(m > 0, m, xp.ones_like(m))))
    e1 = xp.floor(e * 0.5)
    # two factors, each representable even for subnormal or huge rows
    s1 = xp.pow(two, -e1)
    s2 = xp.pow(two, e1 - e)
    return (x * s1[:, None]) * s2[:, None]


def row_distances(ctx: Context, a, b, metric: str):
    """``d(a_i, b_i)`` for paired rows (the explicit-tuple losses): shape ``(N,)``.

    Computed from differences, not a Gram matrix, so it is accurate to a few eps relative
    (cosine: ``cosine_pairs`` on rows rescaled by powers of two).
    """
    xp, be = ctx.xp, ctx.backend
    if metric == "cosine":
        # scale invariant and accurate for close pairs (see cosine_pairs); each row is
        # rescaled by its own power of two, which leaves the cosine unchanged
        d = cosine_pairs(xp, pow2_scaled_rows(xp, a), pow2_scaled_rows(xp, b))
        two = xp.full_like(d, 2.0)
        return xp.where(d > two, two, d)
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

        # rows rescaled by powers of two first: cosine is scale invariant (distance_matrix)
        g = unit(pow2_scaled_rows(xp, x)) @ unit(pow2_scaled_rows(xp, r)).T
        two = xp.asarray(2.0, dtype=x.dtype, device=ctx.device)
        return xp.minimum(xp.maximum(one - g, zero), two)
    x0 = x[:1, :] if x.shape[0] else r[:1, :]  # no anchor: one rank's share of a global batch
    xc, rc = x - x0, r - x0
    G = xc @ rc.T
    two = xp.asarray(2.0, dtype=x.dtype, device=ctx.device)
    d2 = xp.sum(xc * xc, axis=1)[:, None] + xp.sum(rc * rc, axis=1)[None, :] - two * G
    d2 = be.clamp_min0(xp, d2)
    return be.safe_sqrt(xp, d2) if metric == "euclidean" else d2
