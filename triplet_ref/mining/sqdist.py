"""The (squared) euclidean distance matrix: the step every euclidean loss starts with.

Portable: the Gram formula on rows shifted by the first row, in
:func:`triplet_ref.distances.gram_sqdist` (its numerics are documented there).  Native:
torch's fused distance kernel (``_PairwiseSq`` in ``triplet_ref/backends/_torch.py``:
per stripe of rows, the GEMM of the part on and above the diagonal only, then the
epilogue, the close-pair test and the mirror below the diagonal in one sweep of the
numba pass :func:`stripe_kernel` on CPU (the columns split among threads), else in place
with torch operations); NumPy runs the portable formula with in-place
backend primitives (its ``X @ X.T`` is a symmetric syrk); JAX on CPU runs it with the
epilogue as one fused pass and the exact symmetry as a tile-by-tile mirror
(``_jax._sqdist_mirrored``).  No NumPy kernel: a GEMM is already native everywhere.
Their cost against the bare ``X @ X.T``: ``python benchmarks/dist_ratio.py``.
"""
from __future__ import annotations

from ._dispatch import Step

__all__ = ["SQDIST"]


def _portable(ctx, x, squared: bool):
    from ..distances import gram_sqdist

    return gram_sqdist(ctx, x, squared)


def stripe_kernel(dtype):
    """The numba stripe pass (``_numba_sqdist.sqdist_stripe``) when the kernels' body
    selection (``TRIPLET_REF_NUMBA`` / ``force_body``, :mod:`._numba`) picks numba for
    ``dtype`` (a NumPy dtype), else ``None`` (the caller's framework path).  ``auto``:
    numba when it is importable and the dtype is float32/float64; ``numba``: raises as
    the mining kernels do when it cannot run."""
    import numpy as np

    from . import _numba

    if not _numba._use_numba(np.empty(0, dtype=dtype), "pairwise_distances", True):
        return None
    from ._numba_sqdist import sqdist_stripe

    return sqdist_stripe


SQDIST = Step("sqdist", "pairwise_distances", _portable)
"""``(x, squared) -> d``: ``(B, B)`` euclidean (or squared, ``squared=True``) distances of
the rows of ``x`` (B, D), of ``x``'s dtype, exactly 0 on the diagonal, differentiable."""
