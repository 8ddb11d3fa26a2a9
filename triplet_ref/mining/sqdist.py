"""The (squared) euclidean distance matrix: the step every euclidean loss starts with.

Portable: the Gram formula on rows shifted by the first row, in
:func:`triplet_ref.distances.gram_sqdist` (its numerics are documented there).  After the
GEMM, the finish — epilogue ``(|x_i|² + |x_j|²) − 2 G_ij``, close-pair test of the float
refinement, clamp, square root, zero diagonal, exact mirror below the diagonal — is on CPU,
when the kernels' body is numba (``TRIPLET_REF_NUMBA`` / ``force_body``, :mod:`._numba`),
one sweep of the numba pass :func:`stripe_kernel` over cache-sized tiles of each stripe of
rows, the stripe's columns split among threads (:class:`StripePass`):

* torch (``_PairwiseSq`` in ``triplet_ref/backends/_torch.py``): per stripe of rows, the
  GEMM of the part on and above the diagonal only (half the flops), then the pass on that
  stripe; without numba (or on CUDA, or another dtype) the same stripes are finished in
  place with torch operations;
* NumPy (``_numpy._sqdist_numba``): the pass in place on ``X @ X.T`` (a symmetric syrk);
  without numba, blocks of rows finished with in-place NumPy operations;
* JAX on CPU (``_jax._sqdist_numba``): the pass in place on XLA's buffer of ``G`` through
  ``jax.experimental.buffer_callback`` (eager, ``jax.jit``, ``vmap``: sequential; its
  derivative is the formula's, mirrored); without numba the epilogue as one fused XLA pass
  and the exact symmetry as a tile-by-tile mirror that also tests for close pairs
  (``_jax._sqdist_mirrored``).

No kernel of its own in the dispatch table: a GEMM is already native everywhere.  Their
cost against the bare ``X @ X.T``: ``python benchmarks/dist_ratio.py``.
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


class StripePass:
    """Runs a stripe kernel (:func:`stripe_kernel`) on the stripes of ``d`` ``(B, B)``
    (NumPy views: ``d`` writable, holding the Gram products on and above the diagonal;
    ``sq`` the Gram diagonal, ``thr`` the close-pair weights, ``-inf`` for none), each
    stripe's columns split among up to ``workers`` threads (whole ``tile``-column parts)
    when it holds at least ``thread_min`` entries, each thread with its own buffers of
    ``found_per_row · B`` close pairs.  Use as a context manager (the pool is shut down
    on exit); :meth:`found` gives the close pairs after the last stripe."""

    def __init__(self, kernel, d, sq, thr, sqrt: bool, tile: int, workers: int,
                 thread_min: int, found_per_row: int):
        import numpy as np

        n = d.shape[0]
        self.kernel, self.d, self.sq, self.thr, self.sqrt = kernel, d, sq, thr, bool(sqrt)
        self.tile, self.workers, self.thread_min = max(1, int(tile)), max(1, int(workers)), thread_min
        self.cap = int(found_per_row) * n
        self.bufs = [(np.empty(self.cap, np.int64), np.empty(self.cap, np.int64),
                      np.empty(self.cap, d.dtype)) for _ in range(self.workers)]
        self.counts = [0] * self.workers
        self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def _part(self, k, g, g2, lo, hi):
        self.counts[k] = self.kernel(self.d, self.sq, self.thr, g, g2, lo, hi, self.tile,
                                     self.sqrt, *self.bufs[k], self.counts[k])

    def stripe(self, g: int, g2: int) -> None:
        """Finish the rows ``g:g2`` (every column right of ``g``)."""
        n, tile = self.d.shape[0], self.tile
        k = min(self.workers, (n - g) // tile) if (g2 - g) * (n - g) >= self.thread_min else 1
        if k <= 1:
            self._part(0, g, g2, g, n)
            return
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(self.workers - 1)
        # k column ranges of about equal width (whole tiles), the first in this thread
        cuts = [g + (n - g) * j // k // tile * tile for j in range(k)] + [n]
        futures = [self.pool.submit(self._part, j, g, g2, cuts[j], cuts[j + 1]) for j in range(1, k)]
        self._part(0, g, g2, cuts[0], cuts[1])
        for f in futures:
            f.result()  # re-raises a worker's exception

    @property
    def count(self) -> int:
        """How many close pairs the stripes found (stored or not)."""
        return sum(self.counts)

    def found(self):
        """``(r, c, d²_rc)`` NumPy arrays of the close pairs ``r < c`` found, or ``None``
        when a thread found more than its buffers hold (the caller searches ``d``)."""
        import numpy as np

        if any(c > self.cap for c in self.counts):
            return None
        return tuple(np.concatenate([b[j][:c] for b, c in zip(self.bufs, self.counts)]) for j in range(3))


SQDIST = Step("sqdist", "pairwise_distances", _portable)
"""``(x, squared) -> d``: ``(B, B)`` euclidean (or squared, ``squared=True``) distances of
the rows of ``x`` (B, D), of ``x``'s dtype, exactly 0 on the diagonal, differentiable."""
