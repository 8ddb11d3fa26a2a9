"""Semi-hard triplet loss (Schroff, Kalenichenko and Philbin 2015, FaceNet)."""
from __future__ import annotations

from ..backends import computes_in_full_precision
from typing import Any

from ..mining import run
from ..mining.semihard import CHOICE
from ..mining.semihard_sums import SUMS
from ._common import as_float, count_dtype, count_true, finish, hinge, safe_divide, scalar
from ._pairs import batch_loss, prepare_pairs, reduce_pairs

__all__ = ["batch_semihard"]


@computes_in_full_precision
@batch_loss(ref_note='; ``"none"`` and ``semihard_negative`` are then ``(B, R)``')
def batch_semihard(labels: Any, embeddings: Any, margin: float = 1.0, *,
                   metric: str = "euclidean", reduction: str = "mean",
                   return_info: bool = False, backend: Any = None, ref_embeddings: Any = None,
                   ref_labels: Any = None, process_group: Any = None, axis_name: Any = None,
                   chunk_size: int | None = None):
    """Semi-hard triplet loss: each positive pair against its semi-hard negative.

    Terms are the positive pairs ``(a, p)`` whose anchor has at least one negative. The
    chosen negative is::

        n*(a, p) = argmin_{n: y_n != y_a, d(a, n) > d(a, p)} d(a, n)   (strictly greater)
                   or, when no such negative exists, argmax_{n: y_n != y_a} d(a, n)
        l(a, p)  = max(d(a, p) - d(a, n*) + margin, 0)

    ties going to the smallest index. How: one stable argsort of each anchor's negative
    distances and a row-wise search for ``d(a, p)``: O(B² log B) time, O(B²) memory,
    no data-dependent shapes.

    Args:
      labels: ``(B,)`` integer labels; embeddings: ``(B, D)`` real floating array.
      margin: finite, ``>= 0``. metric: ``"euclidean"`` | ``"sqeuclidean"`` | ``"cosine"``.
      reduction: ``"mean"`` over the terms (0 when there is none), ``"sum"``, or
        ``"none"``: the ``(B, B)`` matrix, 0 where ``(a, p)`` is not a term.
      return_info: also return ``semihard_negative`` ``(B, B)`` indices (-1 where not a
        term), ``num_valid`` (the number of terms), ``fraction_positive`` (terms with
        ``l > 0``) and ``fraction_semihard`` (terms whose ``n*`` came from the strict
        rule rather than the fallback).
      backend: ``None`` (the embeddings' own) or a backend name/module.
      {scaling}

    Returns:
      0-d array (or the ``(B, B)`` array) of the embeddings' dtype on their device;
      ``(loss, info)`` with ``return_info``.
    """
    P = prepare_pairs(labels, embeddings, margin, metric, reduction, backend,
                      ref_embeddings, ref_labels, process_group, axis_name)
    ctx, x, d, pos, neg, m = P.ctx, P.x, P.d, P.pos, P.neg, P.margin
    xp, be = ctx.xp, ctx.backend
    idt = be.index_dtype(xp)
    zero = scalar(ctx, 0)

    # the anchors with a negative: a row-wise any (the backend's: torch's bool row
    # reductions and broadcast ``&`` are scalar loops, its uint8 ones ~10-100x faster)
    term = be.and_rows(xp, pos, be.any_rows(xp, neg))

    num_terms = as_float(ctx, count_true(ctx, term))  # no (B, R) float temporary
    if reduction == "none":
        chosen, semihard = run(CHOICE, ctx, d, neg, term)
        chosen = xp.astype(chosen, idt, copy=False)
        d_neg = be.take_rows(xp, d, chosen)
        arg = d - d_neg + scalar(ctx, m)
        total = xp.where(term, hinge(ctx, arg, soft=False), zero)
        if return_info:
            n_active = xp.sum(as_float(ctx, term & (total > zero)))
            n_semi = xp.sum(as_float(ctx, semihard))
    else:
        # the choice and the terms' sums in one step (a fused native kernel on CPU:
        # mining.SEMIHARD_SUMS), no (B, R) gather or hinge after the choice
        total, n_active, n_semi, chosen = run(SUMS, ctx, d, neg, term, scalar(ctx, m))
    loss = reduce_pairs(P, total, num_terms, reduction)

    info = None
    if return_info:
        minus1 = xp.asarray(-1, dtype=idt, device=ctx.device)
        gsum = P.global_sum
        num_terms_g = gsum(num_terms)
        info = {
            "semihard_negative": xp.where(term, xp.astype(chosen, idt, copy=False), minus1),
            "num_valid": gsum(count_true(ctx, term, dtype=count_dtype(ctx, max(d.shape) ** 2))),
            "fraction_positive": ctx.finish(safe_divide(ctx, gsum(n_active), num_terms_g)),
            "fraction_semihard": ctx.finish(safe_divide(ctx, gsum(n_semi), num_terms_g)),
        }
    return finish(ctx, loss, x if P.nan_src is None else P.nan_src, info, return_info)
