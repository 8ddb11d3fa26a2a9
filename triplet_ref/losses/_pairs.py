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

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

from ..backends import Context, resolve
from ..backends import compiling as _compiling
from ..backends._base import _as_backend_array, _check_embeddings, convert_labels
from ..distances import cross_distance_matrix
from ._common import NO_METRIC, as_float, check_loss_args, count_dtype, non_finite, prepare, safe_divide, scalar

#: the info key under which a row block of a chunked ``"mean"`` call returns its count
_COUNT = "_chunk_count"


@dataclass
class Pairs:
    """The pieces of one batch-loss call.  The ``(B, R)`` label masks ``pos`` / ``neg``
    are built on first use (from ``y``, ``Y`` and the anchors' own columns): a loss whose
    mining step takes the labels (batch_hard's :data:`~triplet_ref.mining.HARDEST`)
    never builds them."""
    ctx: Context
    x: Any            # the anchors (B, D), compute dtype
    d: Any            # (B, R) distances anchors → candidates
    y: Any            # (B,) the anchors' labels
    Y: Any            # (R,) the candidates' labels
    margin: Any
    comm: Any = None  # .sum(ctx, partial) -> global sum (None: one process)
    same: Any = None   # (B, R) bool: the pair is the anchor itself (None: no such pair)
    nan_src: Any = None  # an array whose NaN-ness decides the loss's (default: x)
    n_same: int = -1   # pairs excluded as the anchor itself (-1: one per anchor, the batch)
    block: Any = None  # the _Block of one row block of a chunked call (None: a whole call)
    offset: Any = None  # 0-d index: anchor a's own column is a + offset (None: a, or none when n_same == 0)
    _masks: Any = field(default=None, init=False, repr=False)

    @property
    def distributed(self) -> bool:
        return self.comm is not None

    def _pos_neg(self):
        if self._masks is None:
            xp, be = self.ctx.xp, self.ctx.backend
            if self.n_same != 0 and self.same is None:  # the batch itself (the backend's masks)
                self._masks = be.label_masks(xp, self.y, self.ctx.device)
                return self._masks
            eq = be.equal_labels(xp, self.y, self.Y)
            if self.n_same == 0:
                pos = eq
            elif self.same is not None:
                pos = eq & ~self.same
            else:  # the batch itself: the diagonal
                pos = eq & ~xp.eye(*self.d.shape, dtype=xp.bool, device=self.ctx.device)
            self._masks = (pos, ~eq)
        return self._masks

    @property
    def pos(self):
        """(B, R) bool: positive pairs (same label, not the same sample)."""
        return self._pos_neg()[0]

    @property
    def neg(self):
        """(B, R) bool: negative pairs (different label)."""
        return self._pos_neg()[1]

    def own_offset(self):
        """0-d index array: anchor ``a``'s own column is ``a + offset``; ``R`` (no column)
        where no pair is the anchor itself (a reference set)."""
        if self.n_same != 0 and self.offset is not None:
            return self.offset
        xp = self.ctx.xp
        value = self.d.shape[1] if self.n_same == 0 else 0
        return xp.asarray(value, dtype=self.ctx.backend.index_dtype(xp), device=self.ctx.device)

    def num_pairs(self) -> int:
        """The number of (anchor, candidate) pairs that are not the anchor itself."""
        B, R = self.d.shape
        return B * R - (B if self.n_same < 0 else self.n_same)

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
    """Validate the arguments and build the :class:`Pairs` of one call (a
    ``process_group`` that is a :class:`_Block` is one row block of a :func:`chunked` call)."""
    if isinstance(process_group, _Block):
        return _block_pairs(labels, embeddings, margin, metric, backend, process_group)
    has_ref = ref_embeddings is not None or ref_labels is not None
    has_group = process_group is not None
    has_axis = axis_name is not None
    if not (has_ref or has_group or has_axis):
        ctx, x, d, y, m = prepare(labels, embeddings, margin, metric, reduction, backend)
        return Pairs(ctx, x, d, y, y, m)
    check_scaling_args(has_ref, has_group, has_axis)

    def validate():
        check_loss_args(reduction, margin, metric)

    if not has_ref:
        g = gather_global(labels, embeddings, backend, process_group, axis_name, validate=validate, path=_UNCHUNKED)
        return _global_pairs(g.ctx, g.x, g.y, g.X, g.Y, g.offset, margin, metric, g.comm)
    validate()
    ctx, x, y = resolve(embeddings, labels, backend)
    xp = ctx.xp
    if has_ref:
        r, ry = resolve_reference(ctx, x, ref_embeddings, ref_labels)
        d = cross_distance_matrix(ctx, x, r, metric)
        bad = non_finite(ctx, x, r)  # NaN or ±inf: docs/semantics.md, non-finite input
        nan_src = xp.where(bad, scalar(ctx, float("nan")), scalar(ctx, 0))
        return Pairs(ctx, x, d, y, ry, margin, nan_src=nan_src, n_same=0)


def check_scaling_args(has_ref: bool, has_group: bool, has_axis: bool) -> None:
    if has_group and has_axis:
        raise ValueError("process_group (torch.distributed) and axis_name (JAX) cannot both be given")
    if has_ref and (has_group or has_axis):
        raise ValueError(
            "ref_embeddings/ref_labels cannot be combined with process_group/axis_name: the "
            "global batch is the reference set of a distributed call")


#: how a rank runs a distributed call (exchanged between torch ranks, which must agree):
#: unchunked (``chunk_size=0``), in blocks (an int), or as the memory budget decides (None)
_UNCHUNKED, _CHUNKED, _BY_BUDGET = 0, 1, 2


@dataclass
class Gathered:
    """The local and the global batch of one distributed call, gathered once: passed as
    ``process_group`` to the loss (or to :func:`chunked`) once the default chunking has
    been decided from the global batch."""
    ctx: Context
    x: Any        # this rank's rows (B_local, D), compute dtype
    y: Any        # their labels
    comm: Any     # the communicator: .sum(ctx, v) is the global sum
    X: Any        # the global batch (B_global, D), differentiable in x
    Y: Any
    offset: Any   # this rank's first row in X (0-d index array)
    rows: int | None = None  # chunk_size=None: the rows per block the budget chose (None: unchunked)


def gather_global(labels, embeddings, backend, process_group, axis_name, *, validate=None,
                  path: int = _UNCHUNKED) -> Gathered:
    """The local batch and the global one of a distributed call (a :class:`Gathered`).

    A rank may hold no row (``(0, D)``); a global batch without a row is a ValueError on
    every rank alike (decided after the gather, so no rank is left waiting).

    torch (``process_group``): the arguments are validated (``validate()``, then the
    embeddings and labels) inside a guard, and every rank's outcome, rows, columns,
    dtype, memory budget and ``path`` travel in the one small all-gather that learns the
    uneven row counts (``backends._scale._TorchComm.agree``): bad input on one rank (a
    labels length that is not its rows, a 1-D or integer embeddings, ...), or columns or
    dtypes that differ between ranks, raise the same error on every rank instead of
    leaving the others waiting in a collective until its timeout.  JAX (``axis_name``):
    inside ``shard_map`` / ``pmap`` every device traces the same static shapes, so an
    argument error is raised at trace time for all of them alike; nothing to exchange.

    ``path``: ``_BY_BUDGET`` (``chunk_size=None``) sets ``rows`` from the memory budget
    (the smallest of the ranks'), the local rows of the largest rank and the global
    rows: ``budget // (arrays_at_peak · B_global · itemsize)``, None (unchunked) when that
    is at least the largest rank's rows, so that every rank takes the same path; ranks
    whose paths differ (``chunk_size=0`` on one, an int on another) raise a ValueError
    naming ``chunk_size`` on every rank.
    """
    if isinstance(process_group, Gathered):
        return process_group
    from ..backends._scale import communicator, torch_comm

    def local():
        if validate is not None:
            validate()
        if labels is None:
            raise TypeError("labels: expected an integer array of shape (B,), got None")
        ctx, x, y = resolve(embeddings, labels, backend, allow_empty=True)
        return ctx, x, y, (memory_budget() if path == _BY_BUDGET else None)

    if process_group is None:
        ctx, x, y, budget = local()
        comm = communicator(ctx.backend, axis_name=axis_name)
        X, Y, offset = comm.gather(ctx, x, y)
        max_rows, paths = int(x.shape[0]), [path]
    else:
        error = None
        try:
            ctx, x, y, budget = local()
        except (TypeError, ValueError) as exc:
            ctx = x = y = budget = None
            error = exc
        if error is None:
            comm = communicator(ctx.backend, process_group=process_group)
        else:
            comm = torch_comm(process_group)
            if comm is None:  # torch.distributed cannot serve the group: nothing to wait on
                raise error
        sizes, budget, paths = comm.agree(ctx, x, error, like=embeddings, budget=budget, path=path)
        X, Y, offset = comm.gather(ctx, x, y, sizes)
        max_rows = max(sizes)
    if X.shape[0] == 0:
        raise ValueError(f"embeddings: empty global batch (every rank's shape is {tuple(x.shape)}); "
                         "need at least one row")
    rows = None
    if budget is not None:
        rows = rows_from_budget(budget, max_rows, int(X.shape[0]), ctx.backend, _itemsize(x))
    chunks = [p == _CHUNKED or (p == _BY_BUDGET and rows is not None) for p in paths]
    if any(c != chunks[0] for c in chunks):
        names = {_UNCHUNKED: "0", _CHUNKED: "an int", _BY_BUDGET: "None"}
        have = ", ".join(f"{names[p]} on rank {r}" for r, p in enumerate(paths))
        raise ValueError(f"chunk_size: {have}: the ranks of a process group must all chunk or all not "
                         "(pass the same chunk_size on every rank)")
    return Gathered(ctx, x, y, comm, X, Y, offset, rows if path == _BY_BUDGET else None)


def _global_pairs(ctx, x, y, X, Y, offset, margin, metric, comm) -> Pairs:
    xp = ctx.xp
    d = cross_distance_matrix(ctx, x, X, metric)
    B, R = d.shape
    idt = offset.dtype
    rows = xp.arange(B, dtype=idt, device=ctx.device)
    cols = xp.arange(R, dtype=idt, device=ctx.device)
    same = cols[None, :] == (rows + offset)[:, None]
    # the anchor's own column: exactly 0 (the single-process diagonal), no pair
    d = xp.where(same, scalar(ctx, 0), d)
    # NaN anywhere in the global batch: a global count, so that every rank agrees (and JAX
    # sees a replicated value)
    bad = comm.sum(ctx, as_float(ctx, non_finite(ctx, x))) > scalar(ctx, 0)
    nan_src = xp.where(bad, scalar(ctx, float("nan")), scalar(ctx, 0))
    return Pairs(ctx, x, d, y, Y, margin, comm=comm, same=same, nan_src=nan_src, offset=offset)


def _block_pairs(labels, embeddings, margin, metric, backend, block: "_Block") -> Pairs:
    ctx, x, y = resolve(embeddings, labels, backend, allow_empty=True)
    xp = ctx.xp
    X, Y = block.X, block.Y
    d = None
    if metric != "cosine":  # the fused native kernel of the backend, if it has one
        start = block.start if block.exclude_self and block.start is not None else -1
        d = ctx.backend.block_distances(xp, x, X, metric == "sqeuclidean", start)
    fused = d is not None and (block.start is not None or not block.exclude_self)
    if d is None:
        d = cross_distance_matrix(ctx, x, X, metric)
    nan_src = block.nan_src
    if nan_src is None:
        nan_src = xp.where(non_finite(ctx, x, X), scalar(ctx, float("nan")), scalar(ctx, 0))
    if not block.exclude_self:
        return Pairs(ctx, x, d, y, Y, margin, nan_src=nan_src, n_same=0, block=block)
    B, R = d.shape
    if block.start is not None:  # a concrete offset: the shifted identity, no index compare
        same = xp.eye(B, R, k=block.start, dtype=xp.bool, device=ctx.device)
    else:
        idt = block.offset.dtype
        rows = xp.arange(B, dtype=idt, device=ctx.device)
        cols = xp.arange(R, dtype=idt, device=ctx.device)
        same = cols[None, :] == (rows + block.offset)[:, None]
    if not fused:  # the fused kernel zeroes the anchor's own column itself
        d = xp.where(same, scalar(ctx, 0), d)
    return Pairs(ctx, x, d, y, Y, margin, same=same, nan_src=nan_src, block=block, offset=block.offset)


def reduce_pairs(P: Pairs, per_term, count, reduction: str):
    """``sum`` → Σ, ``mean`` → Σ / count (0 when count is 0), ``none`` → the local array;
    Σ and count are global sums in a distributed call (equal on every rank).

    ``count`` is the mean's denominator (an integer or floating 0-d array, cast here).  In
    a row block of a :func:`chunked` call it is also handed to the block (``_Block.count``):
    the mean of a chunked call is the blocks' sums over their counts, so a block computes
    no info (and none of its passes over the ``(b, R)`` arrays) unless the caller asked for
    ``return_info``."""
    ctx, xp = P.ctx, P.ctx.xp
    if P.block is not None:
        P.block.count = count
    if reduction == "none":
        return per_term
    total = P.global_sum(xp.sum(per_term))
    if reduction == "sum":
        return total
    return safe_divide(ctx, total, P.global_sum(as_float(ctx, count)))


# --- the batch losses' shared keywords: one docstring block, one dispatch -------------
SCALING_DOC = """\
ref_embeddings, ref_labels: a reference set ``(R, D)`` / ``(R,)``: the anchors (rows
  of ``embeddings``) take their positives and negatives from its rows, no pair being
  the same sample (docs/semantics.md, "Reference sets"){ref_note}.
process_group: a ``torch.distributed`` process group (torch), or
axis_name: a JAX mapped axis name (inside ``shard_map`` / ``pmap``): mine the local
  anchors against the global batch (all ranks' rows in rank order). ``"mean"`` /
  ``"sum"`` and the info counts are those of the single-process loss on the
  concatenated batch, on every rank; ``"none"`` is this rank's rows against the
  global batch (docs/semantics.md, "Global-batch mining"; docs/scaling.md).
chunk_size: ``None`` (default): the anchor rows per block chosen from a memory budget
  (1 GiB, or ``TRIPLET_REF_MEMORY_BUDGET`` bytes): unchunked up to ``B = 4096``
  (``R = B``), blocks of ``budget // (8·R·itemsize)`` rows beyond (JAX: ``16·R``); ``0``: never
  chunked (``O(B·R)`` memory); an int ``c >= 1``: blocks of ``c`` rows (with
  ``process_group`` / ``axis_name``: of the local anchors, against the global batch;
  ``None`` there takes ``R = B_global`` and chunks every rank when the largest
  rank's rows exceed the budget's). Each block mines against the whole batch (or
  reference set) and its backward is done block by block (torch ``"mean"``/``"sum"``:
  in the forward pass, first order only; otherwise checkpointed and recomputed), so
  a call holds ``O(c·R)`` at a time (docs/scaling.md, "Memory")."""

_SCALING_MARK = "{scaling}"


def scaling_doc(doc: str, ref_note: str = "") -> str:
    """``doc`` with its line ``{scaling}`` replaced by :data:`SCALING_DOC`, indented like
    that line (``ref_note``: what a reference set changes in this loss's outputs)."""
    if doc is None:  # python -OO
        return doc
    lines = doc.split("\n")
    marks = [i for i, line in enumerate(lines) if line.strip() == _SCALING_MARK]
    if len(marks) != 1:
        raise AssertionError(f"the docstring needs exactly one line {_SCALING_MARK}, found {len(marks)}")
    i = marks[0]
    indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
    block = [indent + line for line in SCALING_DOC.format(ref_note=ref_note).split("\n")]
    return "\n".join(lines[:i] + block + lines[i + 1:])


def batch_loss(ref_note: str = ""):
    """Decorator of a batch loss ``fn(labels, embeddings, margin, *, ..., chunk_size)``:

    * its docstring's line ``{scaling}`` becomes the shared keyword block
      (:func:`scaling_doc`);
    * ``chunk_size`` is handled here: given, the call runs through :func:`chunked`,
      which calls the decorated loss once per row block (without ``chunk_size``); ``fn``
      itself only ever sees ``chunk_size=None`` and declares it for its signature.
    """
    def deco(fn):
        fn.__doc__ = scaling_doc(fn.__doc__, ref_note)
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def loss(*args, **kwargs):
            chunk_size = kwargs.pop("chunk_size", None)
            group, axis = kwargs.get("process_group"), kwargs.get("axis_name")
            if ((group is not None or axis is not None) and not isinstance(group, (_Block, Gathered))
                    and not _compiling()):
                return _distributed_call(loss, fn, sig, chunk_size, args, kwargs)
            if chunk_size is None and group is None and axis is None and not _compiling():
                # the default: rows from the memory budget (None: unchunked); not under
                # torch.compile, which cannot trace the blocks' in-forward backward
                bound = sig.bind_partial(*args, **kwargs)
                chunk_size = chunk_rows(None, bound.arguments.get("embeddings"),
                                        bound.arguments.get("ref_embeddings"))
            elif chunk_size is not None:
                chunk_size = chunk_rows(chunk_size, None)
            if chunk_size is None:
                return fn(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = dict(bound.arguments)
            del a["chunk_size"]
            return chunked(loss, chunk_size=chunk_size, **a)

        return loss

    return deco


def _distributed_call(loss, fn, sig, chunk_size, args, kwargs):
    """A batch loss with ``process_group`` / ``axis_name``: the global batch is gathered
    first (:func:`gather_global`, which also validates the arguments on every torch rank
    alike), then the call runs unchunked or in row blocks (``chunk_size=None``: as the
    memory budget decides from the local and global rows)."""
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    a = dict(bound.arguments)
    a.pop("chunk_size", None)
    has_ref = a.get("ref_embeddings") is not None or a.get("ref_labels") is not None
    check_scaling_args(has_ref, a.get("process_group") is not None, a.get("axis_name") is not None)
    path = _BY_BUDGET if chunk_size is None else (_UNCHUNKED if chunk_size == 0 else _CHUNKED)

    def validate():
        check_chunk_size(chunk_size)
        check_loss_args(a["reduction"], a["margin"], a.get("metric", NO_METRIC))

    g = gather_global(a["labels"], a["embeddings"], a["backend"], a["process_group"], a["axis_name"],
                      validate=validate, path=path)
    rows = g.rows if chunk_size is None else (chunk_size or None)
    a["process_group"], a["axis_name"] = g, None
    if rows is None:
        return fn(**a)
    return chunked(loss, chunk_size=rows, **a)


# --- bounded memory: anchors in row blocks ---------------------------------------------
class _Block:
    """The candidates of one row block of a chunked call: the whole batch (or reference
    set) with this block's first row at ``offset``; sums stay per block (``chunked``
    adds the blocks up)."""

    def __init__(self, X, Y, offset, same: bool, start: int | None = None, nan_src: Any = None):
        self.X, self.Y, self.offset, self.exclude_self = X, Y, offset, same
        self.start = start      # offset as a Python int (the fused distance kernel), None if traced
        self.nan_src = nan_src  # NaN where the whole input is non-finite (once per call), else None
        self.count = None       # the block's mean denominator, set by reduce_pairs

    def gather(self, ctx, x, y):
        return self.X, self.Y, self.offset

    def sum(self, ctx, v):
        return v


#: The memory budget of one batch-loss call with ``chunk_size=None``, in bytes: the anchors
#: are processed in row blocks when the ``(B, R)`` working arrays would exceed it.  The
#: environment variable ``TRIPLET_REF_MEMORY_BUDGET`` (bytes, an int) overrides it, read at
#: every call.  1 GiB: B <= 4096 (float32 and float64, R = B) runs unchunked.
MEMORY_BUDGET = 2**30

#: How many ``(rows, R)`` arrays of the compute dtype a batch loss holds at its peak
#: (forward and backward; measured 5-9 at B = 4096 with ``benchmarks/scaling.py``): the
#: budget is divided by ``ARRAYS_AT_PEAK · R · itemsize`` to get the rows per block.  A
#: backend whose blocks hold more sets its own (``Backend.arrays_at_peak``: JAX 16).
ARRAYS_AT_PEAK = 8


def memory_budget() -> int:
    """The budget in bytes: ``TRIPLET_REF_MEMORY_BUDGET`` if set, else :data:`MEMORY_BUDGET`."""
    import os

    env = os.environ.get("TRIPLET_REF_MEMORY_BUDGET")
    if env is None or env.strip() == "":
        return MEMORY_BUDGET
    try:
        value = int(env.strip())
    except ValueError:
        raise ValueError(f"TRIPLET_REF_MEMORY_BUDGET: expected a number of bytes (an int), got {env!r}") from None
    if value < 1:
        raise ValueError(f"TRIPLET_REF_MEMORY_BUDGET: must be >= 1 byte, got {value}")
    return value


def check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size: expected None, 0 or a positive int, got {type(chunk_size).__name__}")
    if chunk_size < 0:
        raise ValueError(f"chunk_size: must be None (from the memory budget), 0 (unchunked) or >= 1, "
                         f"got {chunk_size}")


def _itemsize(a: Any) -> int:
    """Bytes per element of the compute dtype of ``a`` (at least float32's 4; 8 when the
    dtype says nothing)."""
    dt = getattr(a, "dtype", None)
    size = getattr(dt, "itemsize", None)
    if not isinstance(size, int):
        try:
            import numpy as np

            size = np.dtype(str(dt).rsplit(".", 1)[-1]).itemsize
        except Exception:
            size = 8
    return max(4, size)


def chunk_rows(chunk_size: Any, embeddings: Any, ref_embeddings: Any = None, process_group: Any = None,
               axis_name: Any = None) -> int | None:
    """The rows per block of a batch-loss call, or None for the unchunked path.

    ``chunk_size=0``: None.  An int ``c >= 1``: ``c``.  ``None``: from the memory budget
    (:func:`memory_budget`): ``rows = budget // (ARRAYS_AT_PEAK · R · itemsize)`` (the
    backend's ``arrays_at_peak`` where it sets one: JAX 16; ``R``
    the candidates: the batch or the reference set; ``itemsize`` of the compute dtype,
    at least 4), unchunked when ``rows >= B``.  A distributed call (``process_group`` /
    ``axis_name``) with ``None``: None here; its rows are decided after the gather, from
    the global rows (:func:`gather_global`).
    """
    check_chunk_size(chunk_size)
    if chunk_size == 0:
        return None
    if chunk_size is not None:
        return chunk_size
    if process_group is not None or axis_name is not None:
        return None
    shape = getattr(embeddings, "shape", None)
    if shape is None or len(shape) != 2:
        return None  # a list or a malformed input: validated (and small) on the unchunked path
    B = int(shape[0])
    R = B
    if ref_embeddings is not None:
        rshape = getattr(ref_embeddings, "shape", None)
        if rshape is None or len(rshape) != 2:
            return None
        R = int(rshape[0])
    if B == 0 or R == 0:
        return None
    from ..backends import backend_of

    return rows_from_budget(memory_budget(), B, R, backend_of(embeddings), _itemsize(embeddings))


def rows_from_budget(budget: int, B: int, R: int, backend: Any, itemsize: int) -> int | None:
    """``budget // (arrays_at_peak · R · itemsize)`` rows per block, or None (unchunked)
    when that is at least ``B`` (``arrays_at_peak``: the backend's, else
    :data:`ARRAYS_AT_PEAK`)."""
    per_row = getattr(backend, "arrays_at_peak", None) or ARRAYS_AT_PEAK
    rows = budget // (per_row * R * itemsize)
    if rows >= B:
        return None
    return max(1, int(rows))


def chunked(fn, labels: Any, embeddings: Any, margin: Any, reduction: str, return_info: bool,
            backend: Any, chunk_size: int, ref_embeddings: Any = None, ref_labels: Any = None,
            process_group: Any = None, axis_name: Any = None, **options):
    """``fn`` (a batch loss) on row blocks of ``chunk_size`` anchors, added up.

    Each block mines its anchors against the whole batch (its own rows excluded as the
    same sample) or against the reference set; only the block's ``(chunk_size, R)``
    arrays are alive at a time.  The block's computation is checkpointed (torch
    ``torch.utils.checkpoint``, JAX ``jax.checkpoint``): the backward recomputes it
    block by block instead of keeping every block's intermediates.  Under JAX tracing
    (``jit``, ``shard_map``) the ``B // chunk_size`` equal blocks are one ``lax.scan``
    of a checkpointed step (``backends._scale.scan_blocks``; the block's first row is
    traced there, so its own column is excluded by the portable path) and the remainder
    one more block; an unrolled loop of checkpointed calls let XLA keep many blocks'
    arrays alive at once.  ``"none"`` goes through the scan too (its stacked blocks
    reshaped): its result is ``O(B·R)`` anyway, but the intermediates are not.  ``"mean"`` is the
    sum of the blocks' sums over the sum of their counts; ``"none"`` and the info index
    arrays are the blocks' rows concatenated.
    """
    from ..backends._scale import checkpoint

    check_chunk_size(chunk_size)
    has_ref = ref_embeddings is not None or ref_labels is not None
    check_scaling_args(has_ref, process_group is not None, axis_name is not None)
    check_loss_args(reduction, margin)
    comm, base = None, 0
    if process_group is not None or axis_name is not None:
        # the local anchors in blocks against the gathered global batch: the blocks run no
        # collective (their number may differ between ranks); the sums are global at the end
        g = gather_global(labels, embeddings, backend, process_group, axis_name, path=_CHUNKED)
        ctx, x, y, comm, X, Y, base = g.ctx, g.x, g.y, g.comm, g.X, g.Y, g.offset
        self_ref = False
    else:
        ctx, x, y = resolve(embeddings, labels, backend)
        if has_ref:
            X, Y = resolve_reference(ctx, x, ref_embeddings, ref_labels)
            self_ref = False
        else:
            X, Y = x, y
            self_ref = True
    xp = ctx.xp
    exclude_self = self_ref or comm is not None
    B = x.shape[0]
    idt = ctx.backend.index_dtype(xp)
    red = "none" if reduction == "none" else "sum"
    # at least one block: a rank without rows still runs one (empty) block, so that its
    # result and backward take part in the global sums like every other rank's
    starts = range(0, max(B, 1), chunk_size)
    # NaN or ±inf anywhere (X is the whole batch, the reference set or the global batch):
    # decided once for the call, not per block
    nan_src = xp.where(non_finite(ctx, x, X), scalar(ctx, float("nan")), scalar(ctx, 0))
    # the first row's column as a Python int for the fused distance kernel (None: traced)
    from ..backends._scale import concrete_int

    base_int = concrete_int(base) if exclude_self else None

    cdt = count_dtype(ctx)

    def call_block(yb, xb, mgn, blk):
        # the block computes its info only when the caller asked for it; the mean needs
        # only the block's count, which reduce_pairs hands over (blk.count): no info pass
        # over the (b, R) arrays, no (b, R) index array kept
        res = fn(yb, xb, mgn, reduction=red, return_info=return_info, process_group=blk, **options)
        out, info = res if return_info else (res, {})
        if reduction == "mean":
            if blk.count is None:
                raise AssertionError(f"{getattr(fn, '__name__', fn)}: a row block did not report its count")
            # an exact integer count (int64; float32 where the backend has no 64-bit
            # integer), added over the blocks without rounding
            info = dict(info)
            info[_COUNT] = xp.astype(blk.count, cdt)
        return out, info

    def run_block(s, leaves):
        x_all = leaves[0]
        cand = x_all if self_ref else leaves[1]
        blk = _Block(cand, Y, xp.asarray(s, dtype=idt, device=ctx.device) + base, exclude_self,
                     None if base_int is None else base_int + s, nan_src)
        return call_block(y[s:s + chunk_size], x_all[s:s + chunk_size, :], leaves[2], blk)

    fused = None
    if reduction != "none":
        # torch: each block's backward runs right after its forward (no recomputation)
        from ..backends._scale import fused_block_sum

        fused = fused_block_sum(ctx.backend, run_block, starts, [x, X, margin])
    if fused is not None:
        total, infos = fused
        return _finish_chunked(ctx, [(total, i) for i in infos], reduction, return_info, comm, summed=True)
    blocks = []
    n_scan = B // chunk_size
    if n_scan >= 2:
        # JAX under jit/grad: the equal blocks as one lax.scan of a checkpointed step (one
        # block's arrays alive at a time, forward and backward), the remainder unrolled
        from ..backends._scale import scan_blocks

        m = n_scan * chunk_size
        xs = xp.reshape(x[:m, :], (n_scan, chunk_size, x.shape[1]))
        ys = xp.reshape(y[:m], (n_scan, chunk_size))
        first = xp.arange(0, m, chunk_size, dtype=idt, device=ctx.device)

        def scan_block(s, xb, yb):
            # s is traced: the fused kernel's Python offset is None, the portable path
            # excludes the anchor's own column from the traced offset
            blk = _Block(x if self_ref else X, Y, s + base, exclude_self, None, nan_src)
            return call_block(yb, xb, margin, blk)

        stacked = scan_blocks(ctx.backend, scan_block, (first, xs, ys), traced=(X, margin))
        if stacked is not None:
            blocks.append(_unstack(ctx, stacked, reduction))
            starts = range(m, B, chunk_size)
    for s in starts:
        e = min(B, s + chunk_size)

        def block(x_all, X_all, s=s, e=e):
            cand = x_all if self_ref else X_all
            blk = _Block(cand, Y, xp.asarray(s, dtype=idt, device=ctx.device) + base, exclude_self,
                         None if base_int is None else base_int + s, nan_src)
            return call_block(y[s:e], x_all[s:e, :], margin, blk)

        out, info = checkpoint(ctx.backend, block, x, X)
        blocks.append((out, info))
    return _finish_chunked(ctx, blocks, reduction, return_info, comm)


def _unstack(ctx, stacked, reduction):
    """One block's ``(out, info)`` from the stacked outputs of :func:`scan_blocks`
    (``n`` equal blocks): sums and counts added over the blocks, per-row arrays'
    blocks joined, fractions and means weighted by their block's ``num_valid``."""
    xp = ctx.xp
    out, info = stacked

    def join(v):
        return xp.reshape(v, (v.shape[0] * v.shape[1],) + tuple(v.shape[2:]))

    out = join(out) if reduction == "none" else xp.sum(out, axis=0, dtype=out.dtype)
    merged = {}
    for key, v in info.items():
        if key.startswith(("fraction_", "mean_")):
            nv = as_float(ctx, info["num_valid"])
            merged[key] = safe_divide(ctx, xp.sum(as_float(ctx, v) * nv, axis=0), xp.sum(nv, axis=0))
        elif v.ndim >= 2:
            merged[key] = join(v)
        else:
            merged[key] = xp.sum(v, axis=0, dtype=v.dtype)
    return out, merged


def _finish_chunked(ctx, blocks, reduction, return_info, comm=None, summed=False):
    """Loss and info of a chunked call from its blocks' ``(out, info)`` (``summed``: the
    first ``out`` is already the total; ``comm``: the communicator of a distributed call,
    whose global sums turn this rank's totals and counts into the global ones)."""
    xp = ctx.xp
    if reduction == "none":
        loss = xp.concat([o for o, _ in blocks], axis=0)
    elif summed:
        loss = blocks[0][0]
    else:
        total = blocks[0][0]
        for o, _ in blocks[1:]:
            total = total + o
        loss = total
    gsum = (lambda v: v) if comm is None else (lambda v: comm.sum(ctx, v))
    if reduction != "none":
        loss = gsum(loss)
    info = _merge_info(ctx, [i for _, i in blocks], gsum)
    if reduction == "mean":
        loss = safe_divide(ctx, loss, as_float(ctx, info.pop(_COUNT)))
    loss = ctx.finish(loss)
    return (loss, info) if return_info else loss


def _merge_info(ctx, infos, gsum=lambda v: v):
    """The info of the whole batch from its blocks': counts added, index arrays
    concatenated, fractions and means weighted by their block's ``num_valid`` (``gsum``:
    the global sum of a distributed call, applied to the counts and weighted sums)."""
    xp = ctx.xp
    out = {}
    if any(k.startswith(("fraction_", "mean_")) for k in infos[0]):
        nv = [as_float(ctx, i["num_valid"]) for i in infos]
        nv_total = nv[0]
        for v in nv[1:]:
            nv_total = nv_total + v
        nv_total = gsum(nv_total)
    for key, first in infos[0].items():
        vals = [i[key] for i in infos]
        if key.startswith(("fraction_", "mean_")):
            if key == "fraction_positive" and "num_positive" in infos[0]:
                continue  # batch_all: from its counts below
            acc = as_float(ctx, vals[0]) * nv[0]
            for v, w in zip(vals[1:], nv[1:]):
                acc = acc + as_float(ctx, v) * w
            out[key] = ctx.finish(safe_divide(ctx, gsum(acc), nv_total))
        elif first.ndim >= 1:
            out[key] = xp.concat(vals, axis=0)
        else:
            acc = vals[0]
            for v in vals[1:]:
                acc = acc + v
            # a count that does not depend on the data may come back from jax.checkpoint
            # as a NumPy scalar: keep every entry an array of the backend
            out[key] = gsum(xp.asarray(acc, device=ctx.device))
    if "num_positive" in out and "fraction_positive" in infos[0]:
        out["fraction_positive"] = ctx.finish(safe_divide(
            ctx, as_float(ctx, out["num_positive"]), as_float(ctx, out["num_valid"])))
    return {k: out[k] for k in infos[0]}
