"""The kernels' two bodies: pure NumPy (always there) and numba-compiled (optional).

A step's NumPy kernel (``Kernel.forward`` / ``backward``) is an :class:`Accelerated`
function: each call runs the numba body (``_numba_kernels.py``: one pass per row, rows
in parallel, compiled on first use and cached on disk) when numba is selected and
importable and the distances are float32/float64, else the pure-NumPy body.  Every CPU
backend reaches the kernels through them (NumPy directly, torch and JAX through their
generic bridges), so the choice applies to all three.

The choice is typed (:class:`Body`):

* ``TRIPLET_REF_NUMBA`` (environment, read on every call): unset or empty → ``auto``
  (numba when it is importable), ``1`` → numba (an ``ImportError`` when it is not
  installed), ``0`` → NumPy; anything else raises ``ValueError``.
* :func:`force_body` (tests, debugging) overrides it inside a ``with`` block.

Importing this module imports no numba; the first kernel call that selects numba
imports it (and compiles, or loads from numba's cache, the kernel for that dtype).
"""
from __future__ import annotations

import enum
import functools
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["Body", "Accelerated", "force_body", "body", "numba_available", "ENV"]

#: the environment variable that selects the kernels' body
ENV = "TRIPLET_REF_NUMBA"


class Body(enum.Enum):
    """Which body of a NumPy kernel runs.

    ``AUTO``: numba where importable (and the dtype is float32/float64), else NumPy.
    ``NUMPY``: the pure-NumPy body.  ``NUMBA``: the numba body; raises ``ImportError``
    where numba is not installed and ``NotImplementedError`` for another dtype.
    """

    AUTO = "auto"
    NUMPY = "numpy"
    NUMBA = "numba"

    @classmethod
    def parse(cls, value: Any) -> "Body":
        """A :class:`Body` from itself or its name; anything else raises ``ValueError``."""
        from ._dispatch import parse_choice

        return parse_choice(cls, value, "body")


_ENV_VALUES = {"": Body.AUTO, "1": Body.NUMBA, "0": Body.NUMPY}
_forced: Body | None = None


def body() -> Body:
    """The body selected now: :func:`force_body`'s, else ``TRIPLET_REF_NUMBA``'s."""
    if _forced is not None:
        return _forced
    raw = os.environ.get(ENV, "")
    try:
        return _ENV_VALUES[raw.strip()]
    except KeyError:
        raise ValueError(f"{ENV}: expected 0, 1 or unset, got {raw!r}") from None


@contextmanager
def force_body(value: Body | str) -> Iterator[Body]:
    """Run every NumPy kernel with ``value``'s body inside the ``with`` block
    (process-wide, not thread-safe; overrides ``TRIPLET_REF_NUMBA``)."""
    global _forced
    b = Body.parse(value)
    before = _forced
    _forced = b
    try:
        yield b
    finally:
        _forced = before


_kernels = None
_import_error: ImportError | None = None
_lock = threading.Lock()


def _load():
    global _kernels, _import_error
    if _kernels is None and _import_error is None:
        try:
            from . import _numba_kernels
        except ImportError as exc:  # numba (or llvmlite) not installed or broken
            _import_error = exc
        else:
            _kernels = _numba_kernels
    return _kernels


def numba_available() -> bool:
    """Whether the numba body can run (imports numba on first call)."""
    return _load() is not None


_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: rows with more positives (terms) than this take the compiled bucket pass (a counting
#: sort of the row's negatives, O(C + K·bucket) per row) instead of the compiled pass per
#: positive (O(K·C), faster for few positives).  Read at call time (tests lower it).
COMPILED_K = 48


def _use_numba(d: np.ndarray, name: str, auto: bool) -> bool:
    b = body()
    if b is Body.NUMPY:
        return False
    ok_dtype = d.dtype in _DTYPES
    if b is Body.AUTO:
        return auto and ok_dtype and _load() is not None
    if _load() is None:
        raise ImportError(f"{name}: the numba body is selected ({ENV}=1 or force_body('numba')) "
                          f"but numba cannot be imported: {_import_error}")
    if not ok_dtype:
        raise NotImplementedError(f"{name}: the numba body runs float32/float64 distances, got "
                                  f"{d.dtype} (force_body('numba'))")
    return True


def _c(a: np.ndarray) -> np.ndarray:
    """C-contiguous and writable (numba compiles once per layout and writability)."""
    a = np.asarray(a)
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, order="C", copy=True)


def _full(a, dtype, shape) -> np.ndarray:
    """``a`` as an array of ``dtype`` and ``shape``: itself when it has that shape already
    (``np.broadcast_to`` returns a read-only view even then, which ``_c`` would copy: two
    (B, R) copies per backward), else broadcast (a 0-d gradient)."""
    a = np.asarray(a, dtype=dtype)
    return a if a.shape == tuple(shape) else np.broadcast_to(a, shape)


class Accelerated:
    """A NumPy kernel with a numba twin: ``f(*arrays)`` runs the selected body.

    ``numpy``: the pure-NumPy kernel (its signature is the kernel's); ``auto``: whether
    ``Body.AUTO`` runs the numba body (only where it measured faster);
    ``run(kernels, numpy_body, *arrays)``: the call of the numba body (``kernels`` is
    the compiled module; rows it leaves to NumPy go to ``numpy_body``)."""

    def __init__(self, numpy_body: Callable[..., Any], run: Callable[..., Any], auto: bool = True):
        self.numpy = numpy_body
        self._run = run
        self.auto = auto
        functools.update_wrapper(self, numpy_body)

    def numba(self, *arrays):
        """The numba body (selected or not; numba must be importable)."""
        if _load() is None:
            raise ImportError(f"{self.__name__}: numba cannot be imported: {_import_error}")
        with np.errstate(invalid="ignore", over="ignore"):
            return self._run(_kernels, self.numpy, *arrays)

    def __call__(self, *arrays):
        if _use_numba(np.asarray(arrays[0]), self.__name__, self.auto):
            return self.numba(*arrays)
        return self.numpy(*arrays)

    def __repr__(self) -> str:
        return f"<accelerated kernel {self.__name__}>"


def _pm(d, margin):
    """The margin and ±inf as scalars of ``d``'s dtype."""
    t = d.dtype.type
    return t(margin), t(np.inf), t(-np.inf)


def _run(fn, *args):
    # one compiled call at a time (JAX runs callbacks on its own threads): with
    # ``_numba_kernels._PARALLEL`` not every numba threading layer is safe under
    # concurrent entry
    with _lock:
        fn(*args)


def _run_rows(fn, *args):
    """:func:`_run` with the rows split among threads: a large call (at least
    ``_blocks.THREAD_MIN_ELEMENTS`` elements, the NumPy body's rule) on several cores runs
    ``fn`` on contiguous row slices of its 2-D arrays (every 2-D argument is (R, C), the
    kernels write disjoint rows and hold no GIL: ``nogil=True``), through
    :func:`._blocks.in_threads`."""
    from . import _blocks

    R, C = args[0].shape
    n = 1 if not ROW_THREADS or R * C < _blocks.THREAD_MIN_ELEMENTS else min(_blocks.cpu_count(), R // _MIN_ROWS)
    if n <= 1:
        _run(fn, *args)
        return

    def part(sl):
        fn(*(a[sl] if isinstance(a, np.ndarray) and a.ndim == 2 else a for a in args))

    with _lock:
        _blocks.in_threads(part, [slice(R * i // n, R * (i + 1) // n) for i in range(n)], n)


_MIN_ROWS = 64  # rows per thread at least
#: whether :func:`_run_rows` splits large calls among threads (``benchmarks/regime_ratios.py
#: --numba-threads off`` measures without)
ROW_THREADS = True


def _hinge_forward(k, numpy_body, d, pos, neg, margin):
    d, pos, neg = _c(d), _c(pos), _c(neg)
    out = np.zeros(d.shape, dtype=d.dtype)
    count = np.zeros(d.shape, dtype=np.int32)
    _run_rows(k.hinge_forward, d, pos, neg, *_pm(d, margin), COMPILED_K, out, count)
    return out, count


def _hinge_backward(k, numpy_body, d, pos, neg, margin, grad, count):
    d, pos, neg = _c(d), _c(pos), _c(neg)
    grad = _c(_full(grad, d.dtype, d.shape))
    count = _c(_full(count, np.int32, d.shape))
    out = np.zeros(d.shape, dtype=d.dtype)
    _run_rows(k.hinge_backward, d, pos, neg, *_pm(d, margin), COMPILED_K, grad, count, out)
    return out


def _soft_forward(k, numpy_body, d, pos, neg, margin):
    d, pos, neg = _c(d), _c(pos), _c(neg)
    out = np.zeros(d.shape, dtype=d.dtype)
    slope = np.zeros(d.shape, dtype=d.dtype)
    count = np.zeros(d.shape, dtype=np.int32)
    _run(k.soft_forward, d, pos, neg, d.dtype.type(margin), d.dtype.type(1), out, count, slope)
    return out, count, slope


def _soft_backward(k, numpy_body, d, pos, neg, margin, grad, slope):
    d, pos, neg = _c(d), _c(pos), _c(neg)
    grad = _c(_full(grad, d.dtype, d.shape))
    slope = _c(_full(slope, d.dtype, d.shape))
    out = np.zeros(d.shape, dtype=d.dtype)
    _run(k.soft_backward, d, pos, neg, d.dtype.type(margin), d.dtype.type(1), grad, slope, out)
    return out


def _semihard_choice(k, numpy_body, d, neg, term):
    d, neg, term = _c(d), _c(neg), _c(term)
    chosen = np.zeros(d.shape, dtype=np.int64)
    semi = np.zeros(d.shape, dtype=bool)
    _run_rows(k.semihard_choice, d, neg, term, d.dtype.type(0), COMPILED_K, chosen, semi)
    return chosen, semi


def hinge_forward(numpy_body):
    """The batch-all hinge forward (``batch_all.batch_all_forward``) with its numba twin."""
    return Accelerated(numpy_body, _hinge_forward)


def hinge_backward(numpy_body):
    return Accelerated(numpy_body, _hinge_backward)


# the soft sums need a log1p per term (the NumPy body: one SIMD log1p, the exps factored
# per row and per positive); compiled it is a scalar libm call, slower than the NumPy
# body even in the factored form: numba runs them only when selected
def soft_forward(numpy_body):
    return Accelerated(numpy_body, _soft_forward, auto=False)


def soft_backward(numpy_body):
    return Accelerated(numpy_body, _soft_backward, auto=False)


def semihard_choice(numpy_body):
    return Accelerated(numpy_body, _semihard_choice)
