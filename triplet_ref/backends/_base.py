"""The Backend base class (portable array-API primitives) and input resolution."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

_LOW_PRECISION = ("float16", "bfloat16")


class Backend:
    """One array framework.  Subclasses override the primitives they do natively better.

    Every primitive takes the compat namespace ``xp`` first and uses only the array API
    standard in this base class, so a new backend only has to say how to import its
    namespace and convert arrays.
    """

    name = "generic"
    #: whether value_and_grad works (autograd framework)
    supports_grad = False
    #: whether jit() compiles (jax.jit / torch.compile)
    supports_jit = False
    #: how many ``(rows, R)`` arrays of the compute dtype a chunked batch loss holds at its
    #: peak (forward and backward): ``chunk_size=None`` divides the memory budget by it
    #: (losses/_pairs.py, ``chunk_rows``); None: ``ARRAYS_AT_PEAK`` there
    arrays_at_peak = None

    # -- namespace and conversion ---------------------------------------------------
    def namespace(self):
        raise NotImplementedError

    def is_native(self, x: Any) -> bool:
        """Whether ``x`` is an array of this framework."""
        raise NotImplementedError

    def carries_grad(self, x: Any) -> bool:
        """Whether ``x`` takes part in automatic differentiation (never copied out)."""
        return False

    def default_device(self):
        return None

    def device_of(self, x: Any):
        """The device ``x`` lives on (what array-api-compat's ``device`` returns).

        Read from the array itself, not through ``array_api_compat.device``: that helper
        probes every framework in ``sys.modules`` and fails with "partially initialized
        module" while another thread is importing one (issue 13, item 12).
        """
        if isinstance(x, (np.ndarray, np.generic)):
            return "cpu"
        dev = getattr(x, "device", None)
        return dev() if callable(dev) and not hasattr(dev, "type") else dev

    def from_numpy(self, a: Any, dtype: str | None = None, device: Any = None):
        """A NumPy array (or list) as an array of this backend, optionally cast to ``dtype``
        (a dtype *name* such as ``"float32"``) and placed on ``device``."""
        xp = self.namespace()
        a = np.asarray(a)
        if dtype is not None:
            a = a.astype(dtype) if dtype not in _LOW_PRECISION else a
        out = xp.asarray(a, device=device) if device is not None else xp.asarray(a)
        if dtype in _LOW_PRECISION:
            out = xp.astype(out, getattr(xp, dtype))
        return out

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    # -- primitives used by distances and losses --------------------------------------
    def safe_sqrt(self, xp, x):
        """sqrt(x) for x >= 0 whose gradient is 0 (not inf/NaN) where x == 0.

        Portable double-``where``: the inner one keeps sqrt's argument away from 0 so its
        derivative is finite, the outer one selects 0 there.  No bias for x > 0.
        """
        pos = x > 0
        one = xp.ones((), dtype=x.dtype, device=self.device_of(x))
        zero = xp.zeros((), dtype=x.dtype, device=self.device_of(x))
        return xp.where(pos, xp.sqrt(xp.where(pos, x, one)), zero)

    def block_distances(self, xp, xb, X, squared: bool, offset: int):
        """The ``(b, R)`` euclidean (or squared) distances from the anchors ``xb`` of one row
        block to the candidates ``X``, with ``d(i, offset + i) = 0`` when ``offset >= 0``
        (the anchor itself, when ``X`` is the batch): a fused native kernel, or None for
        the portable formula (``distances.cross_distance_matrix``)."""
        return None

    def clamp_min0(self, xp, x):
        """max(x, 0) (a fresh array; the gradient is 0 where x < 0)."""
        zero = xp.zeros((), dtype=x.dtype, device=self.device_of(x))
        return xp.where(x > zero, x, zero)

    def zero_diagonal(self, xp, x):
        """x with its diagonal set to exactly 0 (square 2-D)."""
        n = x.shape[0]
        eye = xp.eye(n, dtype=xp.bool, device=self.device_of(x))
        return xp.where(eye, xp.zeros((), dtype=x.dtype, device=self.device_of(x)), x)

    def gram_diagonal(self, xp, G):
        """A copy of the diagonal of the square matrix ``G`` (a backend may later update
        ``G`` in place): ``(B,)``, ``G``'s dtype.  Portable: a strided slice of the
        flattened matrix."""
        n = G.shape[0]
        return xp.astype(xp.reshape(G, (n * n,))[:: n + 1], G.dtype, copy=True)

    def sort_rows(self, xp, x):
        """Values of each row sorted ascending (differentiable where the backend is)."""
        return xp.sort(x, axis=-1)

    def argsort_rows(self, xp, x):
        """Stable ascending argsort along the last axis (ties keep index order)."""
        return xp.argsort(x, axis=-1, stable=True)

    def searchsorted_rows(self, xp, sorted_rows, values, side: str = "left"):
        """Row-wise searchsorted: ``out[i, j]`` = insertion index of ``values[i, j]`` in
        ``sorted_rows[i]``.  Result in ``[0, sorted_rows.shape[-1]]`` (may equal n)."""
        import array_api_extra as xpx

        return xpx.searchsorted(sorted_rows, values, side=side, xp=xp)

    def take_rows(self, xp, x, idx):
        """``out[i, j] = x[i, idx[i, j]]`` (take_along_axis on the last axis)."""
        return xp.take_along_axis(x, idx, axis=-1)

    def index_dtype(self, xp):
        return xp.int64

    # -- mask and count reductions of the batch losses (tfwd) ---------------------------
    def label_masks(self, xp, labels, device):
        """``(pos, neg)`` ``(B, B)`` bool of resolved ``(B,)`` labels:
        ``pos[a, p] = (a != p) & (y_a == y_p)``, ``neg[a, n] = y_a != y_n``
        (:func:`triplet_ref.masks.label_masks`)."""
        from ..masks import label_masks

        return label_masks(xp, labels, device)

    def equal_labels(self, xp, a, b):
        """``(len(a), len(b))`` bool: ``a[i] == b[j]`` (resolved label arrays)."""
        return a[:, None] == b[None, :]

    def any_rows(self, xp, mask):
        """``(B,)`` bool: whether each row of the ``(B, R)`` bool ``mask`` has a True."""
        return xp.any(mask, axis=1)

    def and_rows(self, xp, mask, flags):
        """``(B, R)`` bool: ``mask[i, j] and flags[i]`` (``flags``: ``(B,)`` bool)."""
        return mask & flags[:, None]

    def count_true(self, xp, mask, axis, dtype):
        """The number of True entries of the bool ``mask`` (along ``axis``; None: all) as
        an integer array of ``dtype``, without a ``mask``-sized integer temporary."""
        if hasattr(xp, "count_nonzero"):
            return xp.astype(xp.count_nonzero(mask, axis=axis), dtype, copy=False)
        return xp.sum(xp.astype(mask, dtype), axis=axis)

    def sum_ints(self, xp, a, dtype):
        """``Σ a`` over every entry of the integer array ``a``, exact, as a 0-d array of
        ``dtype`` (an integer dtype wide enough for the sum, or a floating one where the
        backend has no 64-bit integer: ``losses._common.count_dtype``)."""
        return xp.sum(a, dtype=dtype)

    def softplus(self, xp, x):
        """log(1 + exp(x)) without overflow."""
        zero = xp.zeros((), dtype=x.dtype, device=self.device_of(x))
        return xp.logaddexp(x, zero)

    #: whether :meth:`map_slots` can run a loop whose active length is traced (JAX)
    slot_loops = False

    def map_slots(self, xp, fn, n: int, active):
        """``(stack([fn(k)[i] for k in range(n)]) for i ...)`` with ``fn(k)`` replaced by
        zeros for ``k >= active`` and not run there: ``fn`` maps a 0-d index ``k`` to a
        tuple of arrays; ``active`` is a 0-d integer array whose value may be traced.
        Only where :attr:`slot_loops` (JAX: ``lax.map`` over ``jax.checkpoint``-ed
        ``lax.cond``: one slot's temporaries at a time, forward and gradient)."""
        raise NotImplementedError(f"{self.name}: no loop over a traced number of slots")

    def map_row_blocks(self, xp, fn, rows: int, *arrays):
        """``fn`` on consecutive blocks of ``rows`` rows of ``arrays`` (2-D, the same number
        of rows), its outputs (a tuple of arrays with one row per input row) concatenated,
        one block after the other (a Python loop)."""
        n = arrays[0].shape[0]
        outs = [fn(*(a[start : min(n, start + rows), ...] for a in arrays)) for start in range(0, n, rows)]
        if len(outs) == 1:
            return outs[0]
        return tuple(xp.concat(parts, axis=0) for parts in zip(*outs))

    def native_kernel(self, step, like: Any):
        """This backend's native implementation of a mining step (a
        :class:`triplet_ref.mining.Step`), or None where it has none: a function of the
        step's arrays with the step's outputs (see ``triplet_ref/mining/``).  ``like`` is
        the step's first array (its device decides).  The dispatcher
        (:func:`triplet_ref.mining.run`) calls it; losses never do.
        """
        return None

    # -- adapters for the conformance suite ----------------------------------------
    def value_and_grad(self, fn: Callable, x: Any):
        """(value, gradient) of scalar ``fn`` at native array ``x``, both as NumPy."""
        raise NotImplementedError(f"{self.name} has no automatic differentiation")

    def jit(self, fn: Callable) -> Callable:
        """The backend's compiler applied to ``fn`` (identity where there is none)."""
        return fn

    def devices(self) -> list:
        """Devices of this backend the suite can run on (CPU first)."""
        return [None]

    def synchronize(self, x: Any = None) -> None:
        """Block until the asynchronous work producing ``x`` is done (for timing)."""

    def __repr__(self) -> str:
        return f"<triplet_ref backend {self.name}>"


@dataclass
class Context:
    """What one call works with: the backend, its namespace, the device and the dtypes."""

    backend: Backend
    xp: Any
    device: Any
    dtype: Any  # the compute dtype (float32 for float16/bfloat16 inputs)
    out_dtype: Any  # the embeddings' own dtype, the result's dtype
    #: the label arrays converted in this call: ``(host values or None, ids used or None)``
    #: per array, so that a later one (``ref_labels``) maps equal labels to equal ids
    label_history: list = field(default_factory=list, repr=False)

    def finish(self, x):
        """Cast a result back to the embeddings' dtype."""
        if x.dtype != self.out_dtype:
            return self.xp.astype(x, self.out_dtype)
        return x


def float_dtype_of(xp, x):
    return x.dtype


def _torch_compiling() -> bool:
    import sys

    torch = sys.modules.get("torch")
    compiler = getattr(torch, "compiler", None) if torch is not None else None
    return bool(compiler is not None and compiler.is_compiling())


def _check_margin(margin: Any) -> None:
    if isinstance(margin, (bool, np.bool_)) or isinstance(margin, (str, bytes)):
        raise TypeError(f"margin: expected a real number, got {type(margin).__name__}")
    if not isinstance(margin, numbers.Real):
        shape = getattr(margin, "shape", None)
        if shape is None:
            raise TypeError(f"margin: expected a real number, got {type(margin).__name__}")
        if tuple(shape) != ():
            raise ValueError(f"margin: expected a scalar, got an array of shape {tuple(shape)}")
        # a 0-d array: a real (integer or floating) dtype; bool and complex are refused
        # (float() would read True as 1.0 and drop an imaginary part with only a warning)
        kind = str(getattr(margin, "dtype", "")).lower()
        if "bool" in kind or "complex" in kind or not any(k in kind for k in ("float", "int")):
            raise TypeError(f"margin: expected a real scalar, got dtype {getattr(margin, 'dtype', None)}")
    if _torch_compiling():  # traced by torch.compile: the value may be data (as under jax.jit)
        return
    try:
        value = float(margin.detach() if hasattr(margin, "detach") else margin)
    except Exception:  # a 0-d value traced under jit: it cannot be checked here
        return
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"margin: must be finite and >= 0, got {value!r}")


def _as_backend_array(x: Any, be: Backend, name: str, device: Any = None):
    """Convert ``x`` (list, NumPy, foreign array without gradient) to backend ``be``."""
    from . import backend_of

    own = backend_of(x)
    if own is be:
        return x
    if own is not None and own.carries_grad(x):
        raise TypeError(
            f"{name}: a {own.name} array that carries gradients cannot be converted to "
            f"backend={be.name!r} (that would silently cut it off from autograd); "
            f"pass backend=None or {own.name!r}"
        )
    if own is not None:
        arr = own.to_numpy(x)
    else:
        if not isinstance(x, (list, tuple, numbers.Number)) and not hasattr(x, "__array__"):
            raise TypeError(f"{name}: expected an array or a (nested) list, got {type(x).__name__}")
        arr = host_array(x, name)
        if arr.dtype.kind in "OUSMmc":
            raise TypeError(f"{name}: expected a real floating dtype, got {_dtype_words(arr)}")
    return be.from_numpy(arr, device=device)


def _dtype_words(arr: np.ndarray) -> str:
    kinds = {"O": "objects", "U": "strings", "S": "bytes", "M": "datetimes", "m": "timedeltas",
             "b": "bool", "c": f"complex ({arr.dtype})"}
    return kinds.get(arr.dtype.kind, str(arr.dtype))


def host_array(x: Any, name: str) -> np.ndarray:
    """``numpy.asarray(x)`` for a list/scalar/NumPy-convertible input, with a ValueError
    naming the argument for a ragged nested list (NumPy's own message does not)."""
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    try:
        return np.asarray(x)
    except ValueError as exc:  # ragged: "setting an array element with a sequence..."
        raise ValueError(f"{name}: a ragged nested list (rows of different lengths) is not an array: {exc}") from None


def _check_embeddings(xp, emb, name: str = "embeddings", ndim: int = 2, allow_empty: bool = False):
    if emb.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array of shape (B, D), got shape {tuple(emb.shape)}")
    if emb.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name}: empty batch (shape {tuple(emb.shape)}); need at least one row")
    try:
        floating = xp.isdtype(emb.dtype, "real floating")
    except TypeError:  # a dtype the namespace does not know, e.g. ml_dtypes' bfloat16 in NumPy/CuPy
        raise TypeError(
            f"{name}: dtype {emb.dtype} is not supported by the {type(emb).__module__.split('.')[0]} "
            "backend; cast to float32"
        ) from None
    if not floating:
        raise TypeError(f"{name}: expected a real floating dtype, got {emb.dtype}")


def _compute_dtype(xp, dtype):
    name = str(dtype)
    if any(lp in name for lp in _LOW_PRECISION):
        return xp.float32
    return dtype


def resolve(embeddings: Any, labels: Any = None, backend: Any = None, *,
            embeddings_name: str = "embeddings", allow_empty: bool = False):
    """Resolve the backend, convert and validate ``embeddings`` (and ``labels``).

    Returns ``(ctx, emb, labels)``: ``emb`` in the compute dtype (float32 for
    float16/bfloat16), ``labels`` an integer array in the same namespace and on the
    same device (or None when not given).  ``allow_empty``: a ``(0, D)`` batch is
    accepted (one rank's share of a global batch).
    """
    ctx, (emb,) = resolve_many([(embeddings, embeddings_name)], backend, allow_empty=allow_empty)
    if labels is None:
        return ctx, emb, None
    return ctx, emb, convert_labels(ctx, labels, emb.shape[0])


def resolve_many(arrays: list[tuple[Any, str]], backend: Any = None, ndim: int = 2,
                 allow_empty: bool = False):
    """Like :func:`resolve` for several embedding-like arrays of equal dtype/backend.

    The first array decides the backend when ``backend`` is None.
    """
    from . import backend_of, get_backend

    first, first_name = arrays[0]
    if backend is None:
        be = backend_of(first)
        if be is None:
            if isinstance(first, (list, tuple)) or hasattr(first, "__array__"):
                be = get_backend("numpy")
            else:
                raise TypeError(
                    f"{first_name}: expected an array (NumPy, torch, JAX, CuPy, array-api-strict) "
                    f"or a nested list, got {type(first).__name__}"
                )
    else:
        be = get_backend(backend)
    xp = be.namespace()
    out = []
    device = None
    for x, name in arrays:
        arr = _as_backend_array(x, be, name, device=device)
        _check_embeddings(xp, arr, name, ndim=ndim, allow_empty=allow_empty)
        if device is None:
            device = be.device_of(arr)
        out.append(arr)
    out_dtype = out[0].dtype
    for arr, (_, name) in zip(out[1:], arrays[1:]):
        if arr.dtype != out_dtype:
            raise TypeError(f"{name}: dtype {arr.dtype} differs from {arrays[0][1]}'s {out_dtype}")
        if arr.shape != out[0].shape:
            raise ValueError(f"{name}: shape {tuple(arr.shape)} differs from {arrays[0][1]}'s {tuple(out[0].shape)}")
    dtype = _compute_dtype(xp, out_dtype)
    if dtype != out_dtype:
        out = [xp.astype(a, dtype) for a in out]
    ctx = Context(backend=be, xp=xp, device=device, dtype=dtype, out_dtype=out_dtype)
    return ctx, out


def _host_labels(labels: Any, name: str) -> np.ndarray:
    """Non-native labels read on the host, with their kind checked before the framework
    sees them (so strings, objects and ragged lists get a message naming the argument)."""
    arr = host_array(labels, name)
    if arr.size == 0 and arr.dtype == np.float64:  # ``[]``: no labels, not float ones
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        what = _dtype_words(arr) if arr.dtype.kind in "OUSMmcb" else f"dtype {arr.dtype}"
        raise TypeError(f"{name}: expected integer class labels, got {what}")
    return arr


def dense_label_ids(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Integer label arrays → dense class ids ``0..C-1`` (int32, same shapes), one mapping
    for all of them: equal labels stay equal across the arrays, different ones different."""
    flat = [np.ravel(a) for a in arrays]
    if len({a.dtype.kind for a in flat}) > 1:  # signed with unsigned: compare exact Python ints
        flat = [np.asarray([int(v) for v in a.tolist()], dtype=object) for a in flat]
    _, inverse = np.unique(np.concatenate(flat), return_inverse=True)
    inverse = np.ravel(inverse).astype(np.int32 if inverse.size < 2**31 else np.int64)
    parts = np.split(inverse, np.cumsum([a.size for a in flat])[:-1])
    return [p.reshape(a.shape) for p, a in zip(parts, arrays)]


def convert_labels(ctx: Context, labels: Any, batch: int, name: str = "labels"):
    """Labels of any integer dtype and array kind → the context's namespace and device.

    Label values only matter through equality, so values the backend cannot hold (labels
    beyond ±2³¹ on JAX in its default 32-bit mode, which would silently wrap and merge
    classes) are replaced by dense class ids; otherwise the values are kept.
    See :func:`convert_label_sets` for several arrays that must share one mapping.
    """
    return convert_label_sets(ctx, [(labels, batch, name)])[0]


def _fits(xp, lab, arr: np.ndarray) -> bool:
    """Whether the converted ``lab`` holds every value of the host array ``arr`` (JAX in
    32-bit mode turns int64/uint64 into int32/uint32, wrapping larger values)."""
    if arr.size == 0 or xp.isdtype(lab.dtype, "bool") or not xp.isdtype(lab.dtype, "integral"):
        return True  # nothing to lose (or a dtype error raised below)
    info = xp.iinfo(lab.dtype)
    return int(arr.min()) >= int(info.min) and int(arr.max()) <= int(info.max)


def _native_values(be: Backend, lab, name: str, lo_hi: str) -> np.ndarray:
    try:
        return np.asarray(be.to_numpy(lab))
    except Exception:  # traced (jit): its values cannot be read
        raise TypeError(
            f"{name}: label values beyond what {be.name} holds here ({lo_hi}) cannot be combined "
            f"with traced {be.name} labels; pass dense class ids "
            "(numpy.unique(labels, return_inverse=True)[1])") from None


def convert_label_sets(ctx: Context, sets: list[tuple[Any, int | None, str]]) -> list:
    """Several label arrays ``(labels, expected_length or None, name)`` converted together.

    When a host array holds values the backend cannot (see :func:`convert_labels`), every
    array of the call gets class ids from one mapping, so a label means the same class in
    each — also an array converted earlier in the same call (``ctx.label_history``, e.g.
    ``labels`` before ``ref_labels``): its ids are kept and new values get unused ids.
    """
    from . import backend_of

    xp, be = ctx.xp, ctx.backend
    hosts: list = []
    for labels, batch, name in sets:
        if labels is None:
            raise TypeError(f"{name}: expected an integer array of shape (B,), got None")
        own = backend_of(labels)
        arr = None
        if own is not be:
            arr = own.to_numpy(labels) if own is not None else _host_labels(labels, name)
            if arr.dtype.kind not in "iu":
                raise TypeError(f"{name}: expected an integer dtype, got {arr.dtype}")
        hosts.append(arr)
    out = [labels if arr is None else be.from_numpy(arr, device=ctx.device)
           for (labels, _, _), arr in zip(sets, hosts)]
    remap = any(arr is not None and not _fits(xp, lab, arr) for lab, arr in zip(out, hosts))
    if remap:
        lo_hi = f"{be.name} integer labels of dtype {next(l for l, a in zip(out, hosts) if a is not None).dtype}"
        values = [a if a is not None else _native_values(be, lab, name, lo_hi)
                  for a, lab, (_, _, name) in zip(hosts, out, sets)]
        ids = _joint_ids(ctx, be, values)
        out = [be.from_numpy(i, device=ctx.device) for i in ids]
        hosts = values
    else:
        ids = [None] * len(out)
    for (labels, batch, name), lab, arr, i in zip(sets, out, hosts, ids):
        ctx.label_history.append((arr, i, lab))
    checked = []
    for (labels, batch, name), lab in zip(sets, out):
        if lab.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D array of shape (B,), got shape {tuple(lab.shape)}")
        if xp.isdtype(lab.dtype, "bool") or not xp.isdtype(lab.dtype, "integral"):
            raise TypeError(f"{name}: expected an integer dtype, got {lab.dtype}")
        if batch is not None and lab.shape[0] != batch:
            raise ValueError(f"{name}: length {lab.shape[0]} does not match the batch size {batch} of the embeddings")
        if ctx.device is not None and be.device_of(lab) != ctx.device:
            import array_api_compat

            lab = array_api_compat.to_device(lab, ctx.device)
        checked.append(lab)
    return checked


def _joint_ids(ctx: Context, be: Backend, values: list[np.ndarray]) -> list[np.ndarray]:
    """Class ids for ``values`` consistent with the arrays converted earlier in the call."""
    if not ctx.label_history:
        return dense_label_ids(values)
    # earlier arrays keep their ids (their values as converted, or the ids they were given)
    known_vals, known_ids = [], []
    for arr, ids, lab in ctx.label_history:
        v = arr if arr is not None else _native_values(be, lab, "labels", "a 32-bit backend")
        known_vals.append(np.ravel(v))
        known_ids.append(np.ravel(ids if ids is not None else v).astype(np.int64))
    kv = dense_label_ids(known_vals + [np.ravel(v) for v in values])  # one ranking of all values
    rank_k = np.concatenate(kv[:len(known_vals)]) if known_vals else np.zeros(0, np.int32)
    id_k = np.concatenate(known_ids) if known_ids else np.zeros(0, np.int64)
    table = {int(r): int(i) for r, i in zip(rank_k, id_k)}
    used = set(table.values())
    fresh = (i for i in range(len(used) + sum(v.size for v in values) + 1) if i not in used)
    out = []
    for r in kv[len(known_vals):]:
        ids = np.empty(r.shape, dtype=np.int64)
        for j, rv in enumerate(np.ravel(r).tolist()):
            if rv not in table:
                table[rv] = next(fresh)
            ids.flat[j] = table[rv]
        out.append(ids.astype(np.int32))
    return out


def check_margin(margin: Any) -> None:
    _check_margin(margin)


def check_bool(value: Any, name: str) -> bool:
    """A flag (``soft``, ``return_info``): a Python or NumPy bool, nothing else — a string
    such as ``"False"`` or ``"no"`` is truthy and would silently mean the opposite."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _finish_sqdist(self, xp, d2, sqrt):
    """Clamp squared distances at 0, zero the diagonal exactly, then (optionally) the
    safe square root.  Backends override it with fused or in-place versions."""
    d2 = self.zero_diagonal(xp, self.clamp_min0(xp, d2))
    return self.safe_sqrt(xp, d2) if sqrt else d2


Backend.finish_sqdist = _finish_sqdist


def _gram_to_sqdist(self, xp, G, sq):
    """Squared distances ``sq_i + sq_j - 2 G_ij`` from a Gram matrix, exactly symmetric.

    A general matmul does not promise ``(X Xᵀ)ᵢⱼ == (X Xᵀ)ⱼᵢ`` bit for bit (torch's does
    not), so G is symmetrised first; backends whose matmul is symmetric override this.
    """
    half = xp.asarray(0.5, dtype=G.dtype, device=self.device_of(G))
    G = (G + G.T) * half
    two = xp.asarray(2.0, dtype=G.dtype, device=self.device_of(G))
    return (sq[:, None] + sq[None, :]) - two * G


Backend.gram_to_sqdist = _gram_to_sqdist


#: rows per block of the portable refinement's direct recomputation
_REFINE_BLOCK = 64


def _refine_sqdist(self, xp, x, d, w, tau, pairs):
    """Recompute the close pairs from the coordinates; equal rows get equal distances.

    ``d`` (B, B) holds Gram-formula values (squared euclidean, or ``1 - cos``) whose
    absolute error is at most ~``eps·(w_i + w_j)``.  Every pair with
    ``d_ij < tau·(w_i + w_j)`` — where that error would be more than ``0.08·sqrt(eps)``
    relative — is replaced by ``pairs(xp, x_i, x_j)`` (a direct formula over the last axis,
    broadcasting).  Then every row equal bit for bit to an earlier one takes that row's
    distances (rows and columns), so duplicates are exactly 0 apart and exactly equidistant
    from any third row.  The result is exactly symmetric; its diagonal is set later
    (``finish_sqdist``).

    Portable version (eager, data-dependent: NumPy-like namespaces, array-api-strict,
    CuPy): the row blocks that hold a close pair are recomputed densely.  Backends
    override it with a sparse (NumPy, torch) or a static-shape (JAX) version.
    """
    n = d.shape[0]
    if n < 2 or tau <= 0:
        return d
    thr = w * tau
    flag = d < (thr[:, None] + thr[None, :])
    if not bool(xp.any(flag)):
        return d
    dev = self.device_of(d)
    idx = xp.arange(n, device=dev)
    out, reps = [], []
    for i in range(0, n, _REFINE_BLOCK):
        i2 = min(n, i + _REFINE_BLOCK)
        fb, db, ib = flag[i:i2, :], d[i:i2, :], idx[i:i2]
        if bool(xp.any(fb)):
            a = x[i:i2, None, :]
            v = pairs(xp, a, x[None, :, :])
            db = xp.where(fb, v, db)
            dup = fb & xp.all(a == x[None, :, :], axis=-1)
            first = xp.min(xp.where(dup, idx[None, :], xp.full_like(dup, n, dtype=idx.dtype)), axis=1)
            ib = xp.minimum(ib, first)
        out.append(db)
        reps.append(ib)
    d = xp.concat(out, axis=0)
    # exact symmetry: the direct formula need not be symmetric bit for bit (cosine's is not)
    d = xp.where(idx[:, None] < idx[None, :], d, d.T)
    rep = xp.concat(reps)
    if bool(xp.any(rep != idx)):
        # duplicates: d[i, j] <- d[rep_i, rep_j], with d[r, r] = 0 so two equal rows are 0 apart
        d = xp.take(xp.take(self.zero_diagonal(xp, d), rep, axis=0), rep, axis=1)
    return d


Backend.refine_sqdist = _refine_sqdist


def _sqdist_from_gram(self, xp, x, G, sq, tau, pairs, sqrt):
    """Distances from the Gram matrix ``G`` of the shifted rows (``sq`` its diagonal):
    ``gram_to_sqdist``, ``refine_sqdist`` (close pairs from ``x``), ``finish_sqdist``.
    Backends may fuse the three (NumPy does, one row block at a time)."""
    d2 = self.gram_to_sqdist(xp, G, sq)
    d2 = self.refine_sqdist(xp, x, d2, sq, tau, pairs)
    return self.finish_sqdist(xp, d2, sqrt=sqrt)


Backend.sqdist_from_gram = _sqdist_from_gram


def resolve_labels(labels: Any, backend: Any = None, name: str = "labels"):
    """Resolve a labels-only call (the masks): returns ``(backend, xp, labels)``."""
    from . import backend_of, get_backend

    if backend is None:
        be = backend_of(labels) or get_backend("numpy")
    else:
        be = get_backend(backend)
    ctx = Context(backend=be, xp=be.namespace(), device=None, dtype=None, out_dtype=None)
    (lab,) = convert_label_sets(ctx, [(labels, None, name)])
    if lab.shape[0] == 0:
        raise ValueError(f"{name}: empty batch; need at least one label")
    return be, ctx.xp, lab
