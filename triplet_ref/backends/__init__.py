"""Backend registry, input resolution and per-backend primitives.

Nothing here imports a framework at import time.  A framework is imported only when the
user names it (``backend="torch"``) or passes one of its arrays, in which case it is
already in ``sys.modules``.  Backend objects are created lazily and cached.

The rest of the package talks to a backend through two things:

* ``resolve(embeddings, labels, backend)`` → :class:`Context` with the array namespace
  ``xp`` (array-api-compat wrapped), the device, the converted arrays and the
  :class:`~triplet_ref.backends._base.Backend` whose primitives (``safe_sqrt``,
  ``sort_rows``, ``searchsorted_rows``, ``take_rows``, ...) the losses call;
* the test adapters on the same object (``from_numpy``, ``to_numpy``,
  ``value_and_grad``, ``jit``, ``devices``) used by the conformance suite.
"""
from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import Any

from ._base import Backend, Context, resolve, resolve_labels, resolve_many

__all__ = [
    "Backend",
    "Context",
    "BACKEND_NAMES",
    "available_backends",
    "backend_of",
    "get_backend",
    "resolve",
    "resolve_many",
    "resolve_labels",
]

#: every backend name accepted by ``backend=``
BACKEND_NAMES = ("numpy", "torch", "jax", "cupy", "array_api_strict")

_MODULES = {
    "numpy": "._numpy",
    "torch": "._torch",
    "jax": "._jax",
    "cupy": "._cupy",
    "array_api_strict": "._strict",
}
# the module a backend needs, and the pip extra that installs it
_FRAMEWORK = {
    "numpy": ("numpy", None),
    "torch": ("torch", "torch"),
    "jax": ("jax", "jax"),
    "cupy": ("cupy", "cupy"),
    "array_api_strict": ("array_api_strict", "strict"),
}
_CACHE: dict[str, Backend] = {}
# Creating a backend imports its framework (seconds for torch or jax).  Threads making
# their first calls at once must neither create a backend twice nor use one whose module
# is half imported: creation happens under this lock (re-entrant: a backend module may
# look up another backend while it is being created), and a backend enters _CACHE only
# once everything it needs is imported.
_LOCK = threading.RLock()


class _Gate:
    """Calls run together; a framework import runs alone (issue 13, item 12).

    While one thread imports a framework, ``sys.modules`` holds the half-initialised
    module, and array-api-compat's helpers (``device``, ``is_jax_array``, ... which every
    call reaches, directly or through array-api-extra) probe every framework found there:
    a concurrent call in another thread fails with "partially initialized module 'jax'".
    So the public functions run as *readers* (any number at once, re-entrant per thread)
    and a backend's creation as a *writer*, which waits for the running calls to finish
    and holds new ones back until the import is complete.  The public wrapper creates the
    backends a call needs before it enters (see ``ensure_backends``), so a reader never
    waits for a writer; a creation that still happens inside a call (an array nested in a
    list) does not wait for the other readers, as before.
    """

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._local = threading.local()

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    def enter(self) -> None:
        depth = self._depth()
        self._local.depth = depth + 1
        if depth:
            return
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1

    def exit(self) -> None:
        depth = self._depth() - 1
        self._local.depth = depth
        if depth:
            return
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def begin_write(self) -> bool:
        """Wait for exclusive use (unless this thread is inside a call); True if taken."""
        if self._depth():
            return False
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        return True

    def end_write(self) -> None:
        with self._cond:
            self._writing = False
            self._cond.notify_all()


GATE = _Gate()


def _name_of(backend: Any) -> str:
    if isinstance(backend, str):
        name = backend.lower().replace("-", "_")
        aliases = {"np": "numpy", "pytorch": "torch", "strict": "array_api_strict", "jax.numpy": "jax"}
        name = aliases.get(name, name)
        if name not in BACKEND_NAMES:
            raise ValueError(
                f"backend: unknown backend {backend!r}; expected one of {', '.join(BACKEND_NAMES)}, "
                "a module, or None"
            )
        return name
    if isinstance(backend, ModuleType):
        modname = backend.__name__
        known = {
            "numpy": "numpy", "jax": "jax", "jax.numpy": "jax", "torch": "torch", "cupy": "cupy",
            "array_api_strict": "array_api_strict",
            "array_api_compat.numpy": "numpy", "array_api_compat.torch": "torch",
            "array_api_compat.cupy": "cupy",
        }
        if modname in known:
            return known[modname]
        raise ValueError(f"backend: unsupported module {modname!r}; expected one of {', '.join(BACKEND_NAMES)}")
    raise TypeError(f"backend: expected a backend name, a module or None, got {type(backend).__name__}")


def get_backend(backend: Any) -> Backend:
    """The cached :class:`Backend` for a name or module; imports the framework.

    Raises ``ValueError`` for an unknown name and ``ImportError`` naming the extra to
    install when the framework is missing.
    """
    name = _name_of(backend)
    be = _CACHE.get(name)
    if be is not None:
        return be
    _cold_lookup_while_compiling(name)
    with _LOCK:
        if name not in _CACHE:  # another thread may have created it while we waited
            exclusive = GATE.begin_write()
            try:
                _CACHE[name] = _create(name)
            finally:
                if exclusive:
                    GATE.end_write()
        return _CACHE[name]


def ensure_backends(values, backend: Any = None) -> None:
    """Create, before a call starts, the backends it will need: the one named by
    ``backend`` (or NumPy's, which lists resolve to) and those of the arrays in
    ``values`` (frameworks already imported only, like :func:`backend_of`)."""
    if backend is not None:
        get_backend(backend)
    elif "numpy" not in _CACHE:
        get_backend("numpy")
    for v in values:
        backend_of(v)


def computes_in_full_precision(fn):
    """Decorator of the public functions: they compute in float32 (float64 stays
    float64) whatever ``torch.autocast`` says.

    Inside ``torch.autocast`` (CPU or CUDA) the call runs with autocast switched off, so
    the distance GEMM and the mining run in the compute dtype of the inputs
    (float16/bfloat16 embeddings, as autocast makes a ``Linear`` return them, are upcast to
    float32 as always) instead of being cast down piecewise; the result keeps the
    embeddings' dtype and the backward runs through the same casts.  Without torch
    imported, or outside autocast, it adds two flag lookups.
    """
    import functools

    @functools.wraps(fn)
    def call(*args, **kwargs):
        torch = sys.modules.get("torch")
        if torch is None:
            return fn(*args, **kwargs)
        cpu = torch.is_autocast_enabled("cpu")
        cuda = torch.is_autocast_enabled("cuda")
        if not (cpu or cuda):
            return fn(*args, **kwargs)
        if cpu and cuda:
            with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
                return fn(*args, **kwargs)
        with torch.autocast("cpu" if cpu else "cuda", enabled=False):
            return fn(*args, **kwargs)

    return call


def _create(name: str) -> Backend:
    """Import backend ``name``'s framework and module (under ``_LOCK``)."""
    mod, extra = _FRAMEWORK[name]
    try:
        importlib.import_module(mod)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        hint = f"pip install 'triplet_ref[{extra}]'" if extra else f"pip install {mod}"
        raise ImportError(f"backend={name!r} needs {mod}, which is not installed: {hint}") from exc
    impl = importlib.import_module(_MODULES[name], __name__)
    be = impl.BACKEND
    be.namespace()  # the namespace's (compat) modules are imported now, under the lock
    import array_api_extra  # noqa: F401  (the portable searchsorted imports it lazily)

    return be


def is_installed(name: str) -> bool:
    """Whether the framework of backend ``name`` can be imported (does not import it)."""
    mod = _FRAMEWORK[_name_of(name)][0]
    if mod in sys.modules:
        return True
    return importlib.util.find_spec(mod) is not None


def available_backends() -> list[str]:
    """Names of the backends whose framework is installed (nothing is imported)."""
    import importlib.util  # noqa: F401  (makes importlib.util available)

    return [n for n in BACKEND_NAMES if is_installed(n)]


def backend_of(x: Any) -> Backend | None:
    """The backend an array belongs to, or None for lists/scalars.

    Only frameworks already imported are considered, so this never imports one.
    """
    import numpy as np

    if isinstance(x, np.ndarray) or isinstance(x, np.generic):
        return get_backend("numpy")
    tmod = type(x).__module__ or ""
    top = tmod.split(".")[0]
    if top == "torch" and "torch" in sys.modules:
        return get_backend("torch")
    if top in ("jax", "jaxlib") and "jax" in sys.modules:
        return get_backend("jax")
    if top == "cupy" and "cupy" in sys.modules:
        return get_backend("cupy")
    if top == "array_api_strict" and "array_api_strict" in sys.modules:
        return get_backend("array_api_strict")
    return None


def _preload_imported() -> None:
    """Create the backends of the compiling frameworks the process has already imported.

    ``torch.compile(fullgraph=True)`` cannot trace the first, importing lookup of a
    backend, so when torch is already in ``sys.modules`` at ``import triplet_ref`` its
    backend (and jax's) is built now, outside any trace.  Nothing new is imported.
    """
    for name in ("torch", "jax"):
        if _FRAMEWORK[name][0] in sys.modules and name not in _CACHE:
            try:
                get_backend(name)
            except Exception:  # pragma: no cover - a broken install fails later, with its own error
                pass


def compiling() -> bool:
    """Whether torch.compile is tracing the current call (False when torch is not imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    fn = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(fn()) if fn is not None else False


class _BuildAfterImport:
    """A ``sys.meta_path`` finder that builds a backend right after its framework's first
    import completes (``import triplet_ref`` before ``import torch``): the backend is then
    ready before any ``torch.compile`` trace, whatever the import order.

    It finds the framework's spec with the other finders and wraps that spec's loader's
    ``exec_module`` (the loader object itself is unchanged); it removes itself after one
    import.  A failure to build is left to the first call to report.
    """

    def __init__(self, name: str):
        self.name = name
        self.module = _FRAMEWORK[name][0]
        self.busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module
        finder = self

        def exec_module(module):
            try:
                original(module)
            finally:
                try:
                    del loader.exec_module  # the loader's own method again
                except AttributeError:  # pragma: no cover
                    pass
                if finder in sys.meta_path:
                    sys.meta_path.remove(finder)
            if _LOCK._is_owned():  # imported by get_backend itself, which builds the backend
                return
            if not _LOCK.acquire(blocking=False):  # another thread is creating a backend:
                return  # this one is built by the first call instead
            try:
                get_backend(finder.name)
            except Exception:  # pragma: no cover - reported by the first call instead
                pass
            finally:
                _LOCK.release()

        try:
            loader.exec_module = exec_module
        except AttributeError:  # pragma: no cover - a loader that refuses attributes
            return spec
        return spec


def _build_on_import() -> None:
    """Build the torch backend as soon as torch is imported (see :class:`_BuildAfterImport`)."""
    if "torch" in sys.modules or any(isinstance(f, _BuildAfterImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BuildAfterImport("torch"))


def _cold_lookup_while_compiling(name: str) -> None:
    """A clear error instead of dynamo's trace of ``importlib`` (see :func:`_preload_imported`)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if compiling is not None and compiling():
        raise RuntimeError(
            f"triplet_ref: the {name} backend was first needed inside torch.compile, which cannot "
            "trace its one-time setup; import torch before triplet_ref, or call "
            f"triplet_ref.backends.get_backend({name!r}) (or any triplet_ref function) once "
            "before compiling"
        )


import importlib.util  # noqa: E402  (used by is_installed)
