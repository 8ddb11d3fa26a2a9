"""Anchors against a set of candidates: the batch itself, a reference set, or the global
batch of a data-parallel run.

Every batch loss calls :func:`prepare_pairs` instead of ``prepare``.  It returns a
:class:`Pairs`: the ``(B, R)`` distances from the anchors (the rows of ``embeddings``) to
the candidates, the positive and negative masks, and the communicator whose ``sum`` turns
a local partial sum into the global one (None on one process).

* no reference, no group: the candidates are the batch (``R = B``), ``(a, a)`` is not a pair;
* ``ref_embeddings`` / ``ref_labels``: the candidates are the reference rows, no pair is
  excluded (docs/semantics.md, "Reference sets");
* ``process_group`` (torch.distributed) / ``axis_name`` (JAX, inside ``shard_map`` or
  ``pmap``): the candidates are the global batch, gathered in rank order with a
  differentiable all-gather; ``(a, offset + a)`` — the anchor itself — is not a pair
  (docs/semantics.md, "Global-batch mining").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backends import Context, resolve
from ..backends._base import _as_backend_array, _check_embeddings, check_choice, check_margin, convert_labels
from ..distances import METRICS, cross_distance_matrix
from ._common import REDUCTIONS, as_float, prepare, safe_divide, scalar


@dataclass
class Pairs:
    ctx: Context
    x: Any            # the anchors (B, D), compute dtype
    d: Any            # (B, R) distances anchors → candidates
    pos: Any          # (B, R) bool: positive pairs (same label, not the same sample)
    neg: Any          # (B, R) bool: negative pairs (different label)
    margin: Any
    comm: Any = None  # .sum(ctx, partial) -> global sum (None: one process)
    same: Any = None   # (B, R) bool: the pair is the anchor itself (None: no such pair)
    nan_src: Any = None  # an array whose NaN-ness decides the loss's (default: x)

    @property
    def distributed(self) -> bool:
        return self.comm is not None

    def global_sum(self, v):
        return v if self.comm is None else self.comm.sum(self.ctx, v)

    def not_same(self):
        """(B, R) bool: every pair but the anchor itself."""
        xp = self.ctx.xp
        if self.same is None:
            return xp.ones(self.d.shape, dtype=xp.bool, device=self.ctx.device)
        return ~self.same


def resolve_reference(ctx: Context, x, ref_embeddings: Any, ref_labels: Any, *, labels_needed: bool = True):
    """``ref_embeddings`` (and ``ref_labels``) in ``ctx``: ``(r, ry)`` with ``r`` in the
    compute dtype.  Raises ValueError/TypeError naming the argument."""
    if labels_needed:
        if ref_embeddings is None:
            raise ValueError("ref_labels was given without ref_embeddings; pass both or neither")
        if ref_labels is None:
            raise ValueError("ref_embeddings was given without ref_labels; pass both or neither")
    from ..backends import backend_of

    native = backend_of(ref_embeddings) is ctx.backend
    r = _as_backend_array(ref_embeddings, ctx.backend, "ref_embeddings", device=ctx.device)
    _check_embeddings(ctx.xp, r, "ref_embeddings")
    if native and r.dtype != ctx.out_dtype:
        # Decision: an array of the embeddings' framework must have their dtype (no silent
        # promotion or rounding of a tensor that may carry gradients); lists and foreign
        # arrays are read in the embeddings' dtype, like labels are
        raise TypeError(f"ref_embeddings: dtype {r.dtype} differs from embeddings' {ctx.out_dtype}")
    if r.shape[1] != x.shape[1]:
        raise ValueError(
            f"ref_embeddings: {r.shape[1]} columns, but embeddings has {x.shape[1]}; they must match")
    if ctx.backend.device_of(r) != ctx.device:
        raise ValueError(f"ref_embeddings: on device {ctx.backend.device_of(r)}, embeddings on {ctx.device}")
    if r.dtype != ctx.dtype:
        r = ctx.xp.astype(r, ctx.dtype)
    ry = convert_labels(ctx, ref_labels, r.shape[0], name="ref_labels") if labels_needed else None
    return r, ry


def prepare_pairs(labels: Any, embeddings: Any, margin: Any, metric: str, reduction: str,
                  backend: Any, ref_embeddings: Any = None, ref_labels: Any = None,
                  process_group: Any = None, axis_name: Any = None) -> Pairs:
    """Validate the arguments and build the :class:`Pairs` of one call."""
    has_ref = ref_embeddings is not None or ref_labels is not None
    has_group = process_group is not None
    has_axis = axis_name is not None
    if not (has_ref or has_group or has_axis):
        ctx, x, d, pos, neg, m = prepare(labels, embeddings, margin, metric, reduction, backend)
        return Pairs(ctx, x, d, pos, neg, m)
    if has_group and has_axis:
        raise ValueError("process_group (torch.distributed) and axis_name (JAX) cannot both be given")
    if has_ref and (has_group or has_axis):
        raise ValueError(
            "ref_embeddings/ref_labels cannot be combined with process_group/axis_name: the "
            "global batch is the reference set of a distributed call")
    check_choice(metric, "metric", METRICS)
    check_choice(reduction, "reduction", REDUCTIONS)
    check_margin(margin)
    ctx, x, y = resolve(embeddings, labels, backend)
    xp = ctx.xp
    if has_ref:
        r, ry = resolve_reference(ctx, x, ref_embeddings, ref_labels)
        d = cross_distance_matrix(ctx, x, r, metric)
        eq = y[:, None] == ry[None, :]
        bad = xp.any(xp.isnan(x)) | xp.any(xp.isnan(r))
        nan_src = xp.where(bad, scalar(ctx, float("nan")), scalar(ctx, 0))
        return Pairs(ctx, x, d, eq, ~eq, margin, nan_src=nan_src)

    from ..backends._scale import communicator

    comm = communicator(ctx.backend, process_group=process_group, axis_name=axis_name)
    X, Y, offset = comm.gather(ctx, x, y)
    d = cross_distance_matrix(ctx, x, X, metric)
    B, R = d.shape
    idt = offset.dtype
    rows = xp.arange(B, dtype=idt, device=ctx.device)
    cols = xp.arange(R, dtype=idt, device=ctx.device)
    same = cols[None, :] == (rows + offset)[:, None]
    # the anchor's own column: exactly 0 (the single-process diagonal), no pair
    d = xp.where(same, scalar(ctx, 0), d)
    eq = Y[None, :] == y[:, None]
    # NaN anywhere in the global batch: a global count, so that every rank agrees (and JAX
    # sees a replicated value)
    bad = comm.sum(ctx, as_float(ctx, xp.any(xp.isnan(x)))) > scalar(ctx, 0)
    nan_src = xp.where(bad, scalar(ctx, float("nan")), scalar(ctx, 0))
    return Pairs(ctx, x, d, eq & ~same, ~eq, margin, comm=comm, same=same, nan_src=nan_src)


def reduce_pairs(P: Pairs, per_term, count, reduction: str):
    """``sum`` → Σ, ``mean`` → Σ / count (0 when count is 0), ``none`` → the local array;
    Σ and count are global sums in a distributed call (equal on every rank)."""
    ctx, xp = P.ctx, P.ctx.xp
    if reduction == "none":
        return per_term
    total = P.global_sum(xp.sum(per_term))
    if reduction == "sum":
        return total
    return safe_divide(ctx, total, P.global_sum(as_float(ctx, count)))
