"""The mining engine's dispatcher: which implementation of a step runs for a call.

A *step* is a piece of a loss that has more than one implementation: its portable
array-API version (runs on every backend, differentiable wherever the backend is) and,
optionally, a *native* one — the NumPy kernel of the step, which NumPy calls directly,
torch reaches through a custom op and JAX through a host callback (the bridges in
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

__all__ = ["Impl", "Kernel", "Step", "NativeUnsupported", "force", "forced", "implementation", "run",
           "has_native"]


class NativeUnsupported(NotImplementedError):
    """A native implementation cannot serve this call (e.g. forward-mode differentiation
    through a NumPy kernel behind a JAX host callback).  The dispatcher then runs the
    portable implementation, unless ``Impl.NATIVE`` is forced, when it raises this error
    naming the loss."""


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
        return parse_choice(cls, value, "impl")


def parse_choice(cls: type[enum.Enum], value: Any, what: str):
    """The member of the string-valued enum ``cls`` that is ``value`` or has it as its value;
    anything else raises ``ValueError`` naming ``what`` and the choices."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        for member in cls:
            if member.value == value:
                return member
    raise ValueError(
        f"{what}: expected one of {', '.join(repr(m.value) for m in cls)} "
        f"(or triplet_ref.mining.{cls.__name__}), got {value!r}"
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

    ``linear(ctx, *arrays, t, *saved_outputs)`` (optional, array API) is the derivative
    of ``outputs[0]`` in ``inputs[0]`` along a tangent ``t``, for a step whose first
    output is piecewise linear in ``inputs[0]`` (so ``backward`` is constant in it): with
    it, bridges support second-order derivatives (the derivative of ``backward`` in
    ``grad`` is ``linear``); without it they raise :class:`NativeUnsupported`.

    ``scalars`` lists the outputs (by position) that are 0-d — sums over the whole
    array (a fused reduction: the loss value, a count) — instead of arrays of the shape of
    ``inputs[0]``; when ``0`` is among them, ``backward``'s ``grad`` is 0-d too.

    ``backward_ad(ctx, *arrays, grad)`` (optional, array API, differentiable) returns the
    gradients of ``Σ grad ⊙ outputs[0]`` with respect to every input (None where there is
    none): bridges run it instead of ``backward`` where the backward itself is
    differentiated (torch ``create_graph=True``, ``torch.func`` transforms), for a step
    whose first output is not piecewise linear in its inputs (so ``linear`` cannot serve).

    ``rows`` lists the outputs (by position) that hold one value per row of
    ``inputs[0]``: shape ``(inputs[0].shape[0],)`` (a choice per anchor row).

    ``fusible``: the portable version is elementwise maps and reductions only, which a
    tracing compiler fuses into one pass (XLA under ``jax.jit``: faster than a host
    callback); the JAX bridge then runs the kernel on concrete (eager) arrays only.
    """

    forward: Callable[..., tuple]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    backward: Callable[..., Any] | None = None
    saved: tuple[int, ...] = ()
    slopes: dict = field(default_factory=dict)
    linear: Callable[..., Any] | None = None
    scalars: tuple[int, ...] = ()
    backward_ad: Callable[..., Any] | None = None
    fusible: bool = False
    rows: tuple[int, ...] = ()

    def out_shape(self, i: int, shape):
        """The shape of output ``i`` for a first input of shape ``shape``."""
        if i in self.scalars:
            return ()
        if i in self.rows:
            return tuple(shape[:1])
        return shape


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


# process-wide, read on every call: plain module attributes (not a ContextVar) so that
# torch.compile(fullgraph=True) traces them as guarded constants
_forced: Impl = Impl.AUTO
_forced_steps: tuple[str, ...] | None = None  # the names of the steps forced (None: all)


def forced(step: Step | None = None) -> Impl:
    """The implementation currently forced (for ``step``; ``Impl.AUTO`` when none is)."""
    if step is not None and _forced_steps is not None and step.name not in _forced_steps:
        return Impl.AUTO
    return _forced


@contextmanager
def force(impl: Impl | str, *steps: Step) -> Iterator[Impl]:
    """Force mining steps to ``impl`` inside the ``with`` block (process-wide).

    ``steps``: the steps to force (default: every step).  Meant for tests and debugging:
    ``with triplet_ref.mining.force("portable"): ...`` runs the array-API version of
    every step on any backend; ``force("native", BATCH_ALL_HINGE)`` the native kernel of
    one step (raising where the backend has none).  Not thread-safe: the setting is
    global to the process while the block runs.
    """
    global _forced, _forced_steps
    value = Impl.parse(impl)
    for s in steps:
        if not isinstance(s, Step):
            raise TypeError(f"steps: expected triplet_ref.mining steps, got {type(s).__name__}")
    before = _forced, _forced_steps
    _forced, _forced_steps = value, (tuple(s.name for s in steps) if steps else None)
    try:
        yield value
    finally:
        _forced, _forced_steps = before


def has_native(step: Step, backend, like: Any) -> bool:
    """Whether ``backend`` has a native implementation of ``step`` for arrays like ``like``."""
    return backend.native_kernel(step, like) is not None


def implementation(step: Step, ctx, like: Any) -> Callable[..., Any]:
    """The function that runs ``step`` for this call: ``f(*arrays)``.

    ``like`` is the step's first array (its device decides)."""
    impl = _forced
    if _forced_steps is not None and step.name not in _forced_steps:
        impl = Impl.AUTO
    if impl is not Impl.PORTABLE:
        native = ctx.backend.native_kernel(step, like)
        if native is not None:
            if impl is Impl.NATIVE:
                return _naming(native, step)
            return _or_portable(native, step, ctx)
        if impl is Impl.NATIVE:
            raise NotImplementedError(
                f"{step.loss}: the {ctx.backend.name} backend has no native implementation of "
                f"the mining step {step.name!r} on this device (forced with Impl.NATIVE)"
            )

    def portable(*arrays):
        return step.portable(ctx, *arrays)

    return portable


def _or_portable(native, step, ctx):
    def call(*arrays):
        try:
            return native(*arrays)
        except NativeUnsupported:
            return step.portable(ctx, *arrays)

    return call


def _naming(native, step):
    def call(*arrays):
        try:
            return native(*arrays)
        except NativeUnsupported as exc:
            raise NativeUnsupported(f"{step.loss}: {exc} (Impl.NATIVE is forced)") from None

    return call


def run(step: Step, ctx, *arrays):
    """Run ``step`` on ``arrays`` with the implementation :func:`implementation` picks."""
    return implementation(step, ctx, arrays[0])(*arrays)
