"""The mining engine's dispatcher: which implementation of a step runs for a call.

A *step* is a piece of a loss that has more than one implementation: its portable
array-API version (runs on every backend, differentiable wherever the backend is) and,
optionally, a *native* one — the NumPy kernel of the step, which NumPy calls directly,
torch reaches through a custom op and JAX through ``pure_callback`` (the bridges in
``triplet_ref/backends/`` are built from the step's :class:`Kernel` spec, once, for
every step alike), or a backend's own native version (torch's distance kernel).

The losses call :func:`run` only.  The choice is typed: :class:`Impl` is an enum, an
unknown name raises, and forcing ``Impl.NATIVE`` where a backend has no native version
of the step raises instead of silently running the portable one.
"""
from __future__ import annotations

import enum
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

__all__ = ["Impl", "Kernel", "Step", "force", "forced", "implementation", "run", "has_native"]


class Impl(enum.Enum):
    """Which implementation of a mining step runs.

    ``AUTO`` (the default): the backend's native one where it has one for the step on the
    array's device, else the portable one.  ``PORTABLE``: always the array-API version.
    ``NATIVE``: always the native one; raises ``NotImplementedError`` where there is none.
    """

    AUTO = "auto"
    PORTABLE = "portable"
    NATIVE = "native"

    @classmethod
    def parse(cls, value: Any) -> "Impl":
        """An :class:`Impl` from itself or its name; anything else raises ``ValueError``."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if member.value == value:
                    return member
        raise ValueError(
            f"impl: expected one of {', '.join(repr(m.value) for m in cls)} "
            f"(or triplet_ref.mining.Impl), got {value!r}"
        )


@dataclass(frozen=True, eq=False)
class Kernel:
    """The NumPy kernel of a step and what a framework bridge needs to wrap it.

    ``forward(*arrays) -> tuple`` takes the step's array arguments as NumPy arrays
    (``inputs`` names them; 0-d ones, e.g. the margin, are passed as 0-d arrays) and
    returns NumPy arrays of the shape of ``inputs[0]``, one per entry of ``outputs``:

    * ``"float"`` — the dtype of ``inputs[0]`` (differentiable when ``backward`` is set);
    * ``"int32"`` / ``"index"`` (int64, or the framework's index dtype) / ``"bool"``.

    ``backward(*arrays, grad, *saved_outputs)`` returns the gradient of
    ``Σ grad ⊙ outputs[0]`` with respect to ``inputs[0]``; ``saved`` lists the outputs it
    needs.  ``slopes`` maps a 0-d input (by position) to the output holding
    ``∂outputs[0]/∂input`` elementwise (the margin of a hinge: the count of active terms).
    Without ``backward`` the step is not differentiable: bridges detach ``inputs[0]``.
    """

    forward: Callable[..., tuple]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    backward: Callable[..., Any] | None = None
    saved: tuple[int, ...] = ()
    slopes: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Step:
    """One mining step: its portable implementation and (optionally) its NumPy kernel.

    ``portable(ctx, *arrays)`` is the array-API version; ``kernel`` the NumPy one; ``loss``
    names the public function the step belongs to (for error messages).  A backend may
    also have a native version of its own (:meth:`Backend.native_kernel`).
    """

    name: str
    loss: str
    portable: Callable[..., Any]
    kernel: Kernel | None = None

    def __repr__(self) -> str:
        return f"<mining step {self.name}>"


# process-wide, read on every call: a plain module attribute (not a ContextVar) so that
# torch.compile(fullgraph=True) traces it as a guarded constant
_forced: Impl = Impl.AUTO


def forced() -> Impl:
    """The implementation currently forced (``Impl.AUTO`` when none is)."""
    return _forced


@contextmanager
def force(impl: Impl | str) -> Iterator[Impl]:
    """Force every mining step to ``impl`` inside the ``with`` block (process-wide).

    Meant for tests and debugging: ``with triplet_ref.mining.force("portable"): ...``
    runs the array-API version of every step on any backend.  Not thread-safe: the
    setting is global to the process while the block runs.
    """
    global _forced
    value = Impl.parse(impl)
    before = _forced
    _forced = value
    try:
        yield value
    finally:
        _forced = before


def has_native(step: Step, backend, like: Any) -> bool:
    """Whether ``backend`` has a native implementation of ``step`` for arrays like ``like``."""
    return backend.native_kernel(step, like) is not None


def implementation(step: Step, ctx, like: Any) -> Callable[..., Any]:
    """The function that runs ``step`` for this call: ``f(*arrays)``.

    ``like`` is the step's first array (its device decides)."""
    impl = _forced
    if impl is not Impl.PORTABLE:
        native = ctx.backend.native_kernel(step, like)
        if native is not None:
            return native
        if impl is Impl.NATIVE:
            raise NotImplementedError(
                f"{step.loss}: the {ctx.backend.name} backend has no native implementation of "
                f"the mining step {step.name!r} on this device (forced with Impl.NATIVE)"
            )

    def portable(*arrays):
        return step.portable(ctx, *arrays)

    return portable


def run(step: Step, ctx, *arrays):
    """Run ``step`` on ``arrays`` with the implementation :func:`implementation` picks."""
    return implementation(step, ctx, arrays[0])(*arrays)
