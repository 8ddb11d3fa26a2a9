"""Framework specifics of the scaling helpers (memory bank, global-batch mining).

Kept apart from the backends' classes: every function takes the :class:`Backend` and
imports its framework lazily (the framework is already imported when one of its arrays
is passed).
"""
from __future__ import annotations

from typing import Any


def stop_gradient(be, x: Any):
    """``x`` cut off from automatic differentiation (a copy-free view where possible)."""
    if be.name == "torch":
        return x.detach()
    if be.name == "jax":
        import jax

        return jax.lax.stop_gradient(x)
    return x


def concrete_int(x: Any) -> int | None:
    """``int(x)`` for a 0-d integer array whose value is known, None while it is traced."""
    try:
        return int(x)
    except Exception:  # a jax tracer (ConcretizationTypeError) or similar
        return None


# --- global-batch mining: the communicators --------------------------------------------
def communicator(be, *, process_group: Any = None, axis_name: Any = None):
    """The collectives of one distributed call: ``gather(ctx, x, y) -> (X, Y, offset)``
    (the global batch in rank order, differentiable in ``x``, and this rank's first row
    in it) and ``sum(ctx, v)`` (the global sum, differentiable)."""
    if process_group is not None:
        if be.name != "torch":
            raise TypeError(f"process_group: torch.distributed needs torch tensors, got {be.name} arrays "
                            "(use axis_name= with JAX)")
        return _TorchComm(process_group)
    if be.name != "jax":
        raise TypeError(f"axis_name: a JAX mapped axis needs JAX arrays, got {be.name} arrays "
                        "(use process_group= with torch.distributed)")
    return _JaxComm(axis_name)


class _JaxComm:
    """Inside ``shard_map`` / ``pmap``: equal shards, ``all_gather`` and ``psum`` (JAX
    differentiates both: the transpose of the gather is a ``psum_scatter``)."""

    def __init__(self, axis_name):
        self.axis_name = axis_name

    def gather(self, ctx, x, y):
        import jax

        if x.shape[0] == 0:  # equal shards: the global batch is empty too (no all_gather of 0 rows)
            return x, y, ctx.xp.zeros((), dtype=ctx.backend.index_dtype(ctx.xp), device=ctx.device)
        X = jax.lax.all_gather(x, self.axis_name, tiled=True)
        Y = jax.lax.all_gather(y, self.axis_name, tiled=True)
        idt = ctx.backend.index_dtype(ctx.xp)
        offset = jax.lax.axis_index(self.axis_name).astype(idt) * x.shape[0]
        return X, Y, offset

    def sum(self, ctx, v):
        import jax

        return jax.lax.psum(v, self.axis_name)


def _torch_autograd_functions():
    import torch
    import torch.distributed as dist

    class AllGatherRows(torch.autograd.Function):
        """Rows of every rank, in rank order (uneven counts padded for the transfer).

        Backward: every rank's loss reads the whole gathered batch, so the gradient of a
        rank's rows is the sum over ranks of their gradients for those rows (an
        all-reduce, then this rank's slice)."""

        @staticmethod
        def forward(ctx, x, sizes, rank, group):
            mx = max(sizes)
            pad = x
            if x.shape[0] < mx:
                pad = torch.cat([x, x.new_zeros((mx - x.shape[0],) + tuple(x.shape[1:]))])
            pad = pad.contiguous()
            bufs = [torch.empty_like(pad) for _ in sizes]
            dist.all_gather(bufs, pad, group=group)
            ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
            return torch.cat([b[:s] for b, s in zip(bufs, sizes)])

        @staticmethod
        def backward(ctx, grad):
            g = grad.contiguous().clone()
            dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
            start = sum(ctx.sizes[: ctx.rank])
            return g[start : start + ctx.sizes[ctx.rank]], None, None, None

    class AllReduceSum(torch.autograd.Function):
        """The global sum, on every rank; backward: the sum of every rank's gradient."""

        @staticmethod
        def forward(ctx, v, group):
            out = v.clone().contiguous()
            dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
            ctx.group = group
            return out

        @staticmethod
        def backward(ctx, grad):
            g = grad.contiguous().clone()
            dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
            return g, None

    return AllGatherRows, AllReduceSum


_TORCH_FUNCTIONS = None


#: bytes of an argument error's message exchanged between ranks (longer ones are cut)
_MESSAGE_BYTES = 1024
_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")


def _dtype_code(dtype) -> int:
    name = str(dtype).rsplit(".", 1)[-1]
    return _DTYPE_NAMES.index(name) if name in _DTYPE_NAMES else len(_DTYPE_NAMES)


def _describe(k: int, v: int) -> str:
    if k == 2:
        return f"{v} columns"
    return f"dtype {_DTYPE_NAMES[v]}" if 0 <= v < len(_DTYPE_NAMES) else "another dtype"


def torch_comm(group):
    """The torch communicator of ``group`` (for a rank whose input failed validation,
    so that it still takes part in the status exchange), or None where torch.distributed
    cannot serve it (not initialised, not a process group: every rank fails alike then)."""
    try:
        return _TorchComm(group)
    except Exception:
        return None


class _TorchComm:
    """torch.distributed (gloo, NCCL, ...): uneven per-rank batches."""

    def __init__(self, group):
        import torch.distributed as dist

        global _TORCH_FUNCTIONS
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("process_group: torch.distributed is not initialised (call init_process_group)")
        if not isinstance(group, dist.ProcessGroup):
            raise TypeError(f"process_group: expected a torch.distributed ProcessGroup (e.g. "
                            f"torch.distributed.group.WORLD), got {type(group).__name__}")
        if _TORCH_FUNCTIONS is None:
            _TORCH_FUNCTIONS = _torch_autograd_functions()
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    def agree(self, ctx, x, error, like=None, budget=None, path=0):
        """Every rank's rows, columns, dtype, argument errors, memory budget and path in
        one small all-gather (the one that learns the uneven row counts): returns
        ``(sizes, budget, paths)`` (the rows per rank, the smallest budget of the ranks
        that gave one, every rank's ``path`` code), or raises the same error on every
        rank.

        ``error``: this rank's argument error (a ValueError/TypeError raised while
        validating its input; ``ctx``/``x`` are None then), or None.  A rank with bad
        input would otherwise raise alone while the others wait in the next collective
        until its timeout.  Raised alike on every rank: the first failing rank's error
        (its type and message, exchanged in a second all-gather that only runs then),
        and a mismatch of the embeddings' columns or dtype between ranks (a ValueError
        naming ``embeddings`` and the ranks).  ``like``: an array whose device the
        exchange uses when this rank has no valid ``x``."""
        import torch
        import torch.distributed as dist

        device = x.device if x is not None else self._device(like)
        if error is None:
            status = [1, x.shape[0], x.shape[1], _dtype_code(ctx.out_dtype), budget or 0, path]
        else:
            status = [0, 0, 0, -1, 0, path]
        mine = torch.tensor(status, dtype=torch.int64, device=device)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine, group=self.group)
        rows = torch.stack(every).cpu().tolist()  # one copy to the host
        failed = [r for r, st in enumerate(rows) if st[0] == 0]
        if failed:
            self._raise_everywhere(failed, error, device)
        for k, what in ((2, "number of columns"), (3, "dtype")):
            if any(st[k] != rows[0][k] for st in rows):
                r = next(r for r, st in enumerate(rows) if st[k] != rows[0][k])
                have = [f"{_describe(k, st[k])} on rank {q}" for q, st in enumerate(rows)]
                raise ValueError(
                    f"embeddings: {', '.join(have)}: every rank of the process group must pass "
                    f"embeddings with the same {what} (rank {r} differs from rank 0)")
        budgets = [st[4] for st in rows if st[4] > 0]
        return [st[1] for st in rows], (min(budgets) if budgets else None), [st[5] for st in rows]

    def _device(self, like):
        import torch
        import torch.distributed as dist

        if isinstance(like, torch.Tensor):
            return like.device
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _raise_everywhere(self, failed, error, device):
        """The first failing rank's error, raised on every rank (its message sent in a
        fixed-size byte buffer: every rank knows from the status gather that it runs)."""
        import torch
        import torch.distributed as dist

        msg = b""
        if error is not None:
            kind = b"T" if isinstance(error, TypeError) else b"V"
            msg = (kind + str(error).encode("utf-8", "replace"))[:_MESSAGE_BYTES]
        buf = torch.zeros(_MESSAGE_BYTES, dtype=torch.uint8, device=device)
        if msg:
            buf[:len(msg)] = torch.tensor(list(msg), dtype=torch.uint8, device=device)
        bufs = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(bufs, buf, group=self.group)
        r0 = failed[0]
        raw = bytes(bufs[r0].cpu().tolist()).rstrip(b"\0")
        cls = TypeError if raw[:1] == b"T" else ValueError
        text = raw[1:].decode("utf-8", "replace") or "bad input"
        more = f"; ranks {failed} all failed" if len(failed) > 1 else ""
        exc = cls(f"{text} [on rank {r0} of the {self.world} in the process group{more}; every rank "
                  "raises this error]")
        raise exc from error

    def gather(self, ctx, x, y, sizes=None):
        """The global batch (``sizes``: every rank's rows, from :meth:`agree`; None:
        gathered here)."""
        import torch
        import torch.distributed as dist

        gather_rows, _ = _TORCH_FUNCTIONS
        if sizes is None:
            n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
            ns = [torch.empty_like(n) for _ in range(self.world)]
            dist.all_gather(ns, n, group=self.group)
            sizes = [int(t) for t in ns]
        X = gather_rows.apply(x, sizes, self.rank, self.group)
        with torch.no_grad():
            Y = gather_rows.apply(y.to(torch.int64), sizes, self.rank, self.group)
        offset = torch.tensor(sum(sizes[: self.rank]), dtype=torch.int64, device=x.device)
        return X, Y, offset

    def sum(self, ctx, v):
        _, all_reduce = _TORCH_FUNCTIONS
        return all_reduce.apply(v, self.group)


def match_vma(ct, primal):
    """A cotangent with the manual-axis type (``vma``) of its primal, inside ``shard_map``.

    A ``custom_vjp`` backward rule must return cotangents typed like the primal inputs: a
    primal that varies over a mesh axis (a shard) needs a varying cotangent (``pcast``),
    and an invariant primal (a replicated margin) needs the cotangent summed over the axes
    it varies on (``psum``, the transpose of the implicit broadcast).  Outside
    ``shard_map`` both sets are empty and ``ct`` is returned as is.
    """
    import jax

    typeof = getattr(jax, "typeof", None)
    if typeof is None:  # a JAX without manual-axis types
        return ct
    want, have = _varying(typeof(primal)), _varying(typeof(ct))
    extra = tuple(sorted(have - want))
    if extra:
        ct = jax.lax.psum(ct, extra)
    missing = tuple(sorted(want - have))
    if missing:
        ct = jax.lax.pcast(ct, missing, to="varying")
    return ct


def _varying(aval) -> set:
    """The mesh axes an abstract value varies over (``vma`` in JAX 0.6-0.9,
    ``manual_axis_type.varying`` later); empty outside ``shard_map``."""
    vma = getattr(aval, "vma", None)
    if vma is None:
        mat = getattr(aval, "manual_axis_type", None)
        vma = getattr(mat, "varying", None)
    return set(vma or ())


def checkpoint(be, f, *args):
    """``f(*args)`` whose intermediates are not kept for the backward, which recomputes
    them (torch: non-reentrant ``torch.utils.checkpoint``; JAX: ``jax.checkpoint``).
    Without autodiff, or when nothing needs a gradient, a plain call."""
    if be.name == "torch":
        import torch

        if torch.is_grad_enabled() and any(getattr(a, "requires_grad", False) for a in args):
            from torch.utils.checkpoint import checkpoint as ckpt

            return ckpt(f, *args, use_reentrant=False)
        return f(*args)
    if be.name == "jax":
        import jax

        if any(isinstance(a, jax.core.Tracer) for a in args):  # under jit / grad
            return jax.checkpoint(f)(*args)
        return f(*args)  # eager: nothing is kept for a backward
    return f(*args)


def scan_blocks(be, body, xs, traced=()):
    """JAX under a trace (``jit`` / ``grad``): ``body(*xs_k)`` for every slice ``xs_k``
    along the leading axis of the arrays ``xs`` (``traced``: the other arrays ``body``
    reads, checked for a trace too), as one ``lax.scan`` whose step is under
    ``jax.checkpoint``; returns the outputs stacked along a new leading axis (a pytree
    like ``body``'s).

    One compiled step for every block: XLA keeps one block's ``(rows, R)`` arrays alive
    at a time, and the backward recomputes each block from its saved inputs (the rows
    and the loop-invariant arrays ``body`` closes over) instead of storing them.  None
    where this does not apply: another backend, or no abstract value among the inputs
    (eager JAX, also ``jax.grad`` outside ``jit``, whose tracers hold concrete values: a
    scan would compile its step again at every call, 7x the time of the op-by-op
    checkpointed blocks, which hold one block at a time already)."""
    if be.name != "jax":
        return None
    import jax

    if not any(_abstract(jax, a) for a in (*xs, *traced)):
        return None
    step = jax.checkpoint(lambda *a: body(*a))

    def scan_step(carry, a):
        return carry, step(*a)

    _, stacked = jax.lax.scan(scan_step, None, tuple(xs))
    return stacked


def _abstract(jax, a) -> bool:
    """``a`` is traced without a concrete value (under ``jit``, ``vmap``, ``shard_map``)."""
    if not isinstance(a, jax.core.Tracer):
        return False
    concrete = getattr(a, "to_concrete_value", None)
    return concrete is None or concrete() is None


def fused_block_sum(be, run_block, starts, inputs):
    """torch: the sum over row blocks of ``run_block(start, leaves) -> (scalar, info)``
    with each block's forward *and* backward done now, one block at a time, so only one
    block's graph is ever alive and nothing is recomputed.

    ``inputs`` are the tensors the blocks read (embeddings, reference set, a learnable
    margin); ``leaves`` are detached copies that require grad where the input does.  The
    gradients are accumulated per input and returned by the backward of the result
    (scaled by its upstream gradient): first-order only.  Returns ``(total, infos)``, or
    None where this does not apply (not torch, or no input needs a gradient).
    """
    if be.name != "torch":
        return None
    import torch

    if not torch.is_grad_enabled() or not any(getattr(a, "requires_grad", False) for a in inputs):
        return None
    leaves = [a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in inputs]
    need = [i for i, a in enumerate(leaves) if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = [None] * len(inputs)
    total, infos = None, []
    for s in starts:
        out, info = run_block(s, leaves)
        if out.requires_grad:
            gs = torch.autograd.grad(out, [leaves[i] for i in need], allow_unused=True)
            for i, g in zip(need, gs):
                if g is not None:
                    grads[i] = g if grads[i] is None else grads[i] + g
        out = out.detach()
        total = out if total is None else total + out
        infos.append({k: v.detach() for k, v in info.items()})
    for i in need:
        # a zero gradient, not None: the backward must reach every input on every rank
        # (the gathered global batch's backward is a collective)
        if grads[i] is None:
            grads[i] = torch.zeros_like(inputs[i])
    return _fused_function().apply(total, grads, *inputs), infos


_FUSED = None


def _fused_function():
    global _FUSED
    if _FUSED is None:
        import torch

        class FusedSum(torch.autograd.Function):
            @staticmethod
            def forward(ctx, total, grads, *inputs):
                ctx.grads = grads
                return total.clone()

            @staticmethod
            def backward(ctx, g):
                if torch.is_grad_enabled():
                    raise RuntimeError("chunk_size=: the torch gradients of a chunked loss are first-order "
                                       "only (computed block by block in the forward); use chunk_size=0 "
                                       "for double backward")
                return (None, None, *[None if gr is None else g * gr for gr in ctx.grads])

        _FUSED = FusedSum
    return _FUSED
