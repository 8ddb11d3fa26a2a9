"""The 8x8 digits of scikit-learn, split into seen (0-6) and unseen (7-9) classes (the P x K
sampler is the package's: ``triplet_ref.PKSampler``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEEN_DIGITS = (0, 1, 2, 3, 4, 5, 6)
UNSEEN_DIGITS = (7, 8, 9)


@dataclass(frozen=True)
class DigitsSplit:
    """Pixels are float32 in [0, 1], shape (N, 64); labels are int64 digits."""

    x_train: np.ndarray  # seen digits, used for training
    y_train: np.ndarray
    x_seen_test: np.ndarray  # held-out images of the seen digits
    y_seen_test: np.ndarray
    x_unseen: np.ndarray  # every image of the unseen digits 7-9 (never trained on)
    y_unseen: np.ndarray


def load_split(seed: int = 0, seen_test_fraction: float = 0.25) -> DigitsSplit:
    """Load the 1,797 bundled digits (no download) and split them.

    Digits 7-9 are held out entirely. Of each seen digit, ``seen_test_fraction`` of the
    images (chosen with ``seed``) are held out as a second test set.
    """
    if not 0.0 < seen_test_fraction < 1.0:
        raise ValueError(f"seen_test_fraction must be in (0, 1), got {seen_test_fraction!r}")
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for digit in SEEN_DIGITS:
        idx = rng.permutation(np.flatnonzero(y == digit))
        n_test = int(round(seen_test_fraction * idx.size))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train = np.sort(np.concatenate(train_idx))
    test = np.sort(np.concatenate(test_idx))
    unseen = np.flatnonzero(np.isin(y, UNSEEN_DIGITS))
    return DigitsSplit(x[train], y[train], x[test], y[test], x[unseen], y[unseen])


def random_shift(x: np.ndarray, rng: np.random.Generator, max_shift: int = 1) -> np.ndarray:
    """Shift each 8x8 image by a random whole number of pixels in [-max_shift, max_shift] along
    each axis, filling with 0 (a cheap augmentation, done in NumPy so both backends see the same)."""
    n = x.shape[0]
    s = max_shift
    padded = np.pad(x.reshape(n, 8, 8), ((0, 0), (s, s), (s, s)))
    dy, dx = rng.integers(0, 2 * s + 1, size=(2, n))
    rows = dy[:, None] + np.arange(8)[None, :]  # (n, 8)
    cols = dx[:, None] + np.arange(8)[None, :]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.reshape(n, 64)
