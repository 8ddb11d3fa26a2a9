"""Batch-all triplet loss, in O(B²) memory without enumerating triplets."""
from __future__ import annotations

from typing import Any

from ._common import as_float, count_true, finish, safe_divide, scalar
from ._pairs import prepare_pairs, reduce_pairs

__all__ = ["batch_all"]

# soft=True cannot be summed from sorted distances (softplus has no closed-form sum), so
# it is computed for blocks of anchors; a block holds at most this many elements
# (b × B × B), plus one B × B block when B² is larger: memory stays O(B²).
_SOFT_BLOCK_ELEMENTS = 1 << 22


def batch_all(labels: Any, embeddings: Any, margin: float = 1.0, *, metric: str = "euclidean",
              soft: bool = False, reduction: str = "mean", return_info: bool = False,
              backend: Any = None, ref_embeddings: Any = None, ref_labels: Any = None,
              process_group: Any = None, axis_name: Any = None):
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
      ref_embeddings, ref_labels: a reference set ``(R, D)`` / ``(R,)``: the anchors (rows
        of ``embeddings``) mine their positives and negatives among its rows, no pair being
        the same sample (docs/semantics.md, "Reference sets"); ``"none"`` is then ``(B, R)``.
      process_group: a ``torch.distributed`` process group (torch), or
      axis_name: a JAX mapped axis name (inside ``shard_map`` / ``pmap``): mine the local
        anchors against the global batch (all ranks' rows in rank order). ``"mean"`` /
        ``"sum"`` and the info counts are those of the single-process loss on the
        concatenated batch, on every rank; ``"none"`` is this rank's rows against the
        global batch (docs/semantics.md, "Global-batch mining"; docs/scaling.md).

    Returns:
      0-d array (or the ``(B, B)`` array) of the embeddings' dtype on their device;
      ``(loss, info)`` with ``return_info``.
    """
    P = prepare_pairs(labels, embeddings, margin, metric, reduction, backend,
                      ref_embeddings, ref_labels, process_group, axis_name)
    ctx, x, d, pos, neg, m = P.ctx, P.x, P.d, P.pos, P.neg, P.margin
    xp = ctx.xp
    idt = ctx.backend.index_dtype(xp)
    native = None if soft else ctx.backend.native_kernel("batch_all", d)
    if soft:
        per_pair, num_positive = _soft_rows(ctx, d, pos, neg, m)
    elif native is not None:
        per_pair, num_positive = native(d, pos, neg, m)
    else:
        per_pair, num_positive = _hinge_rows(ctx, d, pos, neg, m)
    num_pos_f = xp.sum(as_float(ctx, num_positive))
    loss = reduce_pairs(P, per_pair, num_pos_f, reduction)
    info = None
    if return_info:
        npos = count_true(ctx, pos, axis=1)
        nneg = count_true(ctx, neg, axis=1)
        num_valid = P.global_sum(xp.sum(npos * nneg))
        total_pos = P.global_sum(xp.sum(xp.astype(num_positive, idt)))
        info = {
            "num_valid": num_valid,
            "num_positive": total_pos,
            "fraction_positive": ctx.finish(safe_divide(
                ctx, as_float(ctx, total_pos), as_float(ctx, num_valid))),
        }
    return finish(ctx, loss, x if P.nan_src is None else P.nan_src, info, return_info)


def _hinge_rows(ctx, d, pos, neg, m):
    """``L[a, p]`` and the per-pair count of positive triplets, from sorted negatives."""
    xp, be = ctx.xp, ctx.backend
    B = d.shape[0]
    zero = scalar(ctx, 0)
    inf = scalar(ctx, float("inf"))
    idt = be.index_dtype(xp)
    nneg = count_true(ctx, neg, axis=1)

    # negatives ascending, +inf after them (the sort is differentiable)
    srt = be.sort_rows(xp, xp.where(neg, d, inf))
    col = xp.arange(B, dtype=idt, device=ctx.device)
    real = col[None, :] < nneg[:, None]
    # shift each row by its smallest negative: the prefix sums stay small, which keeps
    # float32 cancellation in c·v − Σ d(a, n) low; the shift cancels exactly in L
    has_neg = nneg > xp.zeros((), dtype=idt, device=ctx.device)
    base = xp.where(has_neg, srt[:, 0], zero)
    shifted = xp.where(real, srt - base[:, None], zero)
    prefix = xp.cumulative_sum(shifted, axis=1, include_initial=True)  # (B, B + 1)

    v = d + scalar(ctx, m)
    count = be.searchsorted_rows(xp, srt, v, side="left", where=pos)  # #{n: d(a,n) < v}
    count = xp.where(pos, xp.astype(count, idt), xp.zeros((), dtype=idt, device=ctx.device))
    below = be.take_rows(xp, prefix, count)
    cf = as_float(ctx, count)
    per_pair = xp.where(pos, cf * (v - base[:, None]) - below, zero)
    # Σ (v − d) over the counted negatives is ≥ 0; rounding must not make it negative
    per_pair = xp.maximum(per_pair, zero)
    return per_pair, count


def _soft_rows(ctx, d, pos, neg, m):
    """softplus version: blocks of anchors, each ``(b, B, B)`` with b·B² ≤ the budget."""
    xp, be = ctx.xp, ctx.backend
    B = d.shape[0]
    zero = scalar(ctx, 0)
    idt = be.index_dtype(xp)
    blk = max(1, min(B, _SOFT_BLOCK_ELEMENTS // (B * B)))
    rows, counts = [], []
    for start in range(0, B, blk):
        stop = min(B, start + blk)
        da = d[start:stop, :]
        t = da[:, :, None] - da[:, None, :] + scalar(ctx, m)  # (b, p, n)
        mask = pos[start:stop, :, None] & neg[start:stop, None, :]
        lt = xp.where(mask, be.softplus(xp, t), zero)
        rows.append(xp.sum(lt, axis=2))
        # softplus > 0 on all of R: every valid triplet is positive (docs/semantics.md)
        counts.append(xp.sum(xp.astype(mask, idt), axis=2))
    if len(rows) == 1:
        return rows[0], counts[0]
    return xp.concat(rows, axis=0), xp.concat(counts, axis=0)
