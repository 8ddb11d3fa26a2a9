"""Contrastive losses (Hadsell, Chopra and LeCun 2006): online pairs and explicit pairs."""
from __future__ import annotations

from ..backends import computes_in_full_precision
from typing import Any

from ..backends import resolve_many
from ..backends._base import check_choice, check_margin
from ..distances import row_distances
from ._common import (REDUCTIONS, as_float, count_dtype, finish, propagate_nan, reduce,
                      safe_divide, scalar)
from ..mining import run
from ..mining.contrastive import SUMS, pair_terms
from ._pairs import batch_loss, prepare_pairs, reduce_pairs

__all__ = ["batch_contrastive", "contrastive_loss"]


def _pair_terms(ctx, e2, e, same, m):
    """``same·e² + (1 − same)·max(m − e, 0)²``: ``same`` a bool mask (a select), or a
    floating array used as given in the formula (contrastive_loss's ``same``)."""
    xp = ctx.xp
    gap = xp.maximum(scalar(ctx, m) - e, scalar(ctx, 0))
    if xp.isdtype(same.dtype, "bool"):
        return xp.where(same, e2, gap * gap)
    return same * e2 + (scalar(ctx, 1) - same) * (gap * gap)


@computes_in_full_precision
@batch_loss(ref_note='; ``"mean"`` divides by ``B·R`` and ``"none"`` is ``(B, R)``')
def batch_contrastive(labels: Any, embeddings: Any, margin: float = 1.0, *,
                      reduction: str = "mean", return_info: bool = False, backend: Any = None,
                      ref_embeddings: Any = None, ref_labels: Any = None, process_group: Any = None,
                      axis_name: Any = None, chunk_size: int | None = None):
    """Contrastive loss over every ordered pair ``(i, j)``, ``i != j``, of the batch.

    With ``e = ||x_i - x_j||_2`` (always euclidean)::

        l(i, j) = e²                     if y_i = y_j
                  max(margin - e, 0)²    otherwise

    Args:
      labels: ``(B,)`` integer labels; embeddings: ``(B, D)`` real floating array.
      margin: finite, ``>= 0``.
      reduction: ``"mean"`` = ½ · mean over the B(B−1) terms (0 when B < 2);
        ``"sum"`` = ½ · Σ; ``"none"`` = the ``(B, B)`` matrix ½·l (0 on the diagonal).
      return_info: also return ``num_valid`` (the number of terms, B(B−1)) and
        ``fraction_positive`` (terms with ``l > 0`` over terms; 0 when there is none).
      backend: ``None`` (the embeddings' own) or a backend name/module.
      {scaling}
    """
    P = prepare_pairs(labels, embeddings, margin, "sqeuclidean", reduction, backend,
                      ref_embeddings, ref_labels, process_group, axis_name)
    ctx, x, d2, pos, neg, m = P.ctx, P.x, P.d, P.pos, P.neg, P.margin
    xp = ctx.xp
    zero = scalar(ctx, 0)
    B, R = d2.shape
    # every pair but the anchor itself: B(B − 1) for the batch, B·R against a reference
    # set, B_local·(B_global − 1) per rank of a global batch
    # xp.full, not asarray: a symbolic B (torch.compile(dynamic=True)) stays symbolic
    count = xp.full((), P.num_pairs(), dtype=ctx.dtype, device=ctx.device)
    if reduction == "none":
        terms, _ = pair_terms(ctx, d2, pos, neg, m)
        n_pos = xp.sum(as_float(ctx, terms > zero)) if return_info else None
    else:
        # one pass from d² to the sum (a fused native kernel on CPU: mining.CONTRASTIVE_SUMS);
        # reduce_pairs of the 0-d sum: the global sum, the mean, a chunked block's count
        terms, _, n_pos = run(SUMS, ctx, d2, pos, neg, scalar(ctx, m))
    loss = reduce_pairs(P, terms, count, reduction)
    info = None
    if return_info:
        count_g = P.global_sum(count)
        n_terms = (B + 1) * R  # a bound on the global count (R = the global batch when distributed)
        info = {
            "num_valid": xp.astype(count_g, count_dtype(ctx, n_terms)),
            "fraction_positive": ctx.finish(safe_divide(ctx, P.global_sum(n_pos), count_g)),
        }
    return finish(ctx, loss, x if P.nan_src is None else P.nan_src, info, return_info)


@computes_in_full_precision
def contrastive_loss(x1: Any, x2: Any, same: Any, margin: float = 1.0, *,
                     reduction: str = "mean", backend: Any = None):
    """Contrastive loss of explicit pairs of rows.

    ``l_i = same_i · e_i² + (1 − same_i) · max(margin − e_i, 0)²`` with
    ``e_i = ||x1_i − x2_i||_2``.

    Args:
      x1, x2: ``(N, D)`` real floating arrays of the same dtype.
      same: ``(N,)`` bool, integer or floating array, used as given in the formula (1/True:
        the pair is of one class; other values are not checked, as a jitted call cannot
        check values: ``same=2`` weighs ``e²`` twice and ``max(m − e, 0)²`` by −1).
      margin: finite, ``>= 0``.
      reduction: ``"mean"`` = ½ · mean over rows, ``"sum"`` = ½ · Σ, ``"none"`` = ½ · l, shape (N,).
      backend: ``None`` (``x1``'s own) or a backend name/module.
    """
    check_choice(reduction, "reduction", REDUCTIONS)
    check_margin(margin)
    ctx, (a, b) = resolve_many([(x1, "x1"), (x2, "x2")], backend)
    xp = ctx.xp
    s = _as_weights(ctx, same, a.shape[0])
    d2 = row_distances(ctx, a, b, "sqeuclidean")
    e = ctx.backend.safe_sqrt(xp, d2)
    per_row = scalar(ctx, 0.5) * _pair_terms(ctx, d2, e, s, margin)
    loss = reduce(ctx, per_row, scalar(ctx, a.shape[0]), reduction)
    inputs = (a, b) if xp.isdtype(s.dtype, "bool") else (a, b, s)
    return ctx.finish(propagate_nan(ctx, loss, *inputs))


def _as_weights(ctx, same, n):
    """``same`` in the context: a bool array stays a mask; integer and floating values are
    used as given, as an array of the compute dtype (``same=2`` is 2, not True)."""
    from ..backends import backend_of
    from ..backends._base import host_array

    xp, be = ctx.xp, ctx.backend
    own = backend_of(same)
    if own is not None and own is not be:
        if own.carries_grad(same):
            raise TypeError(f"same: a {own.name} array that carries gradients cannot be converted "
                            f"to backend={be.name!r}; pass it as a {be.name} array")
        same = be.from_numpy(own.to_numpy(same), device=ctx.device)
    elif own is None:
        arr = host_array(same, "same")
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"same: expected a bool, integer or floating array, got dtype {arr.dtype}")
        same = be.from_numpy(arr, device=ctx.device)
    if same.ndim != 1 or same.shape[0] != n:
        raise ValueError(f"same: expected shape ({n},), got {tuple(same.shape)}")
    if xp.isdtype(same.dtype, "bool"):
        return same
    if not (xp.isdtype(same.dtype, "integral") or xp.isdtype(same.dtype, "real floating")):
        raise TypeError(f"same: expected a bool, integer or floating array, got dtype {same.dtype}")
    return xp.astype(same, ctx.dtype)
