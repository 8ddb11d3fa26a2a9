"""Triplet loss of explicit (anchor, positive, negative) rows — the offline form."""
from __future__ import annotations

from ..backends import computes_in_full_precision
from typing import Any

from ..backends import resolve_many
from ..backends._base import check_choice, check_margin
from ..distances import METRICS, row_distances
from ._common import REDUCTIONS, hinge, propagate_nan, reduce, scalar

__all__ = ["triplet_loss"]


@computes_in_full_precision
def triplet_loss(anchor: Any, positive: Any, negative: Any, margin: float = 1.0, *,
                 metric: str = "euclidean", soft: bool = False, reduction: str = "mean",
                 backend: Any = None):
    """Triplet loss of given triplets of rows.

    ``l_i = h(d(anchor_i, positive_i) − d(anchor_i, negative_i) + margin)`` with
    ``h(x) = max(x, 0)`` (``softplus`` when ``soft=True``). The squared form of
    FaceNet is ``metric="sqeuclidean"``.

    Args:
      anchor, positive, negative: ``(N, D)`` real floating arrays, same dtype and shape.
      margin: finite, ``>= 0``. metric: ``"euclidean"`` | ``"sqeuclidean"`` | ``"cosine"``.
      reduction: ``"mean"`` over rows, ``"sum"``, or ``"none"`` for the ``(N,)`` vector.
      backend: ``None`` (``anchor``'s own) or a backend name/module.

    Returns:
      0-d array (``(N,)`` for ``"none"``) of the inputs' dtype on their device.
    """
    check_choice(metric, "metric", METRICS)
    check_choice(reduction, "reduction", REDUCTIONS)
    check_margin(margin)
    ctx, (a, p, n) = resolve_many([(anchor, "anchor"), (positive, "positive"), (negative, "negative")], backend)
    xp = ctx.xp
    dap = row_distances(ctx, a, p, metric)
    dan = row_distances(ctx, a, n, metric)
    per_row = hinge(ctx, dap - dan + scalar(ctx, margin), soft)
    loss = reduce(ctx, per_row, scalar(ctx, a.shape[0]), reduction)
    return ctx.finish(propagate_nan(ctx, loss, a, p, n))
