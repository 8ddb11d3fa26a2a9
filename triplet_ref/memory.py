"""A cross-batch memory (XBM): a ring buffer of detached embeddings and labels.

Functional state on the Python array API (NumPy, PyTorch, JAX, CuPy, array-api-strict):
:func:`memory_init` makes an empty :class:`Memory`, :func:`memory_enqueue` returns the
memory with a batch written in (the oldest rows overwritten once it is full) and
:func:`memory_contents` gives the filled rows to pass as the reference set of any batch
loss::

    mem = memory_init(1024, embeddings, labels)          # empty, shaped like this batch
    for labels, embeddings in batches:
        ref, ref_y = memory_contents(mem)                  # the previous batches
        loss = batch_hard(labels, embeddings, ref_embeddings=ref, ref_labels=ref_y) if ref is not None else ...
        mem = memory_enqueue(mem, embeddings, labels)      # enqueue after the step

A :class:`Memory` is a ``NamedTuple`` of arrays, hence a JAX pytree: ``memory_enqueue``
runs under ``jax.jit`` (fixed shapes, no scatter: one ``take`` and one ``where`` over the
``(M, D)`` buffer).  The slot layout is that of pytorch-metric-learning's
``CrossBatchMemory``: rows are written at ``ptr, ptr + 1, ... (mod M)``, and the contents are
the first ``count`` slots until the memory is full, then all ``M`` slots in slot order.

A ``torch.nn.Module`` form with the state in registered buffers is
``triplet_ref.torch.MemoryBank``.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from .backends import backend_of, resolve
from .backends._scale import concrete_int, stop_gradient

__all__ = ["Memory", "memory_init", "memory_enqueue", "memory_contents"]


class Memory(NamedTuple):
    """State of a cross-batch memory of ``M`` rows.

    Attributes:
      embeddings: ``(M, D)`` floating buffer (zeros where nothing was written yet).
      labels: ``(M,)`` integer buffer (zeros where nothing was written yet).
      ptr: 0-d integer array, the slot the next row goes to (``0 <= ptr < M``).
      count: 0-d integer array, the number of filled slots (``0 <= count <= M``).
    """

    embeddings: Any
    labels: Any
    ptr: Any
    count: Any

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])


def memory_init(size: int, embeddings: Any, labels: Any) -> Memory:
    """An empty memory of ``size`` rows, of the framework, device, dtypes and width of
    the example batch ``embeddings`` ``(B, D)`` / ``labels`` ``(B,)`` (not enqueued).

    Raises ``ValueError`` for ``size < 1`` and ``TypeError`` for a non-integer size.
    """
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size: expected a positive int, got {type(size).__name__}")
    if size < 1:
        raise ValueError(f"size: must be >= 1, got {size}")
    ctx, x, y = resolve(embeddings, labels, None)
    xp = ctx.xp
    ldt = y.dtype
    xdt = ctx.out_dtype
    idt = ctx.backend.index_dtype(xp)
    return Memory(
        embeddings=xp.zeros((size, x.shape[1]), dtype=xdt, device=ctx.device),
        labels=xp.zeros((size,), dtype=ldt, device=ctx.device),
        ptr=xp.zeros((), dtype=idt, device=ctx.device),
        count=xp.zeros((), dtype=idt, device=ctx.device),
    )


def memory_enqueue(memory: Memory, embeddings: Any, labels: Any) -> Memory:
    """The memory with the batch written in, detached from autograd.

    Row ``i`` of the batch goes to slot ``(ptr + i) mod M``; then
    ``ptr <- (ptr + B) mod M`` and ``count <- min(count + B, M)``.  ``B <= M`` is required
    (``ValueError``), as in pytorch-metric-learning.  The embeddings are cast to the
    memory's dtype, the labels to its label dtype.  A pure function: the input memory is
    not modified.
    """
    if not isinstance(memory, Memory):
        raise TypeError(f"memory: expected a triplet_ref.memory.Memory, got {type(memory).__name__}")
    ctx, x, y = resolve(embeddings, labels, backend_of(memory.embeddings).name)
    xp, be = ctx.xp, ctx.backend
    M, D = memory.embeddings.shape
    B = x.shape[0]
    if x.shape[1] != D:
        raise ValueError(f"embeddings: the memory holds rows of width {D}, got shape {tuple(x.shape)}")
    if B > M:
        raise ValueError(f"embeddings: a batch of {B} rows does not fit a memory of {M} rows")
    x = stop_gradient(be, xp.astype(x, memory.embeddings.dtype))
    y = xp.astype(stop_gradient(be, y), memory.labels.dtype)
    idt = memory.ptr.dtype
    slots = xp.arange(M, dtype=idt, device=ctx.device)
    Mi = xp.asarray(M, dtype=idt, device=ctx.device)
    Bi = xp.asarray(B, dtype=idt, device=ctx.device)
    # slot s receives batch row k = (s - ptr) mod M when k < B
    k = (slots - memory.ptr + Mi) % Mi
    write = k < Bi
    row = xp.where(write, k, xp.zeros((), dtype=idt, device=ctx.device))
    new_x = xp.where(write[:, None], xp.take(x, row, axis=0), memory.embeddings)
    new_y = xp.where(write, xp.take(y, row, axis=0), memory.labels)
    return Memory(
        embeddings=new_x,
        labels=new_y,
        ptr=(memory.ptr + Bi) % Mi,
        count=xp.minimum(memory.count + Bi, Mi),
    )


def memory_contents(memory: Memory):
    """``(ref_embeddings, ref_labels)``: the filled rows, or ``(None, None)`` when empty.

    The first ``count`` slots until the memory is full, then all ``M`` slots (slot order,
    as pytorch-metric-learning's ``CrossBatchMemory``).  Under ``jax.jit`` the count is a
    traced value: this returns the whole buffers and requires a full memory, which is
    the case after ``M / B`` steps (fill it before jitting, or keep the first steps eager).
    """
    n = concrete_int(memory.count)
    M = memory.size
    if n is None:  # traced: the whole buffer (documented: the memory must be full)
        return memory.embeddings, memory.labels
    if n == 0:
        return None, None
    if n == M:
        return memory.embeddings, memory.labels
    return memory.embeddings[:n, :], memory.labels[:n]
