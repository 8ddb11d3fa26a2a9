"""The known variants of the triplet-loss family, as small float64 NumPy definitions.

Each published implementation of a batch triplet loss makes a handful of choices that
differ from triplet_ref's contract (``docs/semantics.md``, "Where peers differ").  This
module writes the contract *and* those choices as one dense float64 definition per loss,
switched by flags.  With every flag off, :func:`evaluate` is the contract itself (the
kit's tests check it against :mod:`triplet_ref.oracles` on the whole catalog); with a
flag on, it is the variant.  :func:`triplet_ref.testing.check_loss` names a variant only
when the implementation under test matches the flagged definition on *every* batch of
the catalog and the contract does not.

The definitions are dense ``(B, B, B)`` NumPy for speed on the catalog's small batches
(B = 16); they are never used on large batches.

==============================  ==========  ===============================================
flag                            losses      the variant (the contract in brackets)
==============================  ==========  ===============================================
``normalize``                   all         rows L2-normalised before the distances [raw]
``squared``                     euclidean   squared euclidean distance [euclidean]
``empty_nan``                   all         NaN (0/0) when nothing is averaged [0]
``soft_no_margin``              soft=True   ``softplus(x)`` [``softplus(x + m)``]
``mean_all_valid``              batch_all   mean over all valid triplets [over l > 0]
``no_positive_counted``         batch_hard  anchor without a positive counted, hp = 0
                                            [excluded]
``no_negative_counted``         batch_hard  anchor without a negative counted, hn = its
                                semihard    row maximum (batch-hard) or n* = its row
                                            minimum 0 (semi-hard) [excluded]
``mean_all_anchors``            batch_hard  mean over all B anchors [over valid anchors]
``mean_nonzero``                batch_hard  mean over anchors with l > 0 [valid anchors]
``semihard_ge``                 semihard    ``d(a, n) >= d(a, p)`` [strictly >]
``unsquared``                   contrast.   ``e`` and ``max(m - e, 0)`` [squared]
``no_half``                     contrast.   no ½ factor [½]
``nonzero_parts``               contrast.   positive and negative parts each averaged
                                            over their non-zero terms, then summed
                                            [½ Σ / B(B - 1)]
==============================  ==========  ===============================================
"""
from __future__ import annotations

import itertools
import math
from typing import Iterable

import numpy as np

__all__ = ["VARIANTS", "LOSSES", "flags_for", "evaluate", "combinations"]

LOSSES = ("batch_all", "batch_hard", "batch_semihard", "batch_contrastive")

#: flag -> (the name a report prints, what it means)
VARIANTS: dict[str, tuple[str, str]] = {
    "normalize": ("normalises embeddings",
                  "the rows are L2-normalised before the distances (pytorch-metric-learning's "
                  "default LpDistance(normalize_embeddings=True)); the contract uses the raw rows"),
    "squared": ("squared euclidean distance",
                "d = ||x_i - x_j||^2 where the euclidean distance was asked (tf.contrib's "
                "triplet_semihard_loss)"),
    "empty_nan": ("NaN on an empty batch",
                  "a batch with nothing to average (no positive triplet, no valid anchor, no "
                  "semi-hard term) gives NaN (0/0); the contract gives 0"),
    "soft_no_margin": ("soft margin drops the margin",
                       "soft=True computes softplus(x) instead of softplus(x + m); the contract "
                       "keeps the margin (margin=0 is Hermans et al.'s soft margin)"),
    "mean_all_valid": ("mean over all valid triplets instead of positive ones",
                       "batch-all divides by the number of valid triplets, zero terms "
                       "included; the contract divides by the triplets with l > 0"),
    "no_positive_counted": ("counts anchors without a positive",
                            "batch-hard counts an anchor that has no positive, with hardest "
                            "positive distance 0 (a masked max over zeros), giving h(m - hn); "
                            "the contract excludes it"),
    "no_negative_counted": ("counts anchors without a negative",
                            "an anchor that has no negative is counted: batch-hard takes its "
                            "row maximum as the hardest negative (a single-class batch then "
                            "gives the margin), semi-hard its row minimum 0 (l = d(a,p) + m); "
                            "the contract excludes it"),
    "mean_all_anchors": ("mean over all B anchors",
                         "batch-hard divides by the batch size instead of the number of valid "
                         "anchors"),
    "mean_nonzero": ("mean over non-zero terms",
                     "batch-hard divides by the anchors with l > 0 (pytorch-metric-learning's "
                     "AvgNonZeroReducer) instead of the valid anchors"),
    "semihard_ge": ("semi-hard with >=",
                    "a semi-hard negative needs d(a,n) >= d(a,p) instead of the strict "
                    "d(a,n) > d(a,p)"),
    "unsquared": ("un-squared contrastive terms",
                  "contrastive uses e and max(m - e, 0) instead of their squares"),
    "no_half": ("no 1/2 factor",
                "contrastive omits Hadsell et al.'s 1/2"),
    "nonzero_parts": ("each part averaged over its non-zero terms",
                      "contrastive averages the positive-pair and the negative-pair terms "
                      "separately, each over its non-zero terms, and adds the two "
                      "(pytorch-metric-learning's ContrastiveLoss reducers)"),
}

#: behaviours that are not a different formula but a different treatment of NaN,
#: overflow or gradients: detected by dedicated checks of the kit
BEHAVIOURS: dict[str, tuple[str, str]] = {
    "nan_not_propagated": ("NaN in the embeddings not propagated",
                           "a NaN row that enters terms gives a finite loss (a NaN term "
                           "dropped, e.g. by a `> 0` filter); the contract gives NaN"),
    "nan_outside_terms_ignored": ("NaN row outside every term ignored",
                                  "a NaN row in a batch with no term gives a finite loss; the "
                                  "contract (Decision) gives NaN whenever the embeddings hold NaN"),
    "softplus_overflow": ("softplus overflows",
                          "soft=True computes log(1 + exp(x)), which is inf for large x "
                          "(x > 88 in float32)"),
    "nan_grad_zero_distance": ("NaN gradient at zero distance",
                               "the gradient is NaN/inf where a distance is 0 (the diagonal "
                               "or duplicate rows): sqrt's derivative at 0"),
    "grad_mismatch": ("gradient differs from finite differences",
                      "the gradient does not match a central finite difference of the "
                      "definition the value matches"),
}

_COMMON = ("normalize", "squared", "empty_nan")
_PER_LOSS = {
    "batch_all": ("mean_all_valid",),
    "batch_hard": ("no_positive_counted", "no_negative_counted", "mean_all_anchors", "mean_nonzero"),
    "batch_semihard": ("no_negative_counted", "semihard_ge"),
    "batch_contrastive": ("unsquared", "no_half", "nonzero_parts"),
}
# flags that cannot be combined (one denominator at a time)
_EXCLUSIVE = ({"mean_all_anchors", "mean_nonzero"},)


def flags_for(loss: str, metric: str = "euclidean", soft: bool = False) -> tuple[str, ...]:
    """The variant flags that apply to ``loss`` with this metric and ``soft``."""
    out = ["normalize"]
    if metric == "euclidean" and loss != "batch_contrastive":
        out.append("squared")
    if loss != "batch_contrastive":  # its only empty case is B < 2, outside the catalog
        out.append("empty_nan")
    if soft:
        out.append("soft_no_margin")
    # with soft=True every valid term is positive (softplus > 0): the "l > 0" denominators
    # coincide with the plain ones, so those variants do not exist
    out.extend(f for f in _PER_LOSS[loss] if not (soft and f in ("mean_all_valid", "mean_nonzero")))
    return tuple(out)


def combinations(flags: Iterable[str], max_size: int | None = None) -> list[frozenset]:
    """Every allowed subset of ``flags``, smallest first."""
    flags = tuple(flags)
    top = len(flags) if max_size is None else max_size
    out = []
    for k in range(top + 1):
        for c in itertools.combinations(flags, k):
            s = frozenset(c)
            if any(len(s & e) > 1 for e in _EXCLUSIVE):
                continue
            out.append(s)
    return out


# --------------------------------------------------------------------------------------
# the definitions
# --------------------------------------------------------------------------------------
def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def _h(x, soft):
    return _softplus(x) if soft else np.maximum(x, 0.0)


def distances(x: np.ndarray, metric: str, flags=frozenset()) -> np.ndarray:
    """float64 pairwise distances of the rows of ``x`` (computed from differences, so no
    cancellation), with the ``normalize`` / ``squared`` flags applied."""
    x = np.asarray(x, dtype=np.float64)
    if "normalize" in flags:
        n = np.sqrt((x * x).sum(axis=1, keepdims=True))
        x = x / np.where(n > 0, n, 1.0)
    if metric == "cosine":
        n = np.sqrt((x * x).sum(axis=1, keepdims=True))
        u = x / np.where(n > 0, n, 1.0)
        c = np.clip(u @ u.T, -1.0, 1.0)
        d = 1.0 - c
        np.fill_diagonal(d, 0.0)
        return d
    diff = x[:, None, :] - x[None, :, :]
    sq = (diff * diff).sum(axis=-1)
    if metric == "sqeuclidean" or "squared" in flags:
        return sq
    return np.sqrt(sq)


def _mean(total, count, flags):
    if count > 0:
        return total / count
    return math.nan if "empty_nan" in flags else 0.0


def _batch_all(y, d, m, soft, flags):
    same = y[:, None] == y[None, :]
    eye = np.eye(len(y), dtype=bool)
    pos, neg = same & ~eye, ~same
    valid = pos[:, :, None] & neg[:, None, :]
    shift = 0.0 if (soft and "soft_no_margin" in flags) else m
    t = _h(d[:, :, None] - d[:, None, :] + shift, soft)[valid]
    if "mean_all_valid" in flags or soft:
        count = t.size
    else:
        count = int(np.count_nonzero(t > 0))
    return _mean(float(t.sum()), count, flags)


def _batch_hard(y, d, m, soft, flags):
    same = y[:, None] == y[None, :]
    eye = np.eye(len(y), dtype=bool)
    pos, neg = same & ~eye, ~same
    has_pos, has_neg = pos.any(axis=1), neg.any(axis=1)
    hp = np.where(has_pos, np.where(pos, d, -np.inf).max(axis=1), 0.0)
    hn = np.where(has_neg, np.where(neg, d, np.inf).min(axis=1), d.max(axis=1))
    term = has_pos & has_neg
    if "no_positive_counted" in flags:
        term |= ~has_pos & (has_neg | ("no_negative_counted" in flags))
    if "no_negative_counted" in flags:
        term |= ~has_neg & (has_pos | ("no_positive_counted" in flags))
    shift = 0.0 if (soft and "soft_no_margin" in flags) else m
    lv = _h(hp - hn + shift, soft)[term]
    if "mean_all_anchors" in flags:
        count = len(y)
    elif "mean_nonzero" in flags:
        count = int(np.count_nonzero(lv > 0))
    else:
        count = lv.size
    return _mean(float(lv.sum()), count, flags)


def _batch_semihard(y, d, m, flags):
    b = len(y)
    same = y[:, None] == y[None, :]
    eye = np.eye(b, dtype=bool)
    pos, neg = same & ~eye, ~same
    has_neg = neg.any(axis=1)
    dap = d[:, :, None]                      # (a, p, 1)
    dan = d[:, None, :]                      # (a, 1, n)
    outside = (dan >= dap) if "semihard_ge" in flags else (dan > dap)
    cand = outside & neg[:, None, :]         # (a, p, n)
    semi = np.where(cand, dan, np.inf).min(axis=2)
    fallback = np.where(neg, d, -np.inf).max(axis=1)[:, None]
    chosen = np.where(cand.any(axis=2), semi, fallback)
    term = pos & has_neg[:, None]
    if "no_negative_counted" in flags:
        chosen = np.where(has_neg[:, None], chosen, 0.0)  # the row minimum: d(a, a) = 0
        term = pos
    lv = np.maximum(d - chosen + m, 0.0)[term]
    return _mean(float(lv.sum()), lv.size, flags)


def _batch_contrastive(y, x, m, flags):
    b = len(y)
    e = distances(x, "euclidean", flags & {"normalize"})
    same = y[:, None] == y[None, :]
    eye = np.eye(b, dtype=bool)
    pos, neg = same & ~eye, ~same
    p = e if "unsquared" in flags else e * e
    n = np.maximum(m - e, 0.0)
    n = n if "unsquared" in flags else n * n
    half = 1.0 if "no_half" in flags else 0.5
    if "nonzero_parts" in flags:
        out = 0.0
        for part, mask in ((p, pos), (n, neg)):
            v = part[mask]
            nz = v[v > 0]
            out += float(nz.mean()) if nz.size else 0.0
        return half * out
    total = float(p[pos].sum() + n[neg].sum())
    return _mean(half * total, b * (b - 1), flags)


def evaluate(loss: str, labels, x, margin: float, *, metric: str = "euclidean", soft: bool = False,
             flags=frozenset()) -> float:
    """The loss (``reduction="mean"``) under the given variant ``flags``, in float64.

    With no flag this is the contract of ``docs/semantics.md`` (the same value as
    :mod:`triplet_ref.oracles`).  A NaN anywhere in ``x`` gives NaN (the contract's
    Decision), whatever the flags.
    """
    y = np.asarray(labels)
    x = np.asarray(x, dtype=np.float64)
    if np.isnan(x).any():
        return math.nan
    flags = frozenset(flags)
    if loss == "batch_contrastive":
        return _batch_contrastive(y, x, margin, flags)
    d = distances(x, metric, flags)
    if loss == "batch_all":
        return _batch_all(y, d, margin, soft, flags)
    if loss == "batch_hard":
        return _batch_hard(y, d, margin, soft, flags)
    if loss == "batch_semihard":
        return _batch_semihard(y, d, margin, flags)
    raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
