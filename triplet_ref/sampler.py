"""P×K batch sampling: P classes × K samples per batch, as indices into a dataset.

Framework-agnostic (NumPy only): iterate it in a JAX loop, or hand it to a torch
``DataLoader`` through ``triplet_ref.torch.PKBatchSampler``. Imports no framework.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

__all__ = ["PKSampler"]

SMALL_CLASS_RULES = ("replace", "drop")


class PKSampler:
    """Batches of ``p`` distinct classes × ``k`` samples of each (Hermans et al. 2017).

    Each batch draws ``p`` distinct classes uniformly at random (without replacement), then
    ``k`` distinct indices of each class uniformly at random, and returns the ``p·k``
    indices class by class (``int64``, shape ``(p·k,)``). Batches are independent draws:
    an epoch is not a permutation of the dataset.

    **Classes with fewer than ``k`` members** (``small_classes``):

    - ``"replace"`` (default): they can still be drawn; their ``k`` indices are drawn *with*
      replacement, so the batch repeats some samples (a class of one sample gives ``k``
      copies of it: positive pairs at distance 0). This is what pytorch-metric-learning's
      ``MPerClassSampler`` does.
    - ``"drop"``: they are never drawn (their samples never appear).

    **Epoch length**: ``len(sampler)`` = ``num_batches`` batches, by default
    ``max(1, n // (p·k))`` with ``n`` the number of samples of the drawable classes, so an
    epoch holds about as many samples as the (drawable part of the) dataset.

    **Randomness**: one ``numpy.random.Generator`` seeded with ``seed`` when the sampler
    is created; every batch continues its stream, so the sequence of batches (across
    epochs) is fixed by ``seed``. ``reset()`` starts the stream again.

    Args:
      labels: ``(N,)`` integer class labels (NumPy, list, or any array with ``__array__``,
        a CPU torch tensor included).
      p: classes per batch, ``2 <= p <=`` the number of drawable classes.
      k: samples per class, ``k >= 2`` (an anchor needs a positive).
      seed: seed of the generator.
      num_batches: batches per epoch (``None``: the default above).
      small_classes: ``"replace"`` or ``"drop"``, the rule above.

    Example::

        sampler = PKSampler(labels, p=8, k=4, seed=0)
        for idx in sampler:                 # one epoch: len(sampler) batches
            loss = step(x[idx], labels[idx])
        idx = sampler.sample()              # one more batch
    """

    def __init__(self, labels: Any, p: int, k: int, *, seed: int = 0,
                 num_batches: int | None = None, small_classes: str = "replace"):
        labels = _labels_numpy(labels)
        if small_classes not in SMALL_CLASS_RULES:
            raise ValueError(f"small_classes: expected 'replace' or 'drop', got {small_classes!r}")
        for name, v in (("p", p), ("k", k)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
        classes, counts = np.unique(labels, return_counts=True)
        if small_classes == "drop":
            classes, counts = classes[counts >= k], counts[counts >= k]
        if k < 2:
            raise ValueError(f"k: must be at least 2 (an anchor needs a positive), got {k}")
        if not 2 <= p <= classes.size:
            what = "classes with at least k members" if small_classes == "drop" else "classes"
            raise ValueError(f"p: must be in [2, {classes.size}] (the number of {what}), got {p}")
        n = int(counts.sum())
        if num_batches is None:
            num_batches = max(1, n // (p * k))
        elif isinstance(num_batches, bool) or not isinstance(num_batches, (int, np.integer)) \
                or num_batches < 1:
            raise ValueError(f"num_batches: expected a positive int or None, got {num_batches!r}")
        self.p, self.k, self.seed = int(p), int(k), seed
        self.num_batches = int(num_batches)
        self.small_classes = small_classes
        self.classes = classes
        order = np.argsort(labels, kind="stable")
        starts = np.searchsorted(labels[order], classes)
        self._members = [order[s:s + c] for s, c in zip(starts, counts)]
        self.reset()

    @property
    def batch_size(self) -> int:
        """``p · k``."""
        return self.p * self.k

    def reset(self) -> None:
        """Restart the random stream from ``seed``."""
        self._rng = np.random.default_rng(self.seed)

    def sample(self) -> np.ndarray:
        """One batch: ``(p·k,)`` int64 indices, class by class."""
        rng = self._rng
        chosen = rng.choice(len(self._members), size=self.p, replace=False)
        parts = []
        for c in chosen:
            pool = self._members[int(c)]
            parts.append(rng.choice(pool, size=self.k, replace=pool.size < self.k))
        return np.concatenate(parts).astype(np.int64, copy=False)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[np.ndarray]:
        for _ in range(self.num_batches):
            yield self.sample()

    def __repr__(self) -> str:
        return (f"PKSampler(p={self.p}, k={self.k}, seed={self.seed}, num_batches={self.num_batches}, "
                f"small_classes={self.small_classes!r}, classes={self.classes.size})")


def _labels_numpy(labels: Any) -> np.ndarray:
    from .backends import backend_of

    own = backend_of(labels)
    arr = own.to_numpy(labels) if own is not None else np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels: expected shape (N,), got {arr.shape}")
    if arr.size == 0:
        raise ValueError("labels: expected at least one label, got an empty array")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels: expected an integer dtype, got {arr.dtype}")
    return arr
