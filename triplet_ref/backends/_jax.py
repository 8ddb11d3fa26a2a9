"""JAX backend (CPU and GPU); imported only when jax is in use."""
from __future__ import annotations

from functools import partial

import numpy as np
import jax
import jax.numpy as jnp

from ._base import Backend
from ._scale import match_vma


@jax.custom_jvp
def _safe_sqrt(x):
    return jnp.sqrt(x)


@_safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    pos = x > 0
    # sqrt only of positive values where it is differentiated: the rule itself is
    # differentiated for second-order derivatives, and sqrt'(0) = inf would make a NaN
    # there; x <= 0 (0, or NaN, which stays NaN) has derivative 0
    safe = jnp.sqrt(jnp.where(pos, x, jnp.ones_like(x)))
    out = jnp.where(pos, safe, jax.lax.stop_gradient(jnp.sqrt(x)))
    return out, jnp.where(pos, t / (2 * safe), jnp.zeros_like(x))


# --- the mining steps' NumPy kernels through pure_callback on CPU, built from each spec ---
from ..mining import NativeUnsupported, kernel_steps  # noqa: E402


try:  # forward-mode tracers (jax.grad traces with LinearizeTracer in current JAX)
    from jax.interpreters.ad import JVPTracer as _JVPTracer
except ImportError:  # pragma: no cover
    class _JVPTracer:  # noqa: D101
        pass


def _int_dtype():
    return jnp.asarray(0).dtype


def _kind_dtype(kind, like):
    if kind == "float":
        return like.dtype
    return {"int32": jnp.int32, "index": _int_dtype(), "bool": jnp.bool_}[kind]


try:  # zero-copy host calls (jax >= 0.6.1); older versions: pure_callback
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # pragma: no cover
    _buffer_callback = None


def _host_call(fn, shapes, *arrays):
    """``fn(*numpy arrays) -> tuple of numpy arrays`` as a JAX operation with results
    ``shapes`` (``ShapeDtypeStruct``; ``vmap``: sequential).

    ``jax.experimental.buffer_callback`` where JAX has it: ``fn`` reads the operands in
    XLA's own buffers and its results are copied once into XLA's (zero-copy operands).
    ``jax.pure_callback`` copies every operand twice on CPU (into a fresh NumPy array,
    then ``device_put`` into a JAX array, whose copy is slow for arrays that are not
    64-byte aligned) and every result once more: it is the fallback for older JAX."""
    dtypes = tuple(np.dtype(s.dtype) for s in shapes)
    if _buffer_callback is None:  # pragma: no cover
        def host(*host_arrays):
            res = fn(*(np.asarray(a) for a in host_arrays))
            return tuple(np.asarray(r, dtype=dt) for r, dt in zip(res, dtypes))

        return jax.pure_callback(host, shapes, *arrays, vmap_method="sequential")

    def host_buffers(ctx, outs, *ins):
        res = fn(*(np.asarray(a) for a in ins))
        for o, r in zip(outs, res):
            # cast while copying (an int64 index into JAX's int32 without x64: no
            # temporary); 0-d results may be NumPy scalars
            np.copyto(np.asarray(o), r, casting="same_kind")

    return tuple(_buffer_callback(host_buffers, tuple(shapes), vmap_method="sequential")(*arrays))


class _JaxStep:
    """One mining step's NumPy kernel as a JAX function: a host call (:func:`_host_call`,
    ``vmap``: sequential) under a ``custom_vjp`` whose backward is the kernel's backward
    (the gradient of a 0-d input from the spec's slopes), the whole call under one
    ``jax.jit`` so eager calls compile once per shape instead of on every call.
    Forward-mode differentiation (``jax.jvp``, ``jax.hessian``) cannot pass a
    ``custom_vjp``: it raises :class:`NativeUnsupported` and the dispatcher runs the
    portable implementation.  Built once per step."""

    def __init__(self, step):
        k = step.kernel
        self.step = step
        n_in = len(k.inputs)

        def call(*arrays):
            # the result dtypes are fixed here, at trace time: the callback runs on another
            # thread, where a scoped x64 switch (jax.enable_x64(False)) does not apply
            shapes = tuple(jax.ShapeDtypeStruct(k.out_shape(i, arrays[0].shape),
                                                _kind_dtype(kind, arrays[0])) for i, kind in enumerate(k.outputs))
            outs = _host_call(k.forward, shapes, *arrays)
            # inside shard_map a callback's results are typed replicated: type them like
            # d (a shard), or psum/grad would treat them as replicated values
            return tuple(match_vma(o, arrays[0]) for o in outs)

        if k.backward is None:  # not differentiable: indices, flags
            def nondiff(*arrays):
                return call(jax.lax.stop_gradient(arrays[0]), *arrays[1:])

            self.fn = jax.jit(nondiff)
            return

        def host_backward(*arrays):
            return (k.backward(*arrays),)

        f = jax.custom_vjp(call)

        def f_fwd(*arrays):
            out = call(*arrays)
            return out, (arrays, tuple(out[i] for i in k.saved))

        def f_bwd(res, cts):
            arrays, saved = res
            grad = cts[0]
            d = arrays[0]
            gd, = _host_call(host_backward, (jax.ShapeDtypeStruct(d.shape, d.dtype),),
                             *arrays, grad, *saved)
            # inside shard_map: cotangents typed like their primals (manual axes)
            grads = [match_vma(gd, d)] + [None] * (n_in - 1)
            for i, j in k.slopes.items():  # d out0 / d input i = output j, elementwise
                gi = jnp.sum(grad * saved[k.saved.index(j)].astype(grad.dtype)).astype(arrays[i].dtype)
                grads[i] = match_vma(gi, arrays[i])
            return tuple(grads)

        f.defvjp(f_fwd, f_bwd)
        self.fn = jax.jit(f)

    def __call__(self, *arrays):
        if any(isinstance(a, _JVPTracer) for a in arrays):
            # forward mode (jax.jvp, jax.hessian, jvp of grad): a custom_vjp has none, and
            # under an outer jit JAX would only say so later, out of reach of this call
            raise NativeUnsupported(
                f"forward-mode differentiation through the native CPU kernel of {self.step.name!r}")
        try:
            return self.fn(*arrays)
        except (TypeError, ValueError) as exc:
            # jax.jvp / jax.hessian: a custom_vjp (or the pure_callback under it) has no
            # forward mode; JAX says so with one of these messages
            msg = str(exc)
            if "custom_vjp" in msg or "do not support JVP" in msg:
                raise NativeUnsupported(
                    f"forward-mode differentiation through the native CPU kernel of "
                    f"{self.step.name!r}") from None
            raise


_STEPS: dict = {}


def _native_step(step):
    op = _STEPS.get(step.name)
    if op is None:
        op = _STEPS[step.name] = _JaxStep(step)
    return op


def _on_cpu(x) -> bool:
    try:
        return all(dev.platform == "cpu" for dev in x.devices())
    except Exception:  # a tracer: it runs where jax runs by default
        return jax.default_backend() == "cpu"


class JaxBackend(Backend):
    name = "jax"
    #: measured 3-18 with benchmarks/scaling.py (B = 16384, float32, jit, 1024 and 2048
    #: rows): the CPU kernels' pure_callback copies a block's arrays to and from the host
    arrays_at_peak = 16
    supports_grad = True
    supports_jit = True

    def namespace(self):
        return jnp

    def is_native(self, x):
        return isinstance(x, jax.Array)

    def carries_grad(self, x):
        return isinstance(x, jax.core.Tracer)

    def from_numpy(self, a, dtype=None, device=None):
        a = np.asarray(a)
        if dtype is not None and dtype != "bfloat16":
            a = a.astype(dtype)
        out = jnp.asarray(a)
        if dtype == "bfloat16":
            out = out.astype(jnp.bfloat16)
        if device is not None:
            out = jax.device_put(out, device)
        return out

    def to_numpy(self, x):
        if x.dtype == jnp.bfloat16:
            x = x.astype(jnp.float32)
        return np.asarray(x)

    def safe_sqrt(self, xp, x):
        return _safe_sqrt(x)

    def finish_sqdist(self, xp, d2, sqrt):
        d2 = jnp.maximum(d2, jnp.zeros((), d2.dtype))
        n = d2.shape[0]
        d2 = jnp.where(jnp.eye(n, dtype=bool), jnp.zeros((), d2.dtype), d2)
        return _safe_sqrt(d2) if sqrt else d2

    def refine_sqdist(self, xp, x, d, w, tau, pairs):
        if tau <= 0:
            return d
        # d materialised first (see sqdist_from_gram)
        return _refine_static(x, jax.lax.optimization_barrier(d), w, tau, pairs)

    def gram_diagonal(self, xp, G):
        # not the portable strided slice of the flattened G: XLA copied the whole matrix
        # for it (the distances cost ~1.5x more under jax.jit)
        return jnp.diagonal(G)

    def sqdist_from_gram(self, xp, x, G, sq, tau, pairs, sqrt):
        # CPU: the epilogue and the finish as one fused pass over G without a transpose,
        # then exact symmetry by mirroring the upper triangle tile by tile (_mirror_upper:
        # XLA's CPU code for a transposed read fused into an elementwise loop is ~5x a
        # plain pass, the symmetrisation (G + G.T)/2 cost 2-3 times the matmul); one
        # compiled call also when eager.  GPU: (G + G.T)/2 fused into the epilogue.
        # Then the close-pair test as one fused read of the result; the refinement (rare)
        # runs only when it finds a pair (_refine_static).  The test's weights are the
        # shifted rows' squared norms summed from x (equal to G's diagonal up to
        # rounding): read from G's diagonal inside the fused test, XLA gathers them with a
        # stride of B + 1 for every entry, which cost more than the test itself
        # CPU with numba (the kernels' body selection): the epilogue, the close-pair
        # test and the mirror as one numba sweep in place on G's buffer, its stripes'
        # columns split among the cores (_sqdist_numba, a buffer_callback)
        xc = x - x[:1, :]
        w = jnp.sum(xc * xc, axis=1)
        if _on_cpu(G) and G.shape[0] > 1 and _numba_sqdist_kernel(G.dtype) is not None:
            thr = w * tau if tau > 0 else jnp.full_like(w, -jnp.inf)
            d, close = _sqdist_numba_jit(G, jax.lax.optimization_barrier(sq), thr, sqrt=bool(sqrt))
        elif _on_cpu(G):
            d, close = _sqdist_mirrored(G, sq, w, tau=float(tau), sqrt=bool(sqrt),
                                        tile=_MIRROR_TILE)
        else:
            d = self.finish_sqdist(xp, self.gram_to_sqdist(xp, G, sq), sqrt)
            # d materialised once: without the barrier XLA fuses the whole epilogue (with
            # its transpose, the symmetrisation) into the test too, computing it twice
            d = jax.lax.optimization_barrier(d)
            close = None
        if tau <= 0:
            return d  # distances.unrefined(): the bare Gram formula
        return _refine_static(x, d, w, tau, pairs, sqrt=sqrt, close=close)

    def sort_rows(self, xp, x):
        return jnp.sort(x, axis=-1)

    def argsort_rows(self, xp, x):
        return jnp.argsort(x, axis=-1, stable=True)

    def searchsorted_rows(self, xp, sorted_rows, values, side="left"):
        return jax.vmap(lambda s, v: jnp.searchsorted(s, v, side=side))(sorted_rows, values)

    def take_rows(self, xp, x, idx):
        return jnp.take_along_axis(x, idx, axis=-1)

    def index_dtype(self, xp):
        return jnp.asarray(0).dtype  # int64 under x64, else int32

    def softplus(self, xp, x):
        return jax.nn.softplus(x)

    slot_loops = True

    def map_slots(self, xp, fn, n, active):
        # lax.map runs the slots in sequence, lax.cond skips those at or past ``active``
        # (run time: O(active) slots of work, n cheap steps), jax.checkpoint keeps only
        # each slot's index for the gradient (its temporaries are recomputed)
        out = jax.eval_shape(fn, jnp.zeros((), dtype=jnp.asarray(0).dtype))

        def zeros(k):
            return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out)

        def slot(k):
            return jax.lax.cond(k < active, fn, zeros, k)

        return jax.lax.map(jax.checkpoint(slot), jnp.arange(n))

    def native_kernel(self, step, like):
        if not _on_cpu(like):
            return None  # GPU: the portable jnp.sort / searchsorted path
        if (step.kernel is not None and step.kernel.fusible and isinstance(like, jax.core.Tracer)
                and not _concrete(like)):
            return None  # under jax.jit: XLA fuses the portable version into one pass (Kernel.fusible)
        return _native_step(step) if step.kernel is not None else None

    def value_and_grad(self, fn, x):
        v, g = jax.value_and_grad(fn)(x)
        return np.asarray(v, dtype=np.float64), self.to_numpy(g)

    def jit(self, fn):
        return jax.jit(fn)

    def devices(self):
        devs = list(jax.devices("cpu"))[:1]
        try:
            devs += list(jax.devices("gpu"))[:1]
        except RuntimeError:
            pass
        return devs

    def synchronize(self, x=None):
        if x is not None:
            jax.block_until_ready(x)


BACKEND = JaxBackend()


for _step in kernel_steps():
    _native_step(_step)


# --- exact symmetry without a fused transpose (CPU) -------------------------------------
#: side of the square tiles _mirror_upper copies (transposed in cache) and tests for
#: close pairs: 64-512 measured alike (B = 4096, float32, 2 cores)
_MIRROR_TILE = 128


@partial(jax.jit, static_argnames=("tau", "sqrt", "tile"), donate_argnums=(0,))
def _sqdist_mirrored(G, sq, w, tau, sqrt, tile):
    """``d_ij = finish(sq_i + sq_j − 2 G_ij)`` above the diagonal, its mirror image below:
    one fused elementwise pass over ``G`` (no transpose), then :func:`_mirror_upper_close`,
    which also tests, on the tiles it reads anyway, whether any pair is close
    (``_any_close`` with weights ``w``; False when ``tau == 0``).  Exactly symmetric
    whether or not the GEMM's ``G`` is.  Returns ``(d, close)``: ``(B, B)`` of ``G``'s
    dtype, a bool scalar.  ``G`` is donated (eager calls: ``d`` is written into its buffer
    instead of a fresh one; the caller must not use ``G`` again)."""
    zero = jnp.zeros((), G.dtype)
    # sq materialised first: were it a strided slice of G, XLA would fuse that gather into
    # the loop and redo it for every entry
    sq = jax.lax.optimization_barrier(sq)
    d2 = jnp.maximum((sq[:, None] + sq[None, :]) - 2 * G, zero)
    n = G.shape[0]
    d2 = jnp.where(jnp.eye(n, dtype=bool), zero, d2)
    d = _safe_sqrt(d2) if sqrt else d2
    if tau > 0:
        return _mirror_upper_close(d, w * tau, sqrt, tile)
    return _mirror_upper(d, tile), jnp.zeros((), dtype=bool)


def _mirror_loops(d, thr, sqrt, tile):
    """The loops of :func:`_mirror_upper` and :func:`_mirror_upper_close`: ``(mirrored d,
    close)``; ``close`` (a bool scalar) is whether any pair ``i < j`` has ``d²_ij < thr_i +
    thr_j`` (``d`` squared first when ``sqrt``), tested on each tile the mirror has just
    written (the copies below the diagonal, the diagonal tiles: no pass of its own);
    False when ``thr`` is None (no test)."""
    n = d.shape[0]
    bs = tile
    nb = n // bs
    m = nb * bs
    low = np.tril(np.ones((bs, bs), dtype=bool), -1)
    close = jnp.zeros((), dtype=bool)

    def hits(blk, tr, tc, mask):
        if thr is None:
            return jnp.zeros((), dtype=bool)
        d2 = blk * blk if sqrt else blk
        return jnp.any((d2 < tr[:, None] + tc[None, :]) & mask)

    def thr_at(s, size):
        return None if thr is None else jax.lax.dynamic_slice(thr, (s,), (size,))

    if nb > 1:
        ti, tj = np.tril_indices(nb, -1)  # the tiles below the diagonal: (I, J), I > J
        rows = jnp.asarray(ti * bs, dtype=jnp.int32)
        cols = jnp.asarray(tj * bs, dtype=jnp.int32)

        def off_diagonal(t, carry):
            d, close = carry
            blk = jax.lax.dynamic_slice(d, (cols[t], rows[t]), (bs, bs))
            d = jax.lax.dynamic_update_slice(d, blk.T, (rows[t], cols[t]))
            if thr is not None:
                # the tile just written (the copy is still in cache), not the one read: a
                # second reader of the tile before the update would cost XLA a copy of
                # the whole carry at every step
                new = jax.lax.dynamic_slice(d, (rows[t], cols[t]), (bs, bs))
                close = close | hits(new, thr_at(rows[t], bs), thr_at(cols[t], bs), True)
            return d, close

        d, close = jax.lax.fori_loop(0, ti.shape[0], off_diagonal, (d, close))
    if nb > 0:
        def diagonal(k, carry):
            d, close = carry
            s = k * bs
            blk = jax.lax.dynamic_slice(d, (s, s), (bs, bs))
            d = jax.lax.dynamic_update_slice(d, jnp.where(low, blk.T, blk), (s, s))
            if thr is not None:  # the tile just written (see off_diagonal)
                new = jax.lax.dynamic_slice(d, (s, s), (bs, bs))
                close = close | hits(new, thr_at(s, bs), thr_at(s, bs), low)
            return d, close

        d, close = jax.lax.fori_loop(0, nb, diagonal, (d, close))
    if m < n:
        r = n - m
        corner = d[m:, m:]
        upper = np.triu(np.ones((r, r), dtype=bool), 1)
        if thr is not None:
            close = (close | hits(d[:m, m:], thr[:m], thr[m:], True)
                     | hits(corner, thr[m:], thr[m:], upper))
        d = d.at[m:, :m].set(d[:m, m:].T)
        d = d.at[m:, m:].set(jnp.where(upper.T, corner.T, corner))
    return d, close


def _mirror_tangent(t):
    n = t.shape[0]
    upper = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0) <= jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
    return jnp.where(upper, t, t.T)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _mirror_upper(d, tile):
    """``d`` ``(B, B)`` with its strictly lower triangle replaced by the transpose of its
    strictly upper one, one ``tile``-square tile at a time (``lax.fori_loop`` of
    ``dynamic_slice`` / ``dynamic_update_slice``, in place: every transposed read stays in
    one cached tile; the rows and columns past the last whole tile are static slices).
    Linear in ``d``; its derivative (:func:`_mirror_upper_jvp`) is the same map written as
    one ``where`` over ``d`` and ``d.T``: reverse mode transposes that, not the loop (the
    loop's transpose copied the whole ``(B, B)`` carry at every one of its steps under
    ``jax.jit``: ``jax.grad`` of the distances took 8x longer)."""
    return _mirror_loops(d, None, False, tile)[0]


@_mirror_upper.defjvp
def _mirror_upper_jvp(tile, primals, tangents):
    (d,), (t,) = primals, tangents
    return _mirror_upper(d, tile), _mirror_tangent(t)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _mirror_upper_close(d, thr, sqrt, tile):
    """``(_mirror_upper(d, tile), close)``: also whether any pair ``i < j`` has ``d²_ij <
    thr_i + thr_j`` (``d`` squared first when ``sqrt``), tested on the tiles the mirror
    writes (``_mirror_loops``).  The same derivative as :func:`_mirror_upper` (``close``:
    none; ``thr``'s tangent is not used)."""
    return _mirror_loops(d, thr, sqrt, tile)


@_mirror_upper_close.defjvp
def _mirror_upper_close_jvp(sqrt, tile, primals, tangents):
    (d, thr), (t, _) = primals, tangents
    out = _mirror_upper_close(d, thr, sqrt, tile)
    return out, (_mirror_tangent(t), np.zeros((), dtype=jax.dtypes.float0))


# --- the numba stripe pass in place on G (CPU, numba selected) ---------------------------
#: rows per stripe and columns per tile of the numba pass (_numba_sqdist.sqdist_stripe)
_NUMBA_ROWS = 512
_NUMBA_TILE = 128
#: a stripe's columns are split among the cores from this many entries of the stripe on
_NUMBA_THREAD_MIN = 1 << 18


def _numba_sqdist_kernel(dtype):
    """The numba stripe kernel for ``dtype`` when the kernels' body selection picks numba
    and JAX has ``buffer_callback`` (the pass works in place on XLA's buffer), else None."""
    if _buffer_callback is None:  # pragma: no cover
        return None
    from ..mining.sqdist import stripe_kernel

    return stripe_kernel(np.dtype(dtype))


def _numba_host(sqrt):
    def host(ctx, outs, G, sq, thr):
        from ..mining import _blocks
        from ..mining.sqdist import StripePass

        d_out, count_out = outs
        d = np.asarray(d_out)  # G's buffer (input_output_aliases): the Gram products
        n = d.shape[0]
        kernel = _numba_sqdist_kernel(d.dtype)
        # sq, thr: writable copies (n entries; the kernel is compiled for writable arrays)
        sq = np.array(np.asarray(sq), copy=True)
        thr = np.array(np.asarray(thr), copy=True)
        with StripePass(kernel, d, sq, thr, sqrt, _NUMBA_TILE, _blocks.cpu_count(),
                        _NUMBA_THREAD_MIN, 0) as sp:
            for g in range(0, n, _NUMBA_ROWS):
                sp.stripe(g, min(n, g + _NUMBA_ROWS))
        np.asarray(count_out)[...] = min(sp.count, 2 ** 31 - 1)

    return host


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _sqdist_numba(G, sq, thr, sqrt):
    """``(d, close)`` as :func:`_sqdist_mirrored` returns them, by the numba stripe pass
    (``_numba_sqdist.sqdist_stripe``) in place on ``G``'s buffer through
    ``jax.experimental.buffer_callback`` (``vmap``: sequential): ``d_ij = d_ji =
    finish(sq_i + sq_j − 2 G_ij)`` for ``i < j`` from ``G``'s upper triangle, 0 on the
    diagonal; ``close``: some pair has ``d²_ij < thr_i + thr_j`` (``thr = -inf``: none).
    Derivative (:func:`_sqdist_numba_jvp`): that of the same formula on the upper
    triangle, mirrored, 0 where ``d == 0``."""
    shapes = (jax.ShapeDtypeStruct(G.shape, G.dtype), jax.ShapeDtypeStruct((), jnp.int32))
    d, count = _buffer_callback(_numba_host(sqrt), shapes, input_output_aliases={0: 0},
                                vmap_method="sequential")(G, sq, thr)
    return match_vma(d, G), match_vma(count > 0, G)


@_sqdist_numba.defjvp
def _sqdist_numba_jvp(sqrt, primals, tangents):
    (G, sq, thr), (tG, tsq, _) = primals, tangents
    d, close = _sqdist_numba(G, sq, thr, sqrt)
    zero = jnp.zeros((), d.dtype)
    t2 = (tsq[:, None] + tsq[None, :]) - 2 * tG
    pos = d > zero
    if sqrt:
        t2 = t2 / (2 * jnp.where(pos, d, jnp.ones((), d.dtype)))
    return (d, close), (_mirror_tangent(jnp.where(pos, t2, zero)), np.zeros(close.shape, dtype=jax.dtypes.float0))


#: one compiled call per shape, eager calls included; G donated (the pass reuses its buffer)
_sqdist_numba_jit = jax.jit(_sqdist_numba, static_argnames=("sqrt",), donate_argnums=(0,))


# --- close-pair refinement with static shapes (eager, jax.jit, GPU) --------------------
#: the sparse branch recomputes up to this many close pairs per row on average; more go
#: to the dense branch (every row block that holds one, recomputed directly)
_REFINE_PAIRS_PER_ROW = 16
_REFINE_BLOCK = 16


def _refine_static(x, d, w, tau, pairs, sqrt=False, close=None):
    """``Backend.refine_sqdist`` (contract in ``_base._refine_sqdist``) with static shapes,
    on ``d`` before (``sqrt=False``) or after (``sqrt=True``: ``d`` holds square roots of
    the Gram values; refined values are square-rooted too) the finishing square root.

    The test ``any close pair?`` is one fused reduction over ``d`` (``_any_close``), or
    ``close`` when the caller has it already (``_sqdist_mirrored``); when it is false
    nothing else runs. Otherwise up to 16·B close pairs are gathered with
    ``jnp.nonzero(size=...)`` and recomputed (``_sparse``), more take a dense row-block
    recomputation (``_dense``); then duplicates are canonicalised (``_canonical``).
    With concrete values (eager, also under ``jax.grad``) the choices are made in Python,
    so only the branch taken is compiled (once per shape); traced under ``jax.jit`` they
    are one ``lax.cond`` and only the sparse branch exists (at most 16·B close pairs
    refined). Differentiable: refined pairs get the direct formula's gradient."""
    n = d.shape[0]
    if n < 2 or tau <= 0:
        return d
    size = min(n * (n - 1) // 2, _REFINE_PAIRS_PER_ROW * n)
    idx = jnp.arange(n)
    if isinstance(d, jax.core.Tracer) and not _concrete(d):
        # traced (jax.jit): one lax.cond; only the sparse branch exists (the dense one costs
        # seconds of XLA compilation at every batch size, for data that rarely needs it:
        # beyond 16·B close pairs, under jax.jit, the rest keep their Gram value — documented)
        def refine(x, d, w):
            upper, _ = _close_pairs(d, w, tau, sqrt)
            d, rep = _sparse(x, d, w, upper, size=size, pairs=pairs, sqrt=sqrt)
            return _canonical(d, rep)

        if close is None:
            close = _any_close(d, w, tau, sqrt)
        return jax.lax.cond(close, refine, lambda x, d, w: d, x, d, w)
    if not bool(_any_close(d, w, tau, sqrt) if close is None else close):
        return d
    upper, count = _close_pairs(d, w, tau, sqrt)
    if int(count) <= size:
        d, rep = _sparse(x, d, w, upper, size=size, pairs=pairs, sqrt=sqrt)
    else:
        d, rep = _dense(x, d, w, upper, tau=tau, pairs=pairs, sqrt=sqrt)
    return _canonical(d, rep) if bool(jnp.any(rep != idx)) else d


def _concrete(d) -> bool:
    try:
        bool(jnp.any(d[:1, :1] != 0))
        return True
    except jax.errors.ConcretizationTypeError:
        return False


def _close_mask(d, w, tau, sqrt, upper):
    """``d²_ij < tau·(w_i + w_j)`` for ``i < j`` (``upper``) or ``i != j``; one fused
    elementwise expression (no B×B temporary when it feeds a reduction)."""
    n = d.shape[0]
    idx = jnp.arange(n)
    thr = w * tau
    d2 = d * d if sqrt else d
    off = (idx[:, None] < idx[None, :]) if upper else (idx[:, None] != idx[None, :])
    return (d2 < thr[:, None] + thr[None, :]) & off


@partial(jax.jit, static_argnums=(2, 3))
def _any_close(d, w, tau, sqrt):
    """Whether any off-diagonal pair is close: one read of ``d``, fused (the cheap test
    every call pays; the refinement itself runs only when it is true)."""
    # per row first: a row reduction fuses with the mask; a full one materialises it
    return jnp.any(jnp.any(_close_mask(d, w, tau, sqrt, upper=False), axis=1))


@partial(jax.jit, static_argnums=(2, 3))
def _close_pairs(d, w, tau, sqrt):
    """The pairs ``i < j`` with ``d²_ij < tau·(w_i + w_j)``, and their number."""
    upper = _close_mask(d, w, tau, sqrt, upper=True)
    return upper, jnp.sum(upper)


def _direct(pairs, a, b, sqrt):
    v = pairs(jnp, a, b)
    return (_safe_sqrt(v), v) if sqrt else (v, v)


@partial(jax.jit, static_argnames=("size", "pairs", "sqrt"))
def _sparse(x, d, w, upper, *, size, pairs, sqrt):
    """Recompute up to ``size`` close pairs (``upper``); returns ``(d, rep)``, ``rep_i`` the
    first row equal to row ``i``."""
    n = d.shape[0]
    idx = jnp.arange(n)
    r, c = jnp.nonzero(upper, size=size, fill_value=0)
    a, b = x[r], x[c]
    v, v2 = _direct(pairs, a, b, sqrt)
    real = r < c  # the fill entries are (0, 0)
    v = jnp.where(real, v, d[r, c])
    d = d.at[r, c].set(v).at[c, r].set(v)
    dup = real & (v2 == 0) & jnp.all(a == b, axis=-1)
    return d, idx.at[c].min(jnp.where(dup, r, n))


@partial(jax.jit, static_argnames=("tau", "pairs", "sqrt"))
def _dense(x, d, w, upper, *, tau, pairs, sqrt):
    """Recompute every close pair, one block of rows at a time (any number of them)."""
    n = d.shape[0]
    idx = jnp.arange(n)
    close = upper | upper.T
    bs = min(_REFINE_BLOCK, n)

    def body(k, carry):
        d, rep = carry
        s = jnp.minimum(k * bs, n - bs)
        a = jax.lax.dynamic_slice_in_dim(x, s, bs, axis=0)[:, None, :]
        fb = jax.lax.dynamic_slice_in_dim(close, s, bs, axis=0)
        db = jax.lax.dynamic_slice_in_dim(d, s, bs, axis=0)
        v, v2 = _direct(pairs, a, x[None, :, :], sqrt)
        d = jax.lax.dynamic_update_slice_in_dim(d, jnp.where(fb, v, db), s, axis=0)
        dup = fb & (v2 == 0) & jnp.all(a == x[None, :, :], axis=-1)
        first = jnp.min(jnp.where(dup, idx[None, :], n), axis=1)
        return d, rep.at[s + jnp.arange(bs)].min(first)

    d, rep = jax.lax.fori_loop(0, -(-n // bs), body, (d, idx))
    # exact symmetry (the direct formula need not be symmetric bit for bit)
    return jnp.where(idx[:, None] < idx[None, :], d, d.T), rep


@jax.custom_jvp
@jax.jit
def _canonical(d, rep):
    """``d[i, j] <- d[rep_i, rep_j]`` with ``d[r, r] = 0``: rows equal to row ``rep_i`` take
    its distances (exactly 0 apart, exactly equidistant from the others)."""
    n = d.shape[0]
    d = jnp.where(jnp.eye(n, dtype=bool), jnp.zeros((), d.dtype), d)[rep]
    # the column gather as take_along_axis: d[:, rep] makes XLA choose a column-major
    # layout for the lax.cond result, and a transposing copy of B×B after it every call
    return jnp.take_along_axis(d, jnp.broadcast_to(rep[None, :], d.shape), axis=1)


@_canonical.defjvp
def _canonical_jvp(primals, tangents):
    # row i equals row rep_i, so d[rep_i, rep_j] and d[i, j] are the same function's values:
    # the derivative is d's own (a gather would send row i's gradient to row rep_i)
    d, rep = primals
    return _canonical(d, rep), tangents[0]
