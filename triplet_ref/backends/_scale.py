"""Framework specifics of the scaling helpers (memory bank, global-batch mining).

Kept apart from the backends' classes: every function takes the :class:`Backend` and
imports its framework lazily (the framework is already imported when one of its arrays
is passed).
"""
from __future__ import annotations

from typing import Any


def stop_gradient(be, x: Any):
    """``x`` cut off from automatic differentiation (a copy-free view where possible)."""
    if be.name == "torch":
        return x.detach()
    if be.name == "jax":
        import jax

        return jax.lax.stop_gradient(x)
    return x


def concrete_int(x: Any) -> int | None:
    """``int(x)`` for a 0-d integer array whose value is known, None while it is traced."""
    try:
        return int(x)
    except Exception:  # a jax tracer (ConcretizationTypeError) or similar
        return None
