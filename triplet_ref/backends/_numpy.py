"""NumPy backend: no autograd, so primitives may work in place on intermediates.

Sorting, searching and gathering use the portable array-API primitives: NumPy runs the
mining steps' NumPy kernels natively (``triplet_ref/mining/``), so those primitives serve
only the portable implementation, which the suite forces on NumPy too."""
from __future__ import annotations

import numpy as np

from ._base import Backend


class NumpyBackend(Backend):
    name = "numpy"

    def namespace(self):
        import array_api_compat.numpy as xp

        return xp

    def is_native(self, x):
        return isinstance(x, np.ndarray)

    def from_numpy(self, a, dtype=None, device=None):
        a = np.asarray(a)
        return a.astype(dtype) if dtype is not None else a

    def to_numpy(self, x):
        return np.asarray(x)

    def gram_to_sqdist(self, xp, G, sq):
        # NumPy computes ``X @ X.T`` with syrk, which is exactly symmetric; G is a fresh
        # intermediate, so the arithmetic is done in place.  ``sq_i + sq_j`` is formed
        # first (it commutes exactly), then added once: d²_ij and d²_ji round alike.
        G *= -2
        G += sq[:, None] + sq[None, :]
        return G

    def finish_sqdist(self, xp, d2, sqrt):
        # d2 is a fresh intermediate owned by the caller: work in place.
        np.maximum(d2, 0, out=d2)
        np.fill_diagonal(d2, 0)
        if sqrt:
            np.sqrt(d2, out=d2)
        return d2

    def native_kernel(self, step, like):
        # the steps' NumPy kernels are NumPy's native implementation
        return step.kernel.forward if step.kernel is not None else None

    def devices(self):
        return ["cpu"]


BACKEND = NumpyBackend()
