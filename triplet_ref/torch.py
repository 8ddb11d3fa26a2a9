"""``torch.nn.Module`` losses and a P×K batch sampler for PyTorch training loops.

Imported explicitly (``import triplet_ref.torch``); ``import triplet_ref`` alone imports no
framework. Each module calls the function of the same name, so its value, gradient and
``info`` are those of the function (docs/semantics.md)::

    from triplet_ref.torch import BatchHardLoss, PKBatchSampler

    loss_fn = BatchHardLoss(margin=0.2, metric="euclidean")
    loader = DataLoader(dataset, batch_sampler=PKBatchSampler(labels, p=8, k=4, seed=0))
    for x, y in loader:
        loss = loss_fn(model(x), y)          # (embeddings, labels), as torch losses are called

| module | forward | function |
|---|---|---|
| ``BatchAllLoss`` | ``(embeddings, labels)`` | ``batch_all(labels, embeddings, margin, ...)`` |
| ``BatchHardLoss`` | ``(embeddings, labels)`` | ``batch_hard`` |
| ``BatchSemiHardLoss`` | ``(embeddings, labels)`` | ``batch_semihard`` |
| ``BatchContrastiveLoss`` | ``(embeddings, labels)`` | ``batch_contrastive`` |
| ``TripletLoss`` | ``(anchor, positive, negative)`` | ``triplet_loss`` |
| ``ContrastiveLoss`` | ``(x1, x2, same)`` | ``contrastive_loss`` |

**Scaling** (docs/scaling.md): the four batch-loss modules take ``process_group=`` and
``chunk_size=`` at construction (passed to the function on every call) and a reference set
in ``forward``: ``loss(emb, y, ref_embeddings=r, ref_labels=ry)``, or ``loss(emb, y,
ref=bank)`` with a :class:`MemoryBank` (or a functional ``triplet_ref.memory.Memory``),
whose filled rows are the reference set (an empty bank is a ValueError).

**Learnable margin** (``learn_margin=True``): the margin becomes a 0-d float32
``torch.nn.Parameter`` named ``margin`` (in ``parameters()`` and the ``state_dict``), used as
``margin.clamp(min=0)``. Every function propagates its gradient: ``dL/dm`` is the number of
active hinge terms divided by the mean's denominator (for the contrastive losses: the sum of
the negative pairs' ``max(m − e, 0)``, divided by it; softplus terms: the sum of their
sigmoids). This gradient is never negative, so minimising the loss alone drives the margin
down to 0 (where the clamp stops it): train it with its own objective or
regulariser. Under ``torch.compile(fullgraph=True)`` a learnable margin works for
``BatchAllLoss``, ``BatchHardLoss``, ``BatchSemiHardLoss`` and ``BatchContrastiveLoss``
(tested, ``--runslow``): the CPU kernels' custom ops take the margin as a tensor operand.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import losses as _losses
from .backends._base import check_choice, check_margin
from .distances import METRICS
from .losses._common import REDUCTIONS
from .losses._pairs import check_chunk_size
from .sampler import PKSampler

__all__ = [
    "BatchAllLoss",
    "BatchHardLoss",
    "BatchSemiHardLoss",
    "BatchContrastiveLoss",
    "TripletLoss",
    "ContrastiveLoss",
    "PKBatchSampler",
]


class _MarginLoss(torch.nn.Module):
    """Shared: the margin (fixed float or learnable parameter), options, ``extra_repr``."""

    _fn = staticmethod(lambda *a, **k: None)
    _options: tuple[str, ...] = ()

    def __init__(self, margin: float, learn_margin: bool, **options: Any):
        super().__init__()
        check_margin(margin)
        if not isinstance(learn_margin, bool):
            raise TypeError(f"learn_margin: expected a bool, got {type(learn_margin).__name__}")
        for key in ("process_group", "chunk_size"):  # only when given: repr and calls as before
            if key in options and options[key] is None:
                del options[key]
        if "chunk_size" in options:
            check_chunk_size(options["chunk_size"])
        if "process_group" in options:
            _check_process_group(options["process_group"])
        if "metric" in options:
            check_choice(options["metric"], "metric", METRICS)
        if "reduction" in options:
            check_choice(options["reduction"], "reduction", REDUCTIONS)
        for flag in ("soft", "return_info"):
            if flag in options and not isinstance(options[flag], bool):
                raise TypeError(f"{flag}: expected a bool, got {type(options[flag]).__name__}")
        self.learn_margin = learn_margin
        value = float(margin.detach() if isinstance(margin, torch.Tensor) else margin)
        if learn_margin:
            self.margin = torch.nn.Parameter(torch.tensor(value, dtype=torch.float32))
        else:
            self.margin = value
        self.options = dict(options)

    def _margin(self):
        return self.margin.clamp(min=0) if self.learn_margin else self.margin

    def extra_repr(self) -> str:
        m = float(self.margin.detach()) if self.learn_margin else self.margin
        parts = [f"margin={m:g}"] + [f"{k}={v!r}" for k, v in self.options.items()]
        if self.learn_margin:
            parts.append("learn_margin=True")
        return ", ".join(parts)


class _OnlineLoss(_MarginLoss):
    def forward(self, embeddings: torch.Tensor, labels: Any, *, ref: Any = None,
                ref_embeddings: Any = None, ref_labels: Any = None):
        """``embeddings`` ``(B, D)`` floating, ``labels`` ``(B,)`` integer. Returns the 0-d loss
        (``(B,)``, ``(B, B)`` or ``(B, R)`` for ``reduction="none"``), ``(loss, info)`` with
        ``return_info``.

        ``ref_embeddings`` ``(R, D)`` / ``ref_labels`` ``(R,)``: the anchors mine against this
        reference set (as the function's keywords).  ``ref``: a :class:`MemoryBank` or a
        ``triplet_ref.memory.Memory``, whose filled rows are the reference set (ValueError
        while it is empty; not with ``ref_embeddings``/``ref_labels``)."""
        _check_order(type(self).__name__, embeddings, labels)
        if ref is not None:
            if ref_embeddings is not None or ref_labels is not None:
                raise ValueError("ref: pass a memory bank as ref= or a reference set as "
                                 "ref_embeddings=/ref_labels=, not both")
            ref_embeddings, ref_labels = _reference_of(ref)
        return type(self)._fn(labels, embeddings, self._margin(), ref_embeddings=ref_embeddings,
                              ref_labels=ref_labels, **self.options)


def _reference_of(ref: Any):
    """``(ref_embeddings, ref_labels)``: the filled rows of a memory bank."""
    if isinstance(ref, MemoryBank):
        r, ry = ref.contents()
    elif isinstance(ref, _memory.Memory):
        r, ry = _memory.memory_contents(ref)
    else:
        raise TypeError(f"ref: expected a triplet_ref.torch.MemoryBank or a triplet_ref.memory.Memory, "
                        f"got {type(ref).__name__} (a reference set goes as ref_embeddings=/ref_labels=)")
    if r is None:
        raise ValueError("ref: the memory bank is empty (nothing enqueued yet): skip the reference "
                         "term while bank.count == 0, or enqueue a batch first")
    return r, ry


def _check_process_group(group: Any) -> None:
    import torch.distributed as dist

    if dist.is_available() and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"process_group: expected a torch.distributed ProcessGroup (e.g. "
                        f"torch.distributed.group.WORLD), got {type(group).__name__}")


def _check_order(name: str, embeddings: Any, labels: Any) -> None:
    """The functions take ``(labels, embeddings)``, the modules ``(embeddings, labels)``:
    catch the swap with a message that says so."""
    e_nd, l_nd = getattr(embeddings, "ndim", None), getattr(labels, "ndim", None)
    if e_nd == 1 and l_nd == 2:
        raise TypeError(f"{name} is called as loss(embeddings, labels) (the torch order); got a "
                        f"1-D first argument and a 2-D second one: swap them")


class BatchAllLoss(_OnlineLoss):
    """``triplet_ref.batch_all`` as a module: every valid triplet, Σ l / #(l > 0).

    ``BatchAllLoss(margin=1.0, *, metric="euclidean", soft=False, reduction="mean",
    return_info=False, learn_margin=False, process_group=None, chunk_size=None)``;
    called ``(embeddings (B, D), labels (B,))`` (a reference set: see ``forward``).
    """

    _fn = staticmethod(_losses.batch_all)

    def __init__(self, margin: float = 1.0, *, metric: str = "euclidean", soft: bool = False,
                 reduction: str = "mean", return_info: bool = False, learn_margin: bool = False,
                 process_group: Any = None, chunk_size: int | None = None):
        super().__init__(margin, learn_margin, metric=metric, soft=soft, reduction=reduction,
                         return_info=return_info, process_group=process_group, chunk_size=chunk_size)


class BatchHardLoss(_OnlineLoss):
    """``triplet_ref.batch_hard`` as a module: hardest positive vs hardest negative per anchor.

    ``BatchHardLoss(margin=1.0, *, metric="euclidean", soft=False, reduction="mean",
    return_info=False, learn_margin=False, process_group=None, chunk_size=None)``;
    called ``(embeddings (B, D), labels (B,))`` (a reference set: see ``forward``).
    """

    _fn = staticmethod(_losses.batch_hard)

    def __init__(self, margin: float = 1.0, *, metric: str = "euclidean", soft: bool = False,
                 reduction: str = "mean", return_info: bool = False, learn_margin: bool = False,
                 process_group: Any = None, chunk_size: int | None = None):
        super().__init__(margin, learn_margin, metric=metric, soft=soft, reduction=reduction,
                         return_info=return_info, process_group=process_group, chunk_size=chunk_size)


class BatchSemiHardLoss(_OnlineLoss):
    """``triplet_ref.batch_semihard`` as a module: each positive pair vs its semi-hard negative.

    ``BatchSemiHardLoss(margin=1.0, *, metric="euclidean", reduction="mean", return_info=False,
    learn_margin=False, process_group=None, chunk_size=None)``;
    called ``(embeddings (B, D), labels (B,))`` (a reference set: see ``forward``).
    """

    _fn = staticmethod(_losses.batch_semihard)

    def __init__(self, margin: float = 1.0, *, metric: str = "euclidean", reduction: str = "mean",
                 return_info: bool = False, learn_margin: bool = False, process_group: Any = None,
                 chunk_size: int | None = None):
        super().__init__(margin, learn_margin, metric=metric, reduction=reduction,
                         return_info=return_info, process_group=process_group, chunk_size=chunk_size)


class BatchContrastiveLoss(_OnlineLoss):
    """``triplet_ref.batch_contrastive`` as a module: every ordered pair, euclidean.

    ``BatchContrastiveLoss(margin=1.0, *, reduction="mean", return_info=False,
    learn_margin=False, process_group=None, chunk_size=None)``;
    called ``(embeddings (B, D), labels (B,))`` (a reference set: see ``forward``).
    """

    _fn = staticmethod(_losses.batch_contrastive)

    def __init__(self, margin: float = 1.0, *, reduction: str = "mean", return_info: bool = False,
                 learn_margin: bool = False, process_group: Any = None, chunk_size: int | None = None):
        super().__init__(margin, learn_margin, reduction=reduction, return_info=return_info,
                         process_group=process_group, chunk_size=chunk_size)


class TripletLoss(_MarginLoss):
    """``triplet_ref.triplet_loss`` as a module: given triplets of rows.

    ``TripletLoss(margin=1.0, *, metric="euclidean", soft=False, reduction="mean",
    learn_margin=False)``; called ``(anchor, positive, negative)``, each ``(N, D)``.
    """

    def __init__(self, margin: float = 1.0, *, metric: str = "euclidean", soft: bool = False,
                 reduction: str = "mean", learn_margin: bool = False):
        super().__init__(margin, learn_margin, metric=metric, soft=soft, reduction=reduction)

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor):
        return _losses.triplet_loss(anchor, positive, negative, self._margin(), **self.options)


class ContrastiveLoss(_MarginLoss):
    """``triplet_ref.contrastive_loss`` as a module: given pairs of rows.

    ``ContrastiveLoss(margin=1.0, *, reduction="mean", learn_margin=False)``; called
    ``(x1, x2, same)`` with ``x1``, ``x2`` ``(N, D)`` and ``same`` ``(N,)`` bool or 0/1.
    """

    def __init__(self, margin: float = 1.0, *, reduction: str = "mean", learn_margin: bool = False):
        super().__init__(margin, learn_margin, reduction=reduction)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, same: Any):
        return _losses.contrastive_loss(x1, x2, same, self._margin(), **self.options)


class PKBatchSampler(torch.utils.data.Sampler):
    """``triplet_ref.PKSampler`` as a torch batch sampler: pass it as
    ``DataLoader(dataset, batch_sampler=PKBatchSampler(labels, p, k, seed=0))``.

    Yields ``len(self)`` lists of ``p·k`` ints per epoch (one epoch per ``iter``); the rules
    (small classes, epoch length, seeding) are ``PKSampler``'s. ``labels`` may be a CPU
    tensor, a NumPy array or a list. Arguments: those of ``PKSampler``, or ``sampler=`` an
    existing ``PKSampler``.
    """

    def __init__(self, labels: Any = None, p: int | None = None, k: int | None = None, *,
                 seed: int = 0, num_batches: int | None = None, small_classes: str = "replace",
                 sampler: PKSampler | None = None):
        super().__init__()
        if sampler is not None:
            if labels is not None or p is not None or k is not None:
                raise ValueError("sampler: pass either a PKSampler or labels, p and k, not both")
            if not isinstance(sampler, PKSampler):
                raise TypeError(f"sampler: expected a PKSampler, got {type(sampler).__name__}")
            self.sampler = sampler
        else:
            if labels is None or p is None or k is None:
                raise TypeError("PKBatchSampler: labels, p and k are required (or sampler=)")
            self.sampler = PKSampler(labels, p, k, seed=seed, num_batches=num_batches,
                                     small_classes=small_classes)

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for idx in self.sampler:
            yield np.asarray(idx).tolist()


# --- cross-batch memory (scale, issue #10) ---------------------------------------------
from . import memory as _memory  # noqa: E402

__all__ += ["MemoryBank"]


class MemoryBank(torch.nn.Module):
    """A cross-batch memory (XBM) of ``size`` rows as a module: a ring buffer of detached
    embeddings and labels in registered buffers (they follow ``.to()`` and the
    ``state_dict``), to pass as the reference set of any batch loss::

        bank = MemoryBank(4096, dim=128)
        for x, y in loader:
            emb = model(x)
            loss = batch_hard(y, emb)
            if bank.count > 0:                      # against the previous batches
                ref, ref_y = bank.contents()
                loss = loss + batch_hard(y, emb, ref_embeddings=ref, ref_labels=ref_y)
            loss.backward(); opt.step()
            bank.enqueue(emb, y)                      # enqueue after the step

    The buffers are those of :func:`triplet_ref.memory.memory_enqueue` (the slot layout of
    pytorch-metric-learning's ``CrossBatchMemory``): ``embeddings`` ``(size, dim)`` of
    ``dtype``, ``labels`` ``(size,)`` int64, ``ptr`` and ``filled`` (0-d int64).
    """

    def __init__(self, size: int, dim: int, *, dtype: torch.dtype = torch.float32, device: Any = None):
        super().__init__()
        for name, v in (("size", size), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}: expected a positive int, got {type(v).__name__}")
            if v < 1:
                raise ValueError(f"{name}: must be >= 1, got {v}")
        self.register_buffer("embeddings", torch.zeros(size, dim, dtype=dtype, device=device))
        self.register_buffer("labels", torch.zeros(size, dtype=torch.int64, device=device))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("filled", torch.zeros((), dtype=torch.int64, device=device))

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def count(self) -> int:
        """The number of filled rows (``<= size``)."""
        return int(self.filled)

    def _state(self) -> _memory.Memory:
        return _memory.Memory(self.embeddings, self.labels, self.ptr, self.filled)

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: Any) -> None:
        """Write a ``(B, dim)`` batch (detached, cast to the buffer's dtype) and its ``(B,)``
        labels at the pointer, overwriting the oldest rows once full (``B <= size``)."""
        labels = torch.as_tensor(labels, device=self.labels.device)
        new = _memory.memory_enqueue(self._state(), embeddings.to(self.embeddings.dtype), labels)
        self.embeddings.copy_(new.embeddings)
        self.labels.copy_(new.labels)
        self.ptr.copy_(new.ptr)
        self.filled.copy_(new.count)

    def contents(self):
        """``(ref_embeddings, ref_labels)``: the filled rows (views of the buffers), or
        ``(None, None)`` while empty."""
        return _memory.memory_contents(self._state())

    def reset(self) -> None:
        """Empty the memory (the buffers are zeroed)."""
        for b in (self.embeddings, self.labels, self.ptr, self.filled):
            b.zero_()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.embeddings.shape[1]}, dtype={self.embeddings.dtype}, count={self.count}"
