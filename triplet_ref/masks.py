"""Label masks: which pairs and triplets a loss may use.

``anchor_positive_mask[a, p] = (a != p) and (y_a == y_p)``
``anchor_negative_mask[a, n] = (y_a != y_n)``
``triplet_mask[a, p, n] = anchor_positive_mask[a, p] and anchor_negative_mask[a, n]``

Only :func:`triplet_mask` is cubic; no loss calls it.
"""
from __future__ import annotations

from typing import Any

from .backends import resolve_labels

__all__ = ["anchor_positive_mask", "anchor_negative_mask", "triplet_mask", "label_masks"]


def label_masks(xp, labels, device=None):
    """``(positive, negative)`` masks of shape (B, B), bool, for resolved ``labels``."""
    if device is None:
        import array_api_compat

        device = array_api_compat.device(labels)
    same = labels[:, None] == labels[None, :]
    eye = xp.eye(labels.shape[0], dtype=xp.bool, device=device)
    return same & ~eye, ~same


def anchor_positive_mask(labels: Any, *, backend: Any = None):
    """``M[a, p] = (a != p) & (labels[a] == labels[p])``: bool array of shape (B, B).

    ``labels``: integer array of shape (B,), any array kind; ``backend=None`` keeps its own
    framework and device.
    """
    _, xp, y = resolve_labels(labels, backend)
    return label_masks(xp, y)[0]


def anchor_negative_mask(labels: Any, *, backend: Any = None):
    """``M[a, n] = labels[a] != labels[n]``: bool array of shape (B, B)."""
    _, xp, y = resolve_labels(labels, backend)
    return label_masks(xp, y)[1]


def triplet_mask(labels: Any, *, backend: Any = None):
    """``M[a, p, n] = positive[a, p] & negative[a, n]``: bool array of shape (B, B, B).

    Cubic in memory by nature; provided for reference and tests, never used by a loss.
    """
    _, xp, y = resolve_labels(labels, backend)
    pos, neg = label_masks(xp, y)
    return pos[:, :, None] & neg[:, None, :]
