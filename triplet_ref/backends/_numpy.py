"""NumPy backend: no autograd, so primitives may work in place on intermediates."""
from __future__ import annotations

import numpy as np

from ._base import Backend


from ..mining._blocks import bsearch as _bsearch


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

    def sort_rows(self, xp, x):
        return np.sort(x, axis=-1)

    def argsort_rows(self, xp, x):
        return np.argsort(x, axis=-1, kind="stable")

    def searchsorted_rows(self, xp, sorted_rows, values, side="left", where=None):
        sorted_rows = np.asarray(sorted_rows)
        values = np.asarray(values)
        if where is not None:
            # only the entries under ``where`` are needed: search just those
            r, c = np.nonzero(where)
            out = np.zeros(values.shape, dtype=np.int64)
            out[r, c] = _bsearch(sorted_rows, r, values[r, c], side)
            return out
        out = np.empty(values.shape, dtype=np.int64)
        for i in range(values.shape[0]):
            out[i] = np.searchsorted(sorted_rows[i], values[i], side=side)
        return out

    def take_rows(self, xp, x, idx):
        return np.take_along_axis(x, np.asarray(idx, dtype=np.intp), axis=-1)

    def native_kernel(self, step, like):
        # the steps' NumPy kernels are NumPy's native implementation
        return step.kernel.forward if step.kernel is not None else None

    def devices(self):
        return ["cpu"]


BACKEND = NumpyBackend()
