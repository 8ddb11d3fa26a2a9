"""Label regimes: the shapes of label vectors a triplet loss meets in practice.

Every function here is plain NumPy and deterministic given a seed.  The regimes are what
the conformance suite, the fuzz tests, the benchmark's ``--labels`` option and the
testing kit draw from, so an implementation is exercised outside the P×K comfort zone:

==========================  ==================================================================
``pk2``, ``pk4``,           P classes × K samples (K = 2, 4, 17, 64); P = B // K, the last
``pk17``, ``pk64``          class takes the remainder
``two_classes``             two classes of (about) B / 2 samples each
``big_class_singletons``    one class of about B / 2 samples, every other sample alone
``random_singletons``       classes drawn at random from B / 3 ids: many singletons, uneven K
``all_distinct``            every sample its own class (no positive pair at all)
==========================  ==================================================================

Labels are shuffled (a loss must not rely on sorted labels) and use arbitrary, sparse,
possibly negative class ids when ``sparse_ids=True`` (a loss must not rely on ids being
``0..C-1``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["REGIMES", "PK_REGIMES", "make_labels", "pk_labels"]

#: every regime name, in the order the suite and the benchmark list them
REGIMES = (
    "pk2",
    "pk4",
    "pk17",
    "pk64",
    "two_classes",
    "big_class_singletons",
    "random_singletons",
    "all_distinct",
)
#: the P×K regimes and their K
PK_REGIMES = {"pk2": 2, "pk4": 4, "pk17": 17, "pk64": 64}


def pk_labels(batch: int, k: int) -> np.ndarray:
    """``batch // k`` classes of ``k`` samples, in order (the last class takes the rest)."""
    if batch < 1 or k < 1:
        raise ValueError(f"pk_labels: need batch >= 1 and k >= 1, got batch={batch}, k={k}")
    p = max(1, batch // k)
    return np.minimum(np.arange(batch) // k, p - 1).astype(np.int64)


def make_labels(regime: str, batch: int, seed: int = 0, *, shuffle: bool = True,
                sparse_ids: bool = False) -> np.ndarray:
    """A label vector of length ``batch`` (int64) in the given regime.

    Args:
      regime: one of :data:`REGIMES`.
      batch: the batch size B (>= 1).
      seed: seeds the shuffle, the random classes and the sparse ids.
      shuffle: permute the samples (default) rather than keep classes contiguous.
      sparse_ids: map the class ids to large, sparse, partly negative integers.
    """
    if regime not in REGIMES:
        raise ValueError(f"regime: expected one of {', '.join(REGIMES)}, got {regime!r}")
    if batch < 1:
        raise ValueError(f"batch: expected >= 1, got {batch}")
    rng = np.random.default_rng(seed)
    if regime in PK_REGIMES:
        y = pk_labels(batch, PK_REGIMES[regime])
    elif regime == "two_classes":
        y = (np.arange(batch) >= batch // 2).astype(np.int64) if batch > 1 else np.zeros(1, np.int64)
    elif regime == "big_class_singletons":
        big = max(1, batch // 2)
        y = np.concatenate([np.zeros(big, np.int64), np.arange(1, batch - big + 1, dtype=np.int64)])
    elif regime == "random_singletons":
        y = rng.integers(0, max(1, batch // 3), size=batch).astype(np.int64)
    else:  # all_distinct
        y = np.arange(batch, dtype=np.int64)
    if shuffle:
        y = y[rng.permutation(batch)]
    if sparse_ids:
        ids = np.unique(y)
        new = rng.choice(np.arange(-(2**40), 2**40, 2**20 + 7), size=ids.size, replace=False)
        y = new[np.searchsorted(ids, y)].astype(np.int64)
    return y
