"""CuPy backend (CUDA); imported only when cupy is in use.  Portable primitives only."""
from __future__ import annotations

import numpy as np
import cupy

from ._base import Backend


class CupyBackend(Backend):
    name = "cupy"

    def namespace(self):
        import array_api_compat.cupy as xp

        return xp

    def is_native(self, x):
        return isinstance(x, cupy.ndarray)

    def from_numpy(self, a, dtype=None, device=None):
        a = np.asarray(a)
        if dtype is not None:
            a = a.astype(dtype)
        return cupy.asarray(a)

    def to_numpy(self, x):
        return cupy.asnumpy(x)

    def sort_rows(self, xp, x):
        return cupy.sort(x, axis=-1)

    def argsort_rows(self, xp, x):
        return xp.argsort(x, axis=-1, stable=True)

    def devices(self):
        return ["cuda"]

    def synchronize(self, x=None):
        cupy.cuda.Device().synchronize()


BACKEND = CupyBackend()
