"""array-api-strict backend: the standard and nothing else (portable primitives only)."""
from __future__ import annotations

import numpy as np
import array_api_strict

from ._base import Backend


class StrictBackend(Backend):
    name = "array_api_strict"

    def namespace(self):
        return array_api_strict

    def is_native(self, x):
        return type(x).__module__.split(".")[0] == "array_api_strict"

    def from_numpy(self, a, dtype=None, device=None):
        a = np.asarray(a)
        if dtype is not None:
            a = a.astype(dtype)
        return array_api_strict.asarray(a) if device is None else array_api_strict.asarray(a, device=device)

    def to_numpy(self, x):
        return np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x._array)

    def devices(self):
        return [array_api_strict.Device("CPU_DEVICE")]


BACKEND = StrictBackend()
