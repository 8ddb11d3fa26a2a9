"""The conformance harness: one test body, an ``xp`` fixture over the installed backends.

``xp`` yields a :class:`Case` — a backend bound to one device — for numpy,
array_api_strict, torch (CPU, and CUDA when present), jax (CPU with x64, and GPU when
present) and cupy (when a CUDA GPU is present).  Capability markers skip a case that
lacks one:

* ``@pytest.mark.grad``   — needs automatic differentiation (torch, jax)
* ``@pytest.mark.jit``    — needs a compiler (jax.jit, torch.compile)
* ``@pytest.mark.slow``   — heavier sweeps, run with ``--runslow`` (``make test-all``)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from triplet_ref import backends as B

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "grad: needs a backend with automatic differentiation")
    config.addinivalue_line("markers", "jit: needs a backend with a compiler (jax.jit, torch.compile)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


if B.is_installed("jax"):
    import jax

    jax.config.update("jax_enable_x64", True)


@dataclass
class Case:
    """One backend on one device, with NumPy round-trips for the tests."""

    backend: Any
    device: Any
    label: str

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def xp(self):
        return self.backend.namespace()

    def asarray(self, a, dtype: str | None = None):
        """A NumPy array (or list) on this case's backend and device."""
        return self.backend.from_numpy(np.asarray(a), dtype=dtype, device=self.device)

    def to_numpy(self, x) -> np.ndarray:
        return self.backend.to_numpy(x)

    def __repr__(self) -> str:
        return self.label


def _cases() -> list[Case]:
    cases = []
    for name in B.available_backends():
        if name == "cupy":
            try:
                be = B.get_backend(name)
                import cupy

                if cupy.cuda.runtime.getDeviceCount() < 1:
                    continue
            except Exception:
                continue
        else:
            be = B.get_backend(name)
        for dev in be.devices():
            kind = "cpu" if dev in (None, "cpu") or "cpu" in str(dev).lower() else "gpu"
            if name == "array_api_strict":
                kind = "cpu"
            label = name if kind == "cpu" else f"{name}-{kind}"
            cases.append(Case(be, dev, label))
    return cases


CASES = _cases()


@pytest.fixture(params=CASES, ids=[c.label for c in CASES])
def xp(request) -> Case:
    case: Case = request.param
    node = request.node
    if node.get_closest_marker("grad") and not case.backend.supports_grad:
        pytest.skip(f"{case.label} has no automatic differentiation")
    if node.get_closest_marker("jit") and not case.backend.supports_jit:
        pytest.skip(f"{case.label} has no compiler")
    return case


@pytest.fixture(params=["float32", "float64"])
def dtype(request) -> str:
    return request.param


def tolerance(dtype: str) -> dict:
    """Comparison tolerance against the float64 oracles.

    float64: tight.  float32: the Gram trick computes d² = |x_i|² + |x_j|² − 2<x_i, x_j>,
    whose rounding error is about eps·|x|², so the bound is relative to the data's scale;
    tests use inputs of unit scale (after centring) and these figures (measured in
    tests/test_distances.py and docs/semantics.md).
    """
    if dtype == "float64":
        return dict(rtol=1e-9, atol=1e-9)
    return dict(rtol=2e-4, atol=2e-4)
