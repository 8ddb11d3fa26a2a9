"""PyTorch backend (CPU and CUDA); imported only when torch is in use."""
from __future__ import annotations

import numpy as np
import torch

from ._base import Backend


class _SafeSqrt(torch.autograd.Function):
    """sqrt with gradient 0 where the input is 0 (one pass forward, one backward)."""

    generate_vmap_rule = True  # torch.func.vmap

    @staticmethod
    def forward(x):
        return torch.sqrt(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return torch.where(out > 0, grad / (2 * out), torch.zeros((), dtype=grad.dtype, device=grad.device))


# --- the mining steps' NumPy kernels as torch custom ops, built from each step's spec ------
from ..mining import SQDIST, NativeUnsupported, kernel_steps  # noqa: E402

# a kernel output kind -> its torch dtype ("float": the dtype of the step's first input)
_KIND_DTYPE = {"int32": torch.int32, "index": torch.int64, "bool": torch.bool}


def _dtype_of(kind, like):
    return like.dtype if kind == "float" else _KIND_DTYPE[kind]


def _host(t):
    return t.detach().numpy()


def _vmap_sequential(op, n_out):
    """A ``register_vmap`` rule: run ``op`` once per batch element and stack (the kernels
    are NumPy: there is nothing to batch), so ``torch.func.vmap`` works."""

    def rule(info, in_dims, *args):
        size = info.batch_size
        outs = []
        for i in range(size):
            sl = [a if dim is None else a.select(dim, i) for a, dim in zip(args, in_dims)]
            res = op(*sl)
            outs.append(res if isinstance(res, tuple) else (res,))
        stacked = tuple(torch.stack([o[k] for o in outs]) for k in range(n_out))
        if n_out == 1:
            return stacked[0], 0
        return stacked, (0,) * n_out

    return rule


class _TorchStep:
    """One mining step's NumPy kernel as torch custom ops (forward, and backward when the
    step is differentiable) with fake kernels (``torch.compile`` captures them) and vmap
    rules, inside ``autograd.Function``s (so ``torch.func.grad`` / ``vmap`` work): the
    margin's gradient from the spec's slopes, the backward's own derivative from the
    spec's linear map (so ``create_graph=True`` works).  Built once per step, for every
    step alike."""

    def __init__(self, step):
        k = step.kernel
        self.step, self.kernel = step, k
        n_in, n_out = len(k.inputs), len(k.outputs)
        ins = ", ".join(f"Tensor {name}" for name in k.inputs)
        outs = ", ".join("Tensor" for _ in k.outputs)

        def forward_impl(*args):
            host = [_host(a) for a in args]
            res = k.forward(*host)
            # (ascontiguousarray makes a 0-d output 1-d: its shape is restored)
            return tuple(torch.from_numpy(np.ascontiguousarray(r, dtype=_np_dtype(kind, host[0])).reshape(np.shape(r)))
                         for r, kind in zip(res, k.outputs))

        def forward_fake(*args):
            return tuple(args[0].new_empty(k.out_shape(i, args[0].shape), dtype=_dtype_of(kind, args[0]))
                         for i, kind in enumerate(k.outputs))

        fwd = torch.library.custom_op(f"triplet_ref::{step.name}", forward_impl, mutates_args=(),
                                      schema=f"({ins}) -> ({outs})")
        fwd.register_fake(forward_fake)
        fwd.register_vmap(_vmap_sequential(fwd, n_out))
        # the OpOverload (torch.ops.triplet_ref.<name>.default): what dynamo traces
        fwd = self.op = fwd._opoverload
        if k.backward is None:
            self.apply = None
            return

        saved = ", ".join(f"Tensor saved{i}" for i in k.saved)
        bwd_schema = f"({ins}, Tensor grad{', ' + saved if saved else ''}) -> Tensor"

        def backward_impl(*args):
            host = [_host(a) for a in args]
            out = k.backward(*host)
            return torch.from_numpy(np.ascontiguousarray(out, dtype=host[0].dtype))

        bwd = torch.library.custom_op(f"triplet_ref::{step.name}_backward", backward_impl,
                                      mutates_args=(), schema=bwd_schema)
        bwd.register_fake(lambda *args: torch.empty_like(args[0]))
        bwd.register_vmap(_vmap_sequential(bwd, 1))
        bwd = bwd._opoverload

        # the closures dynamo traces (setup_context, backward) hold plain values only
        linear, n_saved, backward_ad = k.linear, len(k.saved), k.backward_ad
        saved_idx = tuple(k.saved)
        slopes = tuple((i, saved_idx.index(j)) for i, j in k.slopes.items())
        nondiff = tuple(i for i, kind in enumerate(k.outputs) if kind != "float")
        no_second = (f"{step.loss}: second-order derivatives through the native CPU kernel of "
                     f"{step.name!r} are not implemented; run the portable implementation with "
                     "triplet_ref.mining.force('portable')")

        def bwd_setup(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        def bwd_backward(ctx, v):
            # the backward is linear in ``grad`` and piecewise constant in the other
            # inputs: its derivative in ``grad`` is the step's linear map applied to v
            if linear is None:
                raise NotImplementedError(no_second)
            args = ctx.saved_tensors
            arrays, saved_out = args[:n_in], args[n_in + 1:]
            gv = linear(_context(arrays[0]), *arrays, v, *saved_out)
            return (None,) * n_in + (gv,) + (None,) * n_saved

        Backward = _function(f"{step.name}_backward", bwd, bwd_setup, bwd_backward)

        def fwd_setup(ctx, inputs, output):
            ctx.save_for_backward(*inputs, *(output[i] for i in saved_idx))
            ctx.mark_non_differentiable(*(output[i] for i in nondiff))

        def fwd_backward(ctx, grad, *_):
            args = ctx.saved_tensors
            arrays, saved_out = args[:n_in], args[n_in:]
            if backward_ad is not None and torch.is_grad_enabled():
                # the backward is differentiated (create_graph=True, torch.func): the
                # step's differentiable array-API backward, on the autograd tape
                ad = backward_ad(_context(arrays[0]), *arrays, grad)
                return tuple(g if need else None for g, need in zip(ad, ctx.needs_input_grad))
            grads = [None] * n_in
            if ctx.needs_input_grad[0]:
                bargs = (*arrays, grad.contiguous(), *saved_out)
                # create_graph=True: through an autograd.Function, differentiable again
                grads[0] = Backward.apply(*bargs) if torch.is_grad_enabled() else bwd(*bargs)
            for i, j in slopes:  # d out0 / d input i = a saved output, elementwise
                if ctx.needs_input_grad[i]:
                    grads[i] = torch.sum(grad * saved_out[j].to(grad.dtype)).to(arrays[i].dtype)
            return tuple(grads)

        self.apply = _function(step.name, fwd, fwd_setup, fwd_backward).apply

    def __call__(self, *arrays):
        if self.apply is None:  # not differentiable: indices, flags
            return self.op(arrays[0].detach(), *arrays[1:])
        if not (torch.is_grad_enabled() and any(a.requires_grad for a in arrays)):
            return self.op(*arrays)
        return self.apply(*arrays)


def _function(name, op, setup_context, backward):
    """An ``autograd.Function`` running custom op ``op`` (functorch-compatible: a separate
    ``setup_context``, and a vmap rule generated from the op's own)."""

    n = len(op._schema.arguments)
    names = ", ".join(f"a{i}" for i in range(n))
    # a forward with the op's arity spelt out (dynamo reads the signature)
    scope = {"op": op}
    exec(f"def forward({names}):\n    return op({names})\n", scope)
    forward = scope["forward"]

    return type(f"_{name}", (torch.autograd.Function,), {
        "generate_vmap_rule": True,
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
    })


def _vmapped(x) -> bool:
    """Whether ``x`` is being batched by ``torch.func.vmap`` (at any functorch level)."""
    f = torch._C._functorch
    while f.is_functorch_wrapped_tensor(x):
        if f.is_batchedtensor(x):
            return True
        x = f.get_unwrapped(x)
    return False


def _plain(*xs) -> bool:
    """Whether the tensors ``xs`` are plain eager tensors: not traced by ``torch.compile``
    and not functorch wrappers (``torch.func`` transforms).  The mask primitives' uint8
    views and NumPy round trips run on plain tensors only; the generic ones elsewhere."""
    if torch.compiler.is_compiling():
        return False
    return not any(torch._C._functorch.is_functorch_wrapped_tensor(x) for x in xs)


def _np_dtype(kind, like):
    return like.dtype if kind == "float" else {"int32": np.int32, "index": np.int64, "bool": np.bool_}[kind]


def _context(like):
    from ._base import Context

    import array_api_compat.torch as xp

    return Context(backend=BACKEND, xp=xp, device=like.device, dtype=like.dtype, out_dtype=like.dtype)


_STEPS: dict = {}


def _native_step(step):
    op = _STEPS.get(step.name)
    if op is None:
        op = _STEPS[step.name] = _TorchStep(step)
    return op


class TorchBackend(Backend):
    name = "torch"
    supports_grad = True
    supports_jit = True

    def namespace(self):
        import array_api_compat.torch as xp

        return xp

    def is_native(self, x):
        return isinstance(x, torch.Tensor)

    def device_of(self, x):
        return x.device

    def carries_grad(self, x):
        return isinstance(x, torch.Tensor) and x.requires_grad

    def from_numpy(self, a, dtype=None, device=None):
        a = np.asarray(a)
        if not a.flags.writeable:  # e.g. a view of a JAX array: torch wants writable memory
            a = a.copy()
        if dtype in ("bfloat16",):
            return torch.as_tensor(a.astype(np.float32), device=device).to(torch.bfloat16)
        if dtype is not None:
            a = a.astype(dtype)
        return torch.as_tensor(a, device=device)

    def to_numpy(self, x):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()

    def safe_sqrt(self, xp, x):
        return _SafeSqrt.apply(x)

    def native_kernel(self, step, like):
        if step is SQDIST:
            if not torch.compiler.is_compiling() and _vmapped(like):
                return None  # its in-place epilogue has no batching rule: the portable formula
            from ..distances import close_pair_threshold

            return lambda x, squared: _PairwiseSq.apply(
                x, squared, close_pair_threshold(torch, x.dtype))
        if like.device.type != "cpu":
            return None  # CUDA: the portable torch.sort / torch.searchsorted path
        return _native_step(step) if step.kernel is not None else None

    def refine_sqdist(self, xp, x, d, w, tau, pairs):
        if not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(d):
            # under torch.func transforms (vmap, grad, ...): the data-dependent refinement
            # has no rule there, the Gram values are kept (docs/semantics.md, Tolerances)
            return d
        from .. import distances

        kind = {distances.sqeuclidean_pairs: "sqeuclidean", distances.cosine_pairs: "cosine"}[pairs]
        return _refine_close_pairs(x, d, w, float(tau), kind)

    def block_distances(self, xp, xb, X, squared, offset):
        if torch.compiler.is_compiling() or _vmapped(xb) or _vmapped(X):
            return None  # in-place epilogue: no batching rule, opaque to dynamo
        return _CrossSq.apply(xb, X, squared, offset)

    def finish_sqdist(self, xp, d2, sqrt):
        d2 = torch.clamp_min(d2, 0)
        d2.diagonal().zero_()  # (fill_diagonal_ would specialise torch.compile(dynamic=True) on B)
        return _SafeSqrt.apply(d2) if sqrt else d2

    def sort_rows(self, xp, x):
        return torch.sort(x, dim=-1).values

    def argsort_rows(self, xp, x):
        return torch.sort(x, dim=-1, stable=True).indices

    def searchsorted_rows(self, xp, sorted_rows, values, side="left"):
        return torch.searchsorted(sorted_rows.contiguous(), values.contiguous(), side=side)

    def take_rows(self, xp, x, idx):
        return torch.gather(x, -1, idx.to(torch.int64))

    # torch's CPU reductions of bool and integer (B, R) arrays are scalar loops (at
    # 4096²: ``mask.any(1)`` 10 ms, ``mask & flags[:, None]`` 6 ms, an int32 sum 80 ms);
    # the same results from uint8 views (0.1 ms, 0.6 ms) and from NumPy's SIMD sum (8 ms)
    def any_rows(self, xp, mask):
        if mask.shape[1] == 0 or not _plain(mask):
            return super().any_rows(xp, mask)  # (amax has no empty reduction; vmap: generic)
        return mask.view(torch.uint8).amax(dim=1).view(torch.bool)

    def and_rows(self, xp, mask, flags):
        if not _plain(mask, flags):
            return super().and_rows(xp, mask, flags)
        if mask.device.type == "cpu" and bool(flags.all()):
            return mask  # every row kept (the usual case: a host check, no (B, R) pass)
        return torch.bitwise_and(mask.view(torch.uint8), flags.view(torch.uint8)[:, None]).view(torch.bool)

    def equal_labels(self, xp, a, b):
        if a.device.type != "cpu" or not _plain(a, b):
            return super().equal_labels(xp, a, b)
        # NumPy's broadcast compare (SIMD) instead of torch's (a scalar loop: 5x slower)
        return torch.from_numpy(np.equal.outer(a.numpy(), b.numpy()))

    def label_masks(self, xp, labels, device):
        if labels.device.type != "cpu" or not _plain(labels):
            return super().label_masks(xp, labels, device)
        # the compare, then the diagonal cleared in place: two (B, B) passes, not five
        eq = self.equal_labels(xp, labels, labels)
        neg = torch.logical_not(eq)
        eq.diagonal().fill_(False)
        return eq, neg

    def count_true(self, xp, mask, axis, dtype):
        if mask.device.type != "cpu" or mask.ndim != 2 or axis not in (None, 1) or not _plain(mask):
            return super().count_true(xp, mask, axis, dtype)
        # NumPy's count (0.6 ms at 4096², torch's 3.5 ms; per row 5 ms against 41 ms)
        return torch.from_numpy(np.asarray(np.count_nonzero(mask.numpy(), axis=axis))).to(dtype)

    def sum_ints(self, xp, a, dtype):
        if a.device.type != "cpu" or a.dtype.is_floating_point or not _plain(a):
            return torch.sum(a, dtype=dtype)
        total = a.numpy().sum(dtype=np.int64)  # exact (int64 accumulation), SIMD
        return torch.tensor(int(total), dtype=dtype)


    def value_and_grad(self, fn, x):
        x = x.detach().clone().requires_grad_(True)
        y = fn(x)
        (g,) = torch.autograd.grad(y, x)
        return y.detach().cpu().double().numpy(), self.to_numpy(g)

    def jit(self, fn):
        return torch.compile(fn, fullgraph=True, dynamic=False)

    def devices(self):
        devs = ["cpu"]
        if torch.cuda.is_available():
            devs.append("cuda")
        return devs

    def synchronize(self, x=None):
        if torch.cuda.is_available():
            torch.cuda.synchronize()


BACKEND = TorchBackend()


# every step's custom ops now, outside any trace: torch.compile cannot trace
# torch.library's registration (a first native call inside a compiled function)
for _step in kernel_steps():
    _native_step(_step)


# --- pairwise distances: upper-stripe GEMMs, in-place blocked epilogue, GEMM backward -----
#: rows per GEMM (the upper part of a stripe of rows: fewer rows, more GEMM calls and
#: more wasted diagonal-block work) and per in-place epilogue block (its stripe stays in
#: cache); chosen by timing variants at B = 4096, D = 128, float32, one thread (GEMM rows
#: 128-1024 with 64-256 epilogue rows came within a few percent of each other; 64 GEMM
#: rows and a single GEMM of all rows were 10-20% slower).  256 epilogue rows: half the
#: operator calls of 128 (each is a parallel region; they cost most on a busy machine)
_GEMM_ROWS = 512
_BLOCK = 256

from torch import Tensor  # noqa: E402  (the custom ops' schemas are read from annotations)
from ..mining import _blocks  # noqa: E402
from ..mining.sqdist import StripePass, stripe_kernel  # noqa: E402


def _pairs_fn(kind: str):
    from .. import distances

    return {"sqeuclidean": distances.sqeuclidean_pairs, "cosine": distances.cosine_pairs}[kind]


def _refine_found(x, d, thr, r, c, vals, pairs, sqrt):
    """Torch twin of ``_numpy.refine_sparse_inplace`` (in place on ``d``): the candidates
    ``r < c`` with Gram values ``vals`` that pass ``vals < thr_r + thr_c`` are recomputed
    by ``pairs``; then rows equal to an earlier row copy its distances."""
    import array_api_compat.torch as xp

    keep = vals < thr[r] + thr[c]
    r, c = r[keep], c[keep]
    if r.numel() == 0:
        return d
    step = max(1, (1 << 20) // max(1, x.shape[1]))
    dup_r, dup_c = [], []
    for s in range(0, r.numel(), step):
        rr, cc = r[s:s + step], c[s:s + step]
        a, b = x[rr], x[cc]
        v = pairs(xp, a, b)
        same = (v == 0) & (a == b).all(1)
        dup_r.append(rr[same])
        dup_c.append(cc[same])
        if sqrt:
            v = v.sqrt()
        d[rr, cc] = v
        d[cc, rr] = v
    dup_r, dup_c = torch.cat(dup_r), torch.cat(dup_c)
    if dup_r.numel():
        n = d.shape[0]
        ar = torch.arange(n, device=d.device)
        rep = ar.scatter_reduce(0, dup_c, dup_r, reduce="amin")
        moved = torch.nonzero(rep != ar).flatten()
        d.fill_diagonal_(0)
        d[moved, :] = d[rep[moved], :]
        d[:, moved] = d[:, rep[moved]]
    return d


def _candidates(d, thr):
    """Pairs ``r < c`` of ``d`` below the per-row screen ``thr_r + max(thr)``."""
    m = d < (thr + thr.max())[:, None]
    r, c = torch.nonzero(m, as_tuple=True)
    keep = r < c
    r, c = r[keep], c[keep]
    return r, c, d[r, c]


@torch.library.custom_op("triplet_ref::pairwise_sqdist", mutates_args=())
def _pairwise_sqdist(x: Tensor, squared: bool, tau: float) -> Tensor:
    """The forward of ``_PairwiseSq``: opaque to torch.compile (its in-place stripes and its
    data-dependent refinement of close pairs run eagerly).

    One stripe of ``_BLOCK`` rows at a time, from the last stripe up: the GEMM of the rows
    ``i:i2`` with the rows ``i:`` only (the upper part: half the flops of ``xc @ xc.T``),
    written straight into the output; the epilogue in place while the stripe is in cache;
    then the stripe mirrored below the diagonal (exact symmetry by construction: torch's
    GEMM does not promise ``G_ij == G_ji`` bit for bit).  ``|xc_j|²`` is the Gram diagonal
    of the stripe holding row j (the same kernel computes ``G_ii``, ``G_jj`` and ``G_ij``):
    bottom-up, every column of a stripe has it before the stripe's epilogue."""
    xc = x - x[:1]
    n = xc.shape[0]
    if xc.device.type == "cpu" and n > 1:
        dtype = _NP_DTYPES.get(xc.dtype)
        kernel = stripe_kernel(dtype) if dtype is not None else None
        if kernel is not None:
            return _pairwise_sqdist_numba(x, xc.contiguous(), squared, tau, kernel)
    d = xc.new_empty((n, n))
    sq = xc.new_empty((n,))
    thr = xc.new_empty((n,))
    found = []
    for g in reversed(range(0, n, _GEMM_ROWS)):
        g2 = min(n, g + _GEMM_ROWS)
        torch.mm(xc[g:g2], xc[g:].t(), out=d[g:g2, g:])
        sq[g:g2] = d[g:g2, g:g2].diagonal()
        if tau > 0:
            torch.mul(sq[g:g2], tau, out=thr[g:g2])
        for i in range(g, g2, _BLOCK):
            i2 = min(g2, i + _BLOCK)
            t = d[i:i2, i:]
            blk = t[:, :i2 - i]
            # d² = |xc_j|² − 2 G_ij + |xc_i|², in place (the stripe is cache-sized)
            torch.add(sq[None, i:], t, alpha=-2, out=t)
            t.add_(sq[i:i2, None])
            if tau > 0:
                # close pairs: screened per row against thr_r + max_{j >= i} thr_j (a row
                # minimum first: one read of the stripe, no boolean stripe written; a NaN
                # minimum, from a NaN row, takes the full comparison), tested exactly in
                # _refine_found.  The diagonal (d² ~ 0) is inf meanwhile (zeroed at the end).
                screen = thr[i:i2] + thr[i:].max()
                blk.diagonal().fill_(float("inf"))
                if bool((~(t.amin(dim=1) >= screen)).any()):
                    r, c = torch.nonzero(t < screen[:, None], as_tuple=True)
                    keep = c > r
                    r, c = r[keep], c[keep]
                    found.append((r + i, c + i, t[r, c]))
            t.clamp_min_(0)
            if not squared:
                t.sqrt_()
            # exact symmetry: the diagonal block's lower triangle and the part of the
            # matrix below the stripe are copies of the values above the diagonal
            blk.copy_(torch.triu(blk) + torch.triu(blk, 1).t())
            d[i2:, i:i2] = t[:, i2 - i:].t()
    d.diagonal().zero_()
    if found:
        r, c, vals = (torch.cat(z) for z in zip(*found))
        _refine_found(x, d, thr, r, c, vals, _pairs_fn("sqeuclidean"), sqrt=not squared)
    return d


#: the dtypes the numba stripe pass runs (others: the torch stripes)
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
#: columns per tile of the numba stripe pass (``_numba_sqdist.sqdist_stripe``)
_NUMBA_TILE = 128
#: close pairs the numba pass stores per row on average (more: one search of the result)
_FOUND_PER_ROW = 16
#: a stripe's columns are split among threads from this many entries of the stripe on
_THREAD_MIN = 1 << 18


def _pairwise_sqdist_numba(x, xc, squared, tau, kernel):
    """``_pairwise_sqdist`` with the numba stripe pass: per stripe of ``_GEMM_ROWS`` rows,
    the GEMM of its part on and right of the diagonal into the output; then ``kernel``
    (epilogue, close-pair test, clamp, square root, zero diagonal and mirror in one sweep
    over cache-sized tiles) on every stripe, its columns split among
    ``torch.get_num_threads()`` threads (at most the cores) for a large stripe
    (:class:`~triplet_ref.mining.sqdist.StripePass`); then the close pairs found are
    refined (``_refine_found``)."""
    n = xc.shape[0]
    d = xc.new_empty((n, n))
    sq = xc.new_empty((n,))
    thr = xc.new_empty((n,))
    workers = min(torch.get_num_threads(), _blocks.cpu_count())
    sqrt = not squared
    starts = range(0, n, _GEMM_ROWS)
    for g in starts:
        g2 = min(n, g + _GEMM_ROWS)
        torch.mm(xc[g:g2], xc[g:].t(), out=d[g:g2, g:])
    # every GEMM first, then the pass: between an MKL call and the pass, torch's OpenMP
    # workers spin-wait on the cores the pass's threads need (measured at B = 4096, 2
    # threads: the same wall time as a pass after each GEMM, 20 % less CPU time)
    sq.copy_(d.diagonal())
    if tau > 0:
        torch.mul(sq, tau, out=thr)
    else:
        thr.fill_(float("-inf"))  # distances.unrefined(): no pair is close
    with StripePass(kernel, d.numpy(), sq.numpy(), thr.numpy(), sqrt, _NUMBA_TILE, workers,
                    _THREAD_MIN, _FOUND_PER_ROW) as sp:
        for g in starts:
            sp.stripe(g, min(n, g + _GEMM_ROWS))
    if not sp.count:
        return d
    found = sp.found()
    if found is None:
        # more close pairs than the buffers hold (many duplicates): search the result
        r, c, vals = _candidates(d * d if sqrt else d, thr)
    else:
        r, c, vals = (torch.from_numpy(a) for a in found)
    _refine_found(x, d, thr, r, c, vals, _pairs_fn("sqeuclidean"), sqrt=sqrt)
    return d


@_pairwise_sqdist.register_fake
def _(x, squared, tau):
    return x.new_empty((x.shape[0], x.shape[0]))


@torch.library.custom_op("triplet_ref::refine_close_pairs", mutates_args=())
def _refine_close_pairs(x: Tensor, d: Tensor, w: Tensor, tau: float, kind: str) -> Tensor:
    """``Backend.refine_sqdist`` for torch (the cosine path): values only."""
    d = d.clone()
    if d.shape[0] < 2 or tau <= 0:
        return d
    thr = w * tau
    r, c, vals = _candidates(d, thr)
    return _refine_found(x, d, thr, r, c, vals, _pairs_fn(kind), sqrt=False)


@_refine_close_pairs.register_fake
def _(x, d, w, tau, kind):
    return torch.empty_like(d)


def _refine_backward(ctx, grad):
    # the refined values are the same function of x as the Gram formula's (they differ only
    # in rounding): the gradient passes through to d unchanged
    return None, grad, None, None, None


def _refine_setup(ctx, inputs, output):
    pass  # nothing to save (functorch transforms want a setup_context)


_refine_close_pairs.register_autograd(_refine_backward, setup_context=_refine_setup)


class _PairwiseSq(torch.autograd.Function):
    """Euclidean (or squared) distances of the rows of ``x`` with few B×B passes.

    Forward (the custom op ``triplet_ref::pairwise_sqdist``): rows shifted by the first
    row; one stripe of rows at a time (the last first), the GEMM of the stripe with the rows
    on and right of the diagonal only (half the flops of ``xc xcᵀ``), written into the
    output, then ``d² = |xc_i|² + |xc_j|² − 2 G_ij``, clamped at 0, square-rooted — in
    place while the stripe is in cache — and mirrored below the diagonal (exactly
    symmetric by construction, whatever the GEMM's rounding), so a 4096² float32 problem
    allocates one B×B buffer instead of about eight.  The pairs closer than the
    Gram formula resolves (``distances.close_pair_threshold``) are recomputed from
    differences, and bitwise-equal rows get equal distances (0 between them).
    Backward: ``∂/∂xc = 2[(rowsum H + colsum H) ⊙ xc − H xc − Hᵀ xc]`` with
    ``H = g / (2d)`` (0 where d = 0: the diagonal and duplicate rows).
    """

    @staticmethod
    def forward(x, squared, tau):
        return _pairwise_sqdist(x, squared, tau)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, squared, _ = inputs
        ctx.squared = squared
        ctx.save_for_backward(x, output)

    @staticmethod
    def backward(ctx, grad):
        x, d = ctx.saved_tensors
        zero = torch.zeros((), dtype=d.dtype, device=d.device)
        if ctx.squared:
            h = torch.where(d > 0, grad, zero)
        else:
            h = torch.where(d > 0, grad / (2 * torch.where(d > 0, d, 1)), zero)
        xc = x - x[:1]
        coef = h.sum(dim=1) + h.sum(dim=0)
        gxc = 2 * (coef[:, None] * xc - torch.mm(h, xc) - torch.mm(h.t(), xc))
        gx = gxc.clone()
        gx[0] -= gxc.sum(dim=0)
        return gx, None, None


class _CrossSq(torch.autograd.Function):
    """Euclidean (or squared) distances from a row block ``xb`` ``(b, D)`` to the
    candidates ``X`` ``(R, D)`` (a chunked loss's block): one GEMM and four in-place passes
    over the single ``(b, R)`` buffer, ``d(i, offset + i) = 0`` when ``offset >= 0``.

    Forward: rows shifted by ``X[0]``; ``d² = |xc_j|² − 2 xb_i·xc_j + |xb_i|²`` (``addmm``),
    clamped at 0, square-rooted.  No close-pair refinement (the portable cross formula has
    none either).  Backward (first order): with ``H = g / (2d)`` (``g`` for squared; 0
    where ``d = 0``), ``∂/∂xb = 2(rowsum H ⊙ xb − H X)`` and ``∂/∂X = 2(colsum H ⊙ X − Hᵀ xb)``
    on the shifted rows (the distances are translation invariant).
    """

    @staticmethod
    def forward(ctx, xb, X, squared, offset):
        x0 = X[:1]
        xbc = xb - x0
        Xc = X - x0
        d = torch.addmm((Xc * Xc).sum(dim=1).unsqueeze(0), xbc, Xc.t(), alpha=-2)
        d.add_((xbc * xbc).sum(dim=1).unsqueeze(1)).clamp_min_(0)
        if offset >= 0:
            d.diagonal(offset).zero_()
        if not squared:
            d.sqrt_()
        ctx.squared = squared
        ctx.save_for_backward(xbc, Xc, d)
        return d

    @staticmethod
    def backward(ctx, grad):
        xbc, Xc, d = ctx.saved_tensors
        zero = d <= 0
        if ctx.squared:
            h = grad.masked_fill(zero, 0)
        else:
            h = torch.div(grad, d).mul_(0.5).masked_fill_(zero, 0)
        gxb = gX = None
        if ctx.needs_input_grad[0]:
            gxb = 2 * (h.sum(dim=1).unsqueeze(1) * xbc - torch.mm(h, Xc))
        if ctx.needs_input_grad[1]:
            gX = 2 * (h.sum(dim=0).unsqueeze(1) * Xc - torch.mm(h.t(), xbc))
        return gxb, gX, None, None
