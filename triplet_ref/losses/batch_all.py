"""Batch-all triplet loss, in O(B²) memory without enumerating triplets."""
from __future__ import annotations

from typing import Any

from ..mining import run
from ..mining.batch_all import HINGE, SOFT
from ._common import as_float, count_true, finish, prepare, reduce, safe_divide, scalar

__all__ = ["batch_all"]

def batch_all(labels: Any, embeddings: Any, margin: float = 1.0, *, metric: str = "euclidean",
              soft: bool = False, reduction: str = "mean", return_info: bool = False,
              backend: Any = None):
    """Batch-all triplet loss over every valid triplet of the batch.

    Valid triplets are ``(a, p, n)`` with ``a != p``, ``y_a = y_p`` and ``y_a != y_n``::

        l(a, p, n) = h(d(a, p) - d(a, n) + margin)

    with ``h(x) = max(x, 0)`` (or ``softplus(x)`` when ``soft=True``). A triplet is
    *positive* when ``l > 0`` (with ``soft=True`` every valid triplet: softplus > 0).

    How: for each anchor row the negative distances are sorted once; for a positive pair
    with threshold ``v = d(a, p) + margin`` a row-wise search gives the number ``c`` of
    negatives with ``d(a, n) < v`` and a prefix sum their total, so
    ``L[a, p] = c * v - sum_{d(a,n) < v} d(a, n)``: O(B² log B) time, O(B²) memory, no
    data-dependent shapes. ``soft=True`` has no such closed form and costs O(B³) time
    (O(B²) memory, blocks of anchors).

    Args:
      labels: ``(B,)`` integer labels; embeddings: ``(B, D)`` real floating array.
      margin: finite, ``>= 0``. metric: ``"euclidean"`` | ``"sqeuclidean"`` | ``"cosine"``.
      soft: softplus instead of the hinge.
      reduction: ``"mean"`` = Σ l / #positive triplets (0 when there is none); ``"sum"``;
        ``"none"`` = the ``(B, B)`` matrix ``L[a, p] = Σ_n l(a, p, n)`` (0 off positive pairs).
      return_info: also return ``{"num_valid", "num_positive", "fraction_positive"}``
        (``fraction_positive = num_positive / num_valid``, 0 when no valid triplet).
      backend: ``None`` (the embeddings' own) or a backend name/module.

    Returns:
      0-d array (or the ``(B, B)`` array) of the embeddings' dtype on their device;
      ``(loss, info)`` with ``return_info``.
    """
    ctx, x, d, pos, neg, m = prepare(labels, embeddings, margin, metric, reduction, backend)
    xp = ctx.xp
    idt = ctx.backend.index_dtype(xp)
    per_pair, num_positive = run(SOFT if soft else HINGE, ctx, d, pos, neg, scalar(ctx, m))
    num_pos_f = xp.sum(as_float(ctx, num_positive))
    loss = reduce(ctx, per_pair, num_pos_f, reduction)
    info = None
    if return_info:
        npos = count_true(ctx, pos, axis=1)
        nneg = count_true(ctx, neg, axis=1)
        num_valid = xp.sum(npos * nneg)
        total_pos = xp.sum(xp.astype(num_positive, idt))
        info = {
            "num_valid": num_valid,
            "num_positive": total_pos,
            "fraction_positive": ctx.finish(safe_divide(
                ctx, as_float(ctx, total_pos), as_float(ctx, num_valid))),
        }
    return finish(ctx, loss, x, info, return_info)
