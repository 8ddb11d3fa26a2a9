"""Keras 3 losses: ``keras.losses.Loss`` subclasses that call triplet_ref's functions.

Imported explicitly (``import triplet_ref.keras``; it imports ``keras``, which imports its
backend). Works on the **jax** and **torch** Keras backends (and ``numpy`` for evaluation);
the tensorflow backend is refused with a ``ValueError`` (triplet_ref has no TensorFlow
backend)::

    import keras
    from triplet_ref.keras import BatchSemiHardLoss

    model.compile(optimizer="adam", loss=BatchSemiHardLoss(margin=1.0))
    model.fit(images, labels, batch_size=64)       # y_true = labels, y_pred = embeddings

| loss | ``y_true`` | ``y_pred`` | function |
|---|---|---|---|
| ``BatchAllLoss``, ``BatchHardLoss``, ``BatchSemiHardLoss``, ``BatchContrastiveLoss`` | labels ``(B,)`` or ``(B, 1)`` | ``(B, D)`` | ``batch_all`` / ``batch_hard`` / ``batch_semihard`` / ``batch_contrastive`` with ``reduction="mean"`` |
| ``TripletLoss`` | ignored | ``(N, 3, D)``: anchor, positive, negative stacked on axis 1 | ``triplet_loss`` |
| ``ContrastiveLoss`` | ``same`` ``(N,)`` or ``(N, 1)``, 0/1 | ``(N, 2, D)``: x1, x2 stacked on axis 1 | ``contrastive_loss`` |

Labels may have any numeric dtype: integer, bool, or floating point holding integers (what
Keras data pipelines often produce). These losses keep ``y_true``'s own dtype (``Loss``
would cast it to the loss dtype, float32, where ids above 2**24 merge), check that float
labels are whole numbers and cast them to int32. A non-integer label raises ``ValueError``
when the values are concrete; under ``jit`` (Keras' jax ``fit``), where they are traced
and cannot be checked, it makes the loss NaN instead (never a silently wrong number).

The four batch losses take ``chunk_size=`` (the function's: anchors in row blocks; in the
config when given). The value is one number per batch (the function's ``"mean"``): Keras'
``reduction`` does not apply, and ``sample_weight`` (or ``class_weight`` in ``fit``) raises ``ValueError``.
Every loss is registered for serialisation (``get_config`` / ``from_config``, package
``"triplet_ref"``), so a compiled model saves and loads with its loss.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops

from . import losses as _losses
from .backends._base import check_choice, check_margin
from .distances import METRICS
from .losses._pairs import check_chunk_size

__all__ = [
    "BatchAllLoss",
    "BatchHardLoss",
    "BatchSemiHardLoss",
    "BatchContrastiveLoss",
    "TripletLoss",
    "ContrastiveLoss",
]

SUPPORTED_BACKENDS = ("jax", "torch", "numpy")


def _check_backend() -> None:
    name = keras.backend.backend()
    if name not in SUPPORTED_BACKENDS:
        raise ValueError(f"triplet_ref.keras: the Keras backend {name!r} is not supported; set "
                         f"KERAS_BACKEND to one of {', '.join(SUPPORTED_BACKENDS)}")


def _concrete_bool(x) -> bool | None:
    """``bool(x)`` for a concrete 0-d value; ``None`` for a traced one (jax.jit)."""
    try:
        return bool(x)
    except Exception:  # a tracer: its value is not known here
        return None


def _whole_numbers(y, name: str, zero_one: bool = False):
    """``y`` as an integer tensor, and a 0-d bool flag "some value was not allowed" that is
    ``None`` when everything was checked eagerly."""
    dt = keras.backend.standardize_dtype(y.dtype)
    if dt == "bool":
        return ops.cast(y, "int32"), None
    if "int" in dt:
        bad = None
        if zero_one:
            bad = ops.any(ops.logical_and(ops.not_equal(y, 0), ops.not_equal(y, 1)))
    elif "float" in dt:
        bad = ops.any(ops.not_equal(y, ops.round(y)))
        if zero_one:
            bad = ops.logical_or(bad, ops.any(ops.logical_and(ops.not_equal(y, 0), ops.not_equal(y, 1))))
        y = ops.cast(y, "int32")
    else:
        raise TypeError(f"{name}: expected a numeric dtype, got {dt}")
    if bad is None:
        return y, None
    state = _concrete_bool(bad)
    if state:
        what = "0 or 1" if zero_one else "whole numbers (class ids)"
        raise ValueError(f"{name}: expected {what}, got other values")
    return y, (bad if state is None else None)


def _column(y, n: int, name: str):
    """``(n,)`` or ``(n, 1)`` → ``(n,)``."""
    shape = tuple(y.shape)
    if len(shape) == 2 and shape[1] == 1:
        y = ops.reshape(y, (-1,))
    elif len(shape) != 1:
        raise ValueError(f"{name}: expected shape ({n},) or ({n}, 1), got {shape}")
    if y.shape[0] is not None and n is not None and y.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) or ({n}, 1), got {shape}")
    return y


def _nan_where(flag, loss):
    if flag is None:
        return loss
    return ops.where(flag, ops.full_like(loss, float("nan")), loss)


class _TripletRefLoss(keras.losses.Loss):
    _options: tuple[str, ...] = ()

    def __init__(self, margin: float, name: str, dtype: Any, **options: Any):
        _check_backend()
        check_margin(margin)
        if "metric" in options:
            check_choice(options["metric"], "metric", METRICS)
        if options.get("chunk_size", 0) is None:  # not given: the config stays as before
            del options["chunk_size"]
        if "chunk_size" in options:
            check_chunk_size(options["chunk_size"])
        if "soft" in options and not isinstance(options["soft"], bool):
            raise TypeError(f"soft: expected a bool, got {type(options['soft']).__name__}")
        super().__init__(name=name, reduction=None, dtype=dtype)
        self.margin = float(margin)
        self.options = dict(options)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # keeps y_true's own dtype (Loss.__call__ would cast the labels to float32)
        if sample_weight is not None:
            raise ValueError(f"sample_weight: {type(self).__name__} is one value per batch; "
                             "per-sample weights (or class_weight) are not supported")
        with keras.name_scope(self.name):
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            y_true = ops.convert_to_tensor(y_true)
            return self.call(y_true, y_pred)

    def get_config(self) -> dict:
        return {"name": self.name, "margin": self.margin, **self.options}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


class _OnlineLoss(_TripletRefLoss):
    _fn = staticmethod(lambda *a, **k: None)

    def call(self, y_true, y_pred):
        if len(y_pred.shape) != 2:
            raise ValueError(f"y_pred: expected embeddings of shape (B, D), got {tuple(y_pred.shape)}")
        labels = _column(y_true, y_pred.shape[0], "y_true")
        labels, bad = _whole_numbers(labels, "y_true")
        loss = type(self)._fn(labels, y_pred, self.margin, **self.options)
        return _nan_where(bad, loss)


def _register(cls):
    return keras.saving.register_keras_serializable(package="triplet_ref")(cls)


@_register
class BatchAllLoss(_OnlineLoss):
    """``triplet_ref.batch_all`` as a Keras loss (``y_true`` labels, ``y_pred`` ``(B, D)``)."""

    _fn = staticmethod(_losses.batch_all)

    def __init__(self, margin: float = 1.0, metric: str = "euclidean", soft: bool = False,
                 name: str = "batch_all_loss", dtype: Any = None, chunk_size: int | None = None):
        super().__init__(margin, name, dtype, metric=metric, soft=soft, chunk_size=chunk_size)


@_register
class BatchHardLoss(_OnlineLoss):
    """``triplet_ref.batch_hard`` as a Keras loss (``y_true`` labels, ``y_pred`` ``(B, D)``)."""

    _fn = staticmethod(_losses.batch_hard)

    def __init__(self, margin: float = 1.0, metric: str = "euclidean", soft: bool = False,
                 name: str = "batch_hard_loss", dtype: Any = None, chunk_size: int | None = None):
        super().__init__(margin, name, dtype, metric=metric, soft=soft, chunk_size=chunk_size)


@_register
class BatchSemiHardLoss(_OnlineLoss):
    """``triplet_ref.batch_semihard`` as a Keras loss: the replacement of TF-Addons'
    ``TripletSemiHardLoss`` (``y_true`` labels, ``y_pred`` ``(B, D)``)."""

    _fn = staticmethod(_losses.batch_semihard)

    def __init__(self, margin: float = 1.0, metric: str = "euclidean",
                 name: str = "batch_semihard_loss", dtype: Any = None, chunk_size: int | None = None):
        super().__init__(margin, name, dtype, metric=metric, chunk_size=chunk_size)


@_register
class BatchContrastiveLoss(_OnlineLoss):
    """``triplet_ref.batch_contrastive`` as a Keras loss (``y_true`` labels, ``y_pred`` ``(B, D)``)."""

    _fn = staticmethod(_losses.batch_contrastive)

    def __init__(self, margin: float = 1.0, name: str = "batch_contrastive_loss", dtype: Any = None,
                 chunk_size: int | None = None):
        super().__init__(margin, name, dtype, chunk_size=chunk_size)


@_register
class TripletLoss(_TripletRefLoss):
    """``triplet_ref.triplet_loss`` as a Keras loss: ``y_pred`` ``(N, 3, D)`` stacks anchor,
    positive and negative on axis 1; ``y_true`` is ignored."""

    def __init__(self, margin: float = 1.0, metric: str = "euclidean", soft: bool = False,
                 name: str = "triplet_loss", dtype: Any = None):
        super().__init__(margin, name, dtype, metric=metric, soft=soft)

    def call(self, y_true, y_pred):
        if len(y_pred.shape) != 3 or y_pred.shape[1] != 3:
            raise ValueError(f"y_pred: expected shape (N, 3, D) (anchor, positive, negative), "
                             f"got {tuple(y_pred.shape)}")
        return _losses.triplet_loss(y_pred[:, 0, :], y_pred[:, 1, :], y_pred[:, 2, :], self.margin,
                                    **self.options)


@_register
class ContrastiveLoss(_TripletRefLoss):
    """``triplet_ref.contrastive_loss`` as a Keras loss: ``y_pred`` ``(N, 2, D)`` stacks x1 and
    x2 on axis 1; ``y_true`` is ``same`` (1: one class, 0: two classes), ``(N,)`` or ``(N, 1)``."""

    def __init__(self, margin: float = 1.0, name: str = "contrastive_loss", dtype: Any = None):
        super().__init__(margin, name, dtype)

    def call(self, y_true, y_pred):
        if len(y_pred.shape) != 3 or y_pred.shape[1] != 2:
            raise ValueError(f"y_pred: expected shape (N, 2, D) (x1, x2), got {tuple(y_pred.shape)}")
        same = _column(y_true, y_pred.shape[0], "y_true")
        same, bad = _whole_numbers(same, "y_true", zero_one=True)
        loss = _losses.contrastive_loss(y_pred[:, 0, :], y_pred[:, 1, :], ops.not_equal(same, 0),
                                        self.margin)
        return _nan_where(bad, loss)
