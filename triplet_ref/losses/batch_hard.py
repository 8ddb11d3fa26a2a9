"""Batch-hard triplet loss (Hermans, Beyer and Leibe 2017)."""
from __future__ import annotations

from typing import Any

from ..backends import computes_in_full_precision
from ..mining import run
from ..mining.hardest import CHOICE as HARDEST
from ._common import as_float, count_true, finish, hinge, safe_divide, scalar
from ._pairs import batch_loss, prepare_pairs, reduce_pairs

__all__ = ["batch_hard"]


@computes_in_full_precision
@batch_loss(ref_note='; ``"none"`` and the info indices are then over the ``R`` reference rows')
def batch_hard(labels: Any, embeddings: Any, margin: float = 1.0, *, metric: str = "euclidean",
               soft: bool = False, reduction: str = "mean", return_info: bool = False,
               backend: Any = None, ref_embeddings: Any = None, ref_labels: Any = None,
               process_group: Any = None, axis_name: Any = None,
               chunk_size: int | None = None):
    """Batch-hard triplet loss: each anchor's hardest positive against its hardest negative.

    An anchor ``a`` is *valid* when it has at least one positive and one negative. For a
    valid anchor::

        hp(a) = max_{p: y_p = y_a, p != a} d(a, p)      (ties: smallest index)
        hn(a) = min_{n: y_n != y_a} d(a, n)             (ties: smallest index)
        l(a)  = h(hp(a) - hn(a) + margin)

    with ``h(x) = max(x, 0)``, or ``softplus(x)`` when ``soft=True`` (the margin is kept:
    pass ``margin=0`` for the soft margin of Hermans et al.). Memory O(B²): one masked
    max and min per row (the mining step :data:`triplet_ref.mining.HARDEST`: on CPU a
    NumPy kernel, one pass over each row).

    Args:
      labels: ``(B,)`` integer class labels (any integer dtype, any array kind).
      embeddings: ``(B, D)`` real floating array.
      margin: finite, ``>= 0``.
      metric: ``"euclidean"`` | ``"sqeuclidean"`` | ``"cosine"``.
      soft: softplus instead of the hinge.
      reduction: ``"mean"`` over valid anchors (0 when none), ``"sum"``, or ``"none"``
        for the ``(B,)`` vector (0 at invalid anchors).
      return_info: also return a dict with ``hardest_positive`` / ``hardest_negative``
        ``(B,)`` indices (-1 at invalid anchors), ``valid`` ``(B,)`` bool, ``num_valid``,
        ``fraction_positive`` (valid anchors with ``l > 0`` / valid anchors; every
        valid anchor with ``soft=True``),
        ``mean_hardest_positive_dist`` and ``mean_hardest_negative_dist`` (over valid
        anchors), all arrays of the embeddings' backend.
      backend: ``None`` (the embeddings' own) or a backend name/module.
      {scaling}

    Returns:
      0-d array (``(B,)`` for ``reduction="none"``) of the embeddings' dtype, on their
      device; with ``return_info``, ``(loss, info)``.
    """
    P = prepare_pairs(labels, embeddings, margin, metric, reduction, backend,
                      ref_embeddings, ref_labels, process_group, axis_name)
    ctx, x, d, m = P.ctx, P.x, P.d, P.margin
    xp, be = ctx.xp, ctx.backend
    # the hardest positive's and negative's index per row (ties: the smallest; no (B, R)
    # mask on the native path), then their distances gathered from d: the gradient
    # reaches exactly those two entries per row
    hp_idx, hn_idx, valid = run(HARDEST, ctx, d, P.y, P.Y, P.own_offset())
    idt = be.index_dtype(xp)
    hp_idx = xp.astype(hp_idx, idt, copy=False)
    hn_idx = xp.astype(hn_idx, idt, copy=False)
    hp = be.take_rows(xp, d, hp_idx[:, None])[:, 0]
    hn = be.take_rows(xp, d, hn_idx[:, None])[:, 0]

    zero = scalar(ctx, 0)
    arg = hp - hn + scalar(ctx, m)
    per_anchor = xp.where(valid, hinge(ctx, arg, soft), zero)
    num_valid = xp.sum(as_float(ctx, valid))
    loss = reduce_pairs(P, per_anchor, num_valid, reduction)

    info = None
    if return_info:
        minus1 = xp.asarray(-1, dtype=hp_idx.dtype, device=ctx.device)
        gsum = P.global_sum
        num_valid_g = gsum(num_valid)
        info = {
            "hardest_positive": xp.where(valid, hp_idx, minus1),
            "hardest_negative": xp.where(valid, hn_idx, minus1),
            "valid": valid,
            "num_valid": gsum(count_true(ctx, valid, dtype=hp_idx.dtype)),
            # with soft=True every valid anchor counts (softplus > 0 on all of R)
            "fraction_positive": ctx.finish(safe_divide(
                ctx, num_valid_g if soft else gsum(xp.sum(as_float(ctx, valid & (per_anchor > zero)))),
                num_valid_g)),
            "mean_hardest_positive_dist": ctx.finish(safe_divide(
                ctx, gsum(xp.sum(xp.where(valid, hp, zero))), num_valid_g)),
            "mean_hardest_negative_dist": ctx.finish(safe_divide(
                ctx, gsum(xp.sum(xp.where(valid, hn, zero))), num_valid_g)),
        }
    return finish(ctx, loss, x if P.nan_src is None else P.nan_src, info, return_info)
