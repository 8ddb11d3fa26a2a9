"""Nearest-neighbour retrieval metrics, in NumPy (float64, euclidean distance)."""
from __future__ import annotations

import numpy as np


def _ranking(embeddings: np.ndarray, labels: np.ndarray):
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be 1-D with {x.shape[0]} entries, got shape {y.shape}")
    if x.shape[0] < 2:
        raise ValueError("need at least 2 items to retrieve among")
    sq = np.sum(x * x, axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))
    np.fill_diagonal(d, np.inf)  # the query never retrieves itself
    # every other item, nearest first; ties go to the smaller index (stable sort)
    order = np.argsort(d, axis=1, kind="stable")[:, :-1]
    relevant = y[order] == y[:, None]
    return relevant


def recall_at_1(embeddings, labels) -> float:
    """Fraction of queries whose nearest other item has the same label."""
    relevant = _ranking(embeddings, labels)
    return float(np.mean(relevant[:, 0]))


def mean_average_precision(embeddings, labels) -> float:
    """Mean over queries of the average precision of the ranking of all other items.

    AP(q) = mean over the relevant items r of precision@rank(r). Queries with no other item
    of their label have no AP and are skipped.
    """
    relevant = _ranking(embeddings, labels)
    n_rel = relevant.sum(axis=1)
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, relevant.shape[1] + 1)
    ap = np.sum(precision * relevant, axis=1)[n_rel > 0] / n_rel[n_rel > 0]
    return float(np.mean(ap))


def retrieval_metrics(embeddings, labels) -> dict:
    """``{"recall_at_1": ..., "map": ...}`` for retrieval of every item among all the others."""
    return {"recall_at_1": recall_at_1(embeddings, labels), "map": mean_average_precision(embeddings, labels)}
