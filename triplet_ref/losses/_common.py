"""What every loss shares: input resolution, the hinge, reductions, NaN propagation."""
from __future__ import annotations

from typing import Any

from ..backends import Context, resolve
from ..backends._base import check_choice, check_margin
from ..distances import METRICS, distance_matrix
from ..masks import label_masks

REDUCTIONS = ("mean", "sum", "none")


def prepare(labels: Any, embeddings: Any, margin: Any, metric: str, reduction: str, backend: Any):
    """Validate the arguments and compute the shared pieces.

    Returns ``(ctx, x, d, pos, neg, m)``: the context, the embeddings in the compute
    dtype, the ``(B, B)`` distances, the positive/negative masks and the margin.
    """
    check_choice(metric, "metric", METRICS)
    check_choice(reduction, "reduction", REDUCTIONS)
    check_margin(margin)
    ctx, x, y = resolve(embeddings, labels, backend)
    d = distance_matrix(ctx, x, metric)
    pos, neg = label_masks(ctx.xp, y, ctx.device)
    return ctx, x, d, pos, neg, margin


def scalar(ctx: Context, value, dtype=None):
    """A 0-d array on the context's device (never a bare Python scalar: compat-wrapped
    functions given Python scalars break ``torch.compile(fullgraph=True)``)."""
    dtype = dtype if dtype is not None else ctx.dtype
    if ctx.backend.is_native(value):
        # an array of the backend (a learnable margin): astype keeps it on the autograd
        # tape; asarray would copy a requires_grad tensor with a warning
        from array_api_compat import device, to_device

        out = ctx.xp.astype(value, dtype)
        return out if device(out) == ctx.device else to_device(out, ctx.device)
    return ctx.xp.asarray(value, dtype=dtype, device=ctx.device)


def hinge(ctx: Context, x, soft: bool):
    """``max(x, 0)``, or ``softplus(x) = log(1 + e^x)`` without overflow when ``soft``.

    NaN stays NaN (``maximum`` propagates it; a ``where(x > 0, ...)`` would not).
    """
    if soft:
        return ctx.backend.softplus(ctx.xp, x)
    return ctx.xp.maximum(x, scalar(ctx, 0))


def count_true(ctx: Context, mask, axis=None, dtype=None):
    """Number of True entries (along ``axis``) as an integer array of ``dtype`` (default
    the backend's index dtype), without a (B, B) integer temporary."""
    xp = ctx.xp
    dtype = dtype if dtype is not None else ctx.backend.index_dtype(xp)
    if hasattr(xp, "count_nonzero"):
        return xp.astype(xp.count_nonzero(mask, axis=axis), dtype, copy=False)
    return xp.sum(xp.astype(mask, dtype), axis=axis)


def as_float(ctx: Context, x):
    return ctx.xp.astype(x, ctx.dtype)


def safe_divide(ctx: Context, num, den):
    """``num / den`` where ``den > 0``, else 0 (the empty-case rule of SEMANTICS.md)."""
    xp = ctx.xp
    zero = scalar(ctx, 0)
    one = scalar(ctx, 1)
    ok = den > zero
    return xp.where(ok, num / xp.where(ok, den, one), zero)


def reduce(ctx: Context, per_term, count, reduction: str):
    """``sum`` → Σ, ``mean`` → Σ / count (0 when count is 0), ``none`` → the array."""
    xp = ctx.xp
    if reduction == "none":
        return per_term
    total = xp.sum(per_term)
    if reduction == "sum":
        return total
    return safe_divide(ctx, total, as_float(ctx, count))


def propagate_nan(ctx: Context, loss, x):
    """NaN anywhere in the embeddings makes the loss NaN: it is never silently a number.

    (The masked reductions could otherwise drop a NaN row that no term selects.)
    """
    xp = ctx.xp
    bad = xp.any(xp.isnan(x))
    return xp.where(bad, scalar(ctx, float("nan")), loss)


def finish(ctx: Context, loss, x, info: dict | None, return_info: bool):
    loss = ctx.finish(propagate_nan(ctx, loss, x))
    if not return_info:
        return loss
    return loss, info
