"""What every loss shares: input resolution, the hinge, reductions, NaN propagation,
and the argument checks of the public functions."""
from __future__ import annotations

import functools
import inspect
from typing import Any

from ..backends import Context, resolve
from ..backends._base import check_bool, check_choice, check_margin
from ..distances import METRICS, distance_matrix

REDUCTIONS = ("mean", "sum", "none")


#: ``check_loss_args``'s metric for a loss that takes none (``None`` is a bad metric)
NO_METRIC = object()


def check_loss_args(reduction: str, margin: Any, metric: Any = NO_METRIC) -> None:
    """The losses' shared arguments, each a clear error naming it."""
    if metric is not NO_METRIC:
        check_choice(metric, "metric", METRICS)
    check_choice(reduction, "reduction", REDUCTIONS)
    check_margin(margin)


def prepare(labels: Any, embeddings: Any, margin: Any, metric: str, reduction: str, backend: Any):
    """Validate the arguments and compute the shared pieces.

    Returns ``(ctx, x, d, y, m)``: the context, the embeddings in the compute dtype, the
    ``(B, B)`` distances, the labels (resolved) and the margin (the label masks are
    built where a loss needs them: :class:`._pairs.Pairs`).
    """
    check_loss_args(reduction, margin, metric)
    if labels is None:
        raise TypeError("labels: expected an integer array of shape (B,), got None")
    try:
        ctx, x, y = resolve(embeddings, labels, backend)
    except (TypeError, ValueError) as exc:
        if _looks_swapped(labels, embeddings):
            raise TypeError(
                "labels, embeddings: the arguments look swapped (labels is 2-D floating, "
                "embeddings 1-D integer); triplet_ref losses take (labels, embeddings), "
                "like TF-Addons, while pytorch-metric-learning and sentence-transformers "
                "take (embeddings, labels)") from exc
        raise
    d = distance_matrix(ctx, x, metric)
    return ctx, x, d, y, margin


def _kind(a: Any) -> tuple[int | None, str]:
    """``(ndim, "f" | "i" | "?")`` of an array or nested list, without converting it to a
    framework (only for the error path)."""
    dt, nd = getattr(a, "dtype", None), getattr(a, "ndim", None)
    if dt is None:
        import numpy as np

        try:
            arr = np.asarray(a)
        except Exception:
            return None, "?"
        dt, nd = arr.dtype, arr.ndim
    name = str(dt).lower()
    kind = "f" if "float" in name else ("i" if "int" in name and "bool" not in name else "?")
    return nd, kind


def _looks_swapped(labels: Any, embeddings: Any) -> bool:
    """Whether ``labels`` looks like embeddings (2-D floating) and ``embeddings`` like
    labels (1-D integer): the peers' ``(embeddings, labels)`` order."""
    return _kind(labels) == (2, "f") and _kind(embeddings) == (1, "i")


def public(fn):
    """Argument checks of a public function that Python's own would word badly.

    * an unknown keyword (``metric=`` on ``batch_contrastive``) or too many positional
      arguments: a TypeError that lists what the function takes;
    * the flags ``soft`` and ``return_info`` must be bools (``soft="False"`` would be
      truthy and silently mean soft).

    Everything else goes to ``fn`` untouched, and a TypeError raised inside ``fn`` is not
    caught or reworded.  ``inspect.signature`` of the result is ``fn``'s.
    """
    sig = inspect.signature(fn)
    names = frozenset(sig.parameters)
    positional = tuple(n for n, p in sig.parameters.items()
                       if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    keyword_only = tuple(n for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY)
    flags = tuple(n for n in ("soft", "return_info") if n in names)
    takes = f"{fn.__name__}({', '.join(positional)}, *, {', '.join(keyword_only)})"
    npos = len(positional)

    from .. import backends as _backends

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        if len(args) > npos:
            raise TypeError(
                f"{fn.__name__}() takes at most {npos} positional arguments ({len(args)} given); "
                f"the others are keyword-only: {takes}")
        for key in kwargs:
            if key not in names:
                raise TypeError(f"{fn.__name__}() got an unexpected keyword argument {key!r}; "
                                f"it takes {takes}")
        for flag in flags:
            if flag in kwargs:
                check_bool(kwargs[flag], flag)
        if _backends.compiling():  # traced by torch.compile: no lock (dynamo cannot trace one)
            return fn(*args, **kwargs)
        # the backends this call needs are created first (that may import a framework,
        # alone); then the call runs as a reader of the registry gate (thread safety)
        _backends.ensure_backends(args + tuple(kwargs.values()), kwargs.get("backend"))
        _backends.GATE.enter()
        try:
            return fn(*args, **kwargs)
        finally:
            _backends.GATE.exit()

    return checked


def count_dtype(ctx: Context, bound: int | None = None):
    """The dtype of a count in ``info`` whose value can reach ``bound`` (None: no static
    bound, e.g. batch_all's triplet counts, which grow like B³).

    The backend's index dtype (int64) when it is 64-bit or holds ``bound``; otherwise —
    JAX in its default 32-bit mode, which has no int64 — float32, which cannot wrap
    around (exact up to 2**24, then correctly rounded).
    """
    xp = ctx.xp
    idt = ctx.backend.index_dtype(xp)
    info = xp.iinfo(idt)
    if info.bits >= 64 or (bound is not None and bound <= info.max):
        return idt
    return xp.float32


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
    return ctx.backend.count_true(xp, mask, axis, dtype)


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


def non_finite(ctx: Context, *arrays):
    """0-d bool: whether any of ``arrays`` holds a NaN or an infinity."""
    xp = ctx.xp
    bad = None
    for a in arrays:
        b = xp.logical_not(xp.all(xp.isfinite(a)))
        bad = b if bad is None else bad | b
    return bad


def propagate_nan(ctx: Context, loss, *arrays):
    """A NaN or an infinity anywhere in the inputs makes the loss NaN (every entry of a
    ``"none"`` array): it is never silently a number (docs/semantics.md, "Non-finite
    input").  The masked reductions could otherwise drop a row that no term selects, and
    ``inf − inf`` in the distances gives NaN on one backend and a finite value on another.
    """
    return ctx.xp.where(non_finite(ctx, *arrays), scalar(ctx, float("nan")), loss)


def finish(ctx: Context, loss, x, info: dict | None, return_info: bool):
    loss = ctx.finish(propagate_nan(ctx, loss, x))
    if not return_info:
        return loss
    return loss, info
