"""The mining engine: every step that has more than one implementation, in one place.

=======================  ====================================================  ==================
step                     portable (array API)                                  native
=======================  ====================================================  ==================
:data:`SQDIST`           Gram formula (:func:`triplet_ref.distances.gram_sqdist`)  torch CPU/CUDA kernel
:data:`BATCH_ALL_HINGE`  :func:`.batch_all.hinge_rows`                         NumPy kernel
:data:`BATCH_ALL_SOFT`   :func:`.batch_all.soft_rows`                          —
:data:`SEMIHARD_CHOICE`  :func:`.semihard.choose`                              NumPy kernel
:data:`SEMIHARD_SUMS`    :func:`.semihard_sums.sums`                           NumPy kernel
:data:`CONTRASTIVE_SUMS` :func:`.contrastive.pair_sums`                        NumPy kernel
:data:`HARDEST`          :func:`.hardest.choose`                               NumPy kernel
=======================  ====================================================  ==================

:data:`HARDEST` is batch-hard's choice (both ``soft`` values): from ``d`` and the labels
(and the anchor's own column, ``a + offset``) the hardest positive's and negative's index
and the valid flag per row, ``(B,)`` outputs (``Kernel.rows``); its kernel builds no
``(B, R)`` mask (numba: one pass over each row).  Not differentiable: the loss gathers
the two distances from ``d``, whose gradient is the backend's scatter.

:data:`SEMIHARD_SUMS` and :data:`CONTRASTIVE_SUMS` are fused reductions: their loss
sums, margin derivatives and counts are 0-d outputs (``Kernel.scalars``) of one kernel
call (the semi-hard choice and one pass over the terms; one pass over the pairs), so no
``(B, R)`` gather, hinge or mask follows them; the contrastive step's torch double
backward runs its array-API backward (``Kernel.backward_ad``) and under ``jax.jit`` it
stays portable (``Kernel.fusible``: XLA fuses it).  The losses run them for ``"mean"`` /
``"sum"``; ``"none"`` keeps the ``(B, R)`` terms (the portable formula; semi-hard's after
its choice step).  The portable :data:`SEMIHARD_SUMS` runs :data:`SEMIHARD_CHOICE`
through the dispatcher; its kernel calls the choice kernel directly.

A NumPy kernel is native on every CPU backend: NumPy calls it, torch through a custom op
and JAX through a host callback (``buffer_callback``) — bridges built once, generically, from the step's
:class:`Kernel` spec (``triplet_ref/backends/_torch.py``, ``_jax.py``).  On GPU the
portable version runs.  The losses call :func:`run` only; :func:`force` makes every step
run one implementation (``"portable"`` or ``"native"``), for tests.

Each NumPy kernel has two bodies: pure NumPy (always) and a numba-compiled one
(``_numba_kernels.py``, with the optional extra ``pip install 'triplet_ref[numba]'``),
which makes one vectorised pass over each row's negatives per positive instead of
NumPy's temporaries, and for rows with more than ``_numba.COMPILED_K`` positives a
linear-time bucket (counting) sort of the row's negatives instead of NumPy's per-row
SIMD sort: every row of every label regime runs compiled.  :class:`Body` chooses: ``TRIPLET_REF_NUMBA`` unset → ``auto``
(numba where importable, for the kernels it makes faster: the batch-all hinge forward
and backward, the semi-hard choice and sums and the contrastive sums; the soft rows,
one log1p per term, are slower compiled than NumPy's SIMD log1p and stay NumPy),
``TRIPLET_REF_NUMBA=1`` → numba for every kernel (``ImportError`` without
numba), ``0`` → pure NumPy; :func:`force_body` overrides it in a ``with`` block (tests).
numba is imported on the first kernel call that selects it, never by ``import
triplet_ref``; each kernel compiles on first use per dtype (float32, float64; others
run the NumPy body) and is cached on disk (``cache=True``).
"""
from __future__ import annotations

from ._dispatch import Impl, Kernel, NativeUnsupported, Step, force, forced, has_native, implementation, run
from ._numba import Body, body, force_body, numba_available
from .sqdist import SQDIST

__all__ = [
    "Impl", "Kernel", "NativeUnsupported", "Step", "force", "forced", "has_native", "implementation", "run",
    "Body", "body", "force_body", "numba_available",
    "STEPS", "kernel_steps", "SQDIST", "BATCH_ALL_HINGE", "BATCH_ALL_SOFT", "SEMIHARD_CHOICE",
    "SEMIHARD_SUMS", "CONTRASTIVE_SUMS", "HARDEST",
]

_LAZY = {
    "BATCH_ALL_HINGE": ("batch_all", "HINGE"),
    "BATCH_ALL_SOFT": ("batch_all", "SOFT"),
    "SEMIHARD_CHOICE": ("semihard", "CHOICE"),
    "SEMIHARD_SUMS": ("semihard_sums", "SUMS"),
    "CONTRASTIVE_SUMS": ("contrastive", "SUMS"),
    "HARDEST": ("hardest", "CHOICE"),
}


def __getattr__(name):
    # the loss steps use the losses' shared helpers, and the losses import this package:
    # their modules load on first use (distances.py needs only SQDIST and run)
    import importlib

    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    if name == "STEPS":
        #: every mining step, by name
        return {s.name: s for s in (SQDIST, __getattr__("BATCH_ALL_HINGE"), __getattr__("BATCH_ALL_SOFT"),
                                    __getattr__("SEMIHARD_CHOICE"), __getattr__("SEMIHARD_SUMS"),
                                    __getattr__("CONTRASTIVE_SUMS"), __getattr__("HARDEST"))}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def kernel_steps():
    """Every mining step that has a NumPy kernel: the framework bridges build one native
    op per step from these, once, when their backend is created."""
    return [s for s in __getattr__("STEPS").values() if s.kernel is not None]
