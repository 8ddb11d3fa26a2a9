"""Batch-all triplet loss, in O(B²) memory without enumerating triplets."""
from __future__ import annotations

from ..backends import computes_in_full_precision
from typing import Any

from ..mining import run
from ..mining.batch_all import HINGE, SOFT
from ._common import as_float, count_dtype, count_true, finish, safe_divide, scalar
from ._pairs import batch_loss, prepare_pairs, reduce_pairs

__all__ = ["batch_all"]

@computes_in_full_precision
@batch_loss(ref_note='; ``"none"`` is then ``(B, R)``')
def batch_all(labels: Any, embeddings: Any, margin: float = 1.0, *, metric: str = "euclidean",
              soft: bool = False, reduction: str = "mean", return_info: bool = False,
              backend: Any = None, ref_embeddings: Any = None, ref_labels: Any = None,
              process_group: Any = None, axis_name: Any = None,
              chunk_size: int | None = None):
    """Batch-all triplet loss over every valid triplet of the batch.

    Valid triplets are ``(a, p, n)`` with ``a != p``, ``y_a = y_p`` and ``y_a != y_n``::

        l(a, p, n) = h(d(a, p) - d(a, n) + margin)

    with ``h(x) = max(x, 0)`` (or ``softplus(x)`` when ``soft=True``). A triplet is
    *positive* when ``l > 0`` (with ``soft=True`` every valid triplet: softplus > 0).

    How: for each anchor row the negative distances are sorted once; for a positive pair
    with threshold ``v = d(a, p) + margin`` a row-wise search gives the number ``c`` of
    negatives with ``d(a, n) < v`` and a prefix sum their total, so
    ``L[a, p] = c * v - sum_{d(a,n) < v} d(a, n)``: O(B² log B) time, O(B²) memory, no
    data-dependent shapes (the count follows the oracle's ``d(a,p) − d(a,n) + m > 0``
    exactly, ties included). ``soft=True`` has no such closed form: the native kernel
    (CPU) makes one pass over the anchor's row per positive, O(B²·K̄) time for K̄
    positives per anchor on average; the portable path (GPU) likewise, one pass per
    positive slot: O(B²·K̄) with known labels, O(B²·K_max) under ``jax.jit`` (O(B²)
    memory; O(B³) time only under a tracing compiler other than JAX's).

    Args:
      labels: ``(B,)`` integer labels; embeddings: ``(B, D)`` real floating array.
      margin: finite, ``>= 0``. metric: ``"euclidean"`` | ``"sqeuclidean"`` | ``"cosine"``.
      soft: softplus instead of the hinge.
      reduction: ``"mean"`` = Σ l / #positive triplets (0 when there is none); ``"sum"``;
        ``"none"`` = the ``(B, B)`` matrix ``L[a, p] = Σ_n l(a, p, n)`` (0 off positive pairs).
      return_info: also return ``{"num_valid", "num_positive", "fraction_positive"}``
        (``fraction_positive = num_positive / num_valid``, 0 when no valid triplet).
      backend: ``None`` (the embeddings' own) or a backend name/module.
      {scaling}

    Returns:
      0-d array (or the ``(B, B)`` array) of the embeddings' dtype on their device;
      ``(loss, info)`` with ``return_info``.
    """
    P = prepare_pairs(labels, embeddings, margin, metric, reduction, backend,
                      ref_embeddings, ref_labels, process_group, axis_name)
    ctx, x, d, pos, neg, m = P.ctx, P.x, P.d, P.pos, P.neg, P.margin
    xp = ctx.xp
    idt = ctx.backend.index_dtype(xp)
    # the soft step also returns ∂L/∂m (for the native bridges); the loss needs (L, count)
    per_pair, num_positive = run(SOFT if soft else HINGE, ctx, d, pos, neg, scalar(ctx, m))[:2]
    # the number of positive triplets, exact: the triplet counts grow like B³, so int64
    # (or float32 where the backend has no 64-bit integer, JAX's 32-bit mode), never a
    # 32-bit sum that wraps around; one pass, no (B, R) temporary of another dtype (the
    # backend's integer sum: torch's CPU one is a scalar loop, ~40% of the forward)
    cdt = count_dtype(ctx)
    num_pos = ctx.backend.sum_ints(xp, num_positive, cdt)
    loss = reduce_pairs(P, per_pair, num_pos, reduction)
    info = None
    if return_info:
        npos = count_true(ctx, pos, axis=1)
        nneg = count_true(ctx, neg, axis=1)
        num_valid = P.global_sum(xp.sum(xp.astype(npos * nneg, cdt)))  # each row's product < B·R fits
        total_pos = P.global_sum(num_pos)
        info = {
            "num_valid": num_valid,
            "num_positive": total_pos,
            "fraction_positive": ctx.finish(safe_divide(
                ctx, as_float(ctx, total_pos), as_float(ctx, num_valid))),
        }
    return finish(ctx, loss, x if P.nan_src is None else P.nan_src, info, return_info)
