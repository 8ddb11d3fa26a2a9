"""Contrastive losses (Hadsell, Chopra and LeCun 2006): online pairs and explicit pairs."""
from __future__ import annotations

from typing import Any

from ..backends import resolve_many
from ..backends._base import check_choice, check_margin
from ..distances import row_distances
from ._common import REDUCTIONS, as_float, finish, reduce, safe_divide, scalar
from ._pairs import prepare_pairs, reduce_pairs

__all__ = ["batch_contrastive", "contrastive_loss"]


def _pair_terms(ctx, e2, e, same, m):
    """``same·e² + (1 − same)·max(m − e, 0)²`` for bool ``same``."""
    xp = ctx.xp
    gap = xp.maximum(scalar(ctx, m) - e, scalar(ctx, 0))
    return xp.where(same, e2, gap * gap)


def batch_contrastive(labels: Any, embeddings: Any, margin: float = 1.0, *,
                      reduction: str = "mean", return_info: bool = False, backend: Any = None,
                      ref_embeddings: Any = None, ref_labels: Any = None, process_group: Any = None,
                      axis_name: Any = None):
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
      ref_embeddings, ref_labels: a reference set ``(R, D)`` / ``(R,)``: the anchors (rows
        of ``embeddings``) pair with all of its rows, no pair being
        the same sample (docs/semantics.md, "Reference sets"); ``"mean"`` divides by ``B·R`` and ``"none"`` is ``(B, R)``.
      process_group: a ``torch.distributed`` process group (torch), or
      axis_name: a JAX mapped axis name (inside ``shard_map`` / ``pmap``): mine the local
        anchors against the global batch (all ranks' rows in rank order). ``"mean"`` /
        ``"sum"`` and the info counts are those of the single-process loss on the
        concatenated batch, on every rank; ``"none"`` is this rank's rows against the
        global batch (docs/semantics.md, "Global-batch mining"; docs/scaling.md).
    """
    P = prepare_pairs(labels, embeddings, margin, "sqeuclidean", reduction, backend,
                      ref_embeddings, ref_labels, process_group, axis_name)
    ctx, x, d2, pos, neg, m = P.ctx, P.x, P.d, P.pos, P.neg, P.margin
    xp, be = ctx.xp, ctx.backend
    e = be.safe_sqrt(xp, d2)
    half = scalar(ctx, 0.5)
    zero = scalar(ctx, 0)
    per_pair = xp.where(pos | neg, half * _pair_terms(ctx, d2, e, pos, m), zero)
    B, R = d2.shape
    if P.same is not None:
        count = scalar(ctx, B * (R - 1))  # the global batch: every pair but the anchor's own
    elif ref_embeddings is not None:
        count = scalar(ctx, B * R)  # a reference set: every pair
    else:
        count = scalar(ctx, B * (B - 1))  # the batch itself: every pair but the diagonal
    loss = reduce_pairs(P, per_pair, count, reduction)
    info = None
    if return_info:
        idt = be.index_dtype(xp)
        count_g = P.global_sum(count)
        info = {
            "num_valid": xp.astype(count_g, idt),
            "fraction_positive": ctx.finish(safe_divide(
                ctx, P.global_sum(xp.sum(as_float(ctx, per_pair > zero))), count_g)),
        }
    return finish(ctx, loss, x if P.nan_src is None else P.nan_src, info, return_info)


def contrastive_loss(x1: Any, x2: Any, same: Any, margin: float = 1.0, *,
                     reduction: str = "mean", backend: Any = None):
    """Contrastive loss of explicit pairs of rows.

    ``l_i = same_i · e_i² + (1 − same_i) · max(margin − e_i, 0)²`` with
    ``e_i = ||x1_i − x2_i||_2``.

    Args:
      x1, x2: ``(N, D)`` real floating arrays of the same dtype.
      same: ``(N,)`` bool or integer 0/1 array: whether the pair is of one class.
      margin: finite, ``>= 0``.
      reduction: ``"mean"`` = ½ · mean over rows, ``"sum"`` = ½ · Σ, ``"none"`` = ½ · l, shape (N,).
      backend: ``None`` (``x1``'s own) or a backend name/module.
    """
    check_choice(reduction, "reduction", REDUCTIONS)
    check_margin(margin)
    ctx, (a, b) = resolve_many([(x1, "x1"), (x2, "x2")], backend)
    xp = ctx.xp
    same_b = _as_bool(ctx, same, a.shape[0])
    d2 = row_distances(ctx, a, b, "sqeuclidean")
    e = ctx.backend.safe_sqrt(xp, d2)
    per_row = scalar(ctx, 0.5) * _pair_terms(ctx, d2, e, same_b, margin)
    loss = reduce(ctx, per_row, scalar(ctx, a.shape[0]), reduction)
    nan = xp.any(xp.isnan(a)) | xp.any(xp.isnan(b))
    return ctx.finish(xp.where(nan, scalar(ctx, float("nan")), loss))


def _as_bool(ctx, same, n):
    """``same`` as a bool array in the context: bool, or integers that are 0 or 1."""
    import numpy as np

    from ..backends import backend_of

    xp = ctx.xp
    own = backend_of(same)
    if own is not None and own is not ctx.backend:
        same = ctx.backend.from_numpy(own.to_numpy(same), device=ctx.device)
    elif own is None:
        arr = np.asarray(same)
        if arr.dtype == object:
            raise TypeError("same: expected a bool or 0/1 integer array")
        same = ctx.backend.from_numpy(arr, device=ctx.device)
    if same.ndim != 1 or same.shape[0] != n:
        raise ValueError(f"same: expected shape ({n},), got {tuple(same.shape)}")
    if xp.isdtype(same.dtype, "bool"):
        return same
    if not xp.isdtype(same.dtype, "integral"):
        raise TypeError(f"same: expected a bool or integer 0/1 array, got dtype {same.dtype}")
    return same != xp.zeros((), dtype=same.dtype, device=ctx.device)
