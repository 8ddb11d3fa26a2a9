"""Mined triplets as index tuples ``(anchors, positives, negatives)``, the format of
pytorch-metric-learning's miners (``indices_tuple``)."""
from __future__ import annotations

from typing import Any

from .backends._base import check_choice
from .distances import METRICS

__all__ = ["mined_triplets", "triplets_from_info"]

RULES = ("hard", "semihard")


def mined_triplets(labels: Any, embeddings: Any, rule: str = "hard", *, metric: str = "euclidean",
                   backend: Any = None):
    """The triplets that ``batch_hard`` (``rule="hard"``) or ``batch_semihard``
    (``rule="semihard"``) select, as three ``(T,)`` integer index arrays.

    - ``"hard"``: one triplet ``(a, hp(a), hn(a))`` per valid anchor (an anchor with a
      positive and a negative), anchors ascending: ``T`` = the number of valid anchors.
    - ``"semihard"``: one triplet ``(a, p, n*(a, p))`` per term of ``batch_semihard`` (a
      positive pair whose anchor has a negative), in row-major ``(a, p)`` order; ``n*`` is the
      semi-hard negative, or the farthest negative when there is none.

    The selection does not depend on the margin. The loss of these triplets,
    ``mean_t h(d(a_t, p_t) − d(a_t, n_t) + m)``, is ``batch_hard`` / ``batch_semihard`` with
    ``reduction="mean"``: pytorch-metric-learning's ``TripletMarginLoss(margin=m,
    distance=LpDistance(normalize_embeddings=False), reducer=MeanReducer())`` given
    ``indices_tuple=mined_triplets(...)`` computes the same value (tested).

    Args:
      labels: ``(B,)`` integer labels. embeddings: ``(B, D)`` real floating array.
      rule: ``"hard"`` | ``"semihard"``.
      metric: ``"euclidean"`` | ``"sqeuclidean"`` | ``"cosine"`` (the distance that ranks).
      backend: ``None`` (the embeddings' own) or a backend name/module.

    Returns:
      ``(anchors, positives, negatives)``: ``(T,)`` arrays of the backend's index dtype
      (int64 on torch) on the embeddings' device. ``T`` depends on the data, so this is not
      traceable under ``jax.jit``.
    """
    check_choice(rule, "rule", RULES)
    check_choice(metric, "metric", METRICS)
    from .losses import batch_hard, batch_semihard

    fn = batch_hard if rule == "hard" else batch_semihard
    _, info = fn(labels, embeddings, metric=metric, return_info=True, backend=backend)
    return triplets_from_info(info)


def triplets_from_info(info: dict):
    """``(anchors, positives, negatives)`` from the ``info`` dict of ``batch_hard`` or
    ``batch_semihard`` (``return_info=True``); see ``mined_triplets``."""
    from array_api_compat import array_namespace

    if not isinstance(info, dict):
        raise TypeError(f"info: expected the dict of return_info=True, got {type(info).__name__}")
    if "hardest_positive" in info and "hardest_negative" in info:
        hp, hn = info["hardest_positive"], info["hardest_negative"]
        xp = array_namespace(hp)
        (a,) = xp.nonzero(hp >= 0)
        a = xp.astype(a, hp.dtype)
        return a, xp.take(hp, a), xp.take(hn, a)
    if "semihard_negative" in info:
        sn = info["semihard_negative"]
        xp = array_namespace(sn)
        a, p = xp.nonzero(sn >= 0)
        a, p = xp.astype(a, sn.dtype), xp.astype(p, sn.dtype)
        n = xp.take(xp.reshape(sn, (-1,)), a * sn.shape[1] + p)
        return a, p, n
    raise ValueError("info: expected the info of batch_hard (hardest_positive, hardest_negative) "
                     f"or batch_semihard (semihard_negative); got keys {sorted(info)}")
