"""Plain-Python loop definitions of everything triplet_ref computes (the *oracles*).

These functions are the executable form of the semantics contract (``docs/semantics.md``).
They are written for clarity, not speed: every quantity is computed with explicit Python
``for`` loops over Python floats in double precision (float64).  NumPy is used only to read
the inputs (``numpy.asarray``) and to hand back index/bool/``"none"`` arrays; no vectorised
NumPy math takes part in any definition.  Nothing else from ``triplet_ref`` is imported: the
fast code is tested against these functions, never the other way round.

Use them from any project::

    from triplet_ref import oracles
    loss, info = oracles.batch_hard([0, 0, 1], [[0.0], [1.0], [3.0]], margin=1.0,
                                    return_info=True)

Signatures are those of ``triplet_ref`` (docs/API.md) without ``backend``.  Every batch loss
and ``pairwise_distances`` take a reference set (``ref_embeddings=``, ``ref_labels=``): the
rows of ``embeddings`` are the anchors, positives and negatives are reference rows, and no
(anchor, reference) pair is excluded as the same sample (docs/semantics.md, "Reference sets").  Inputs may be
anything ``numpy.asarray`` accepts (lists, NumPy arrays, CPU tensors of PyTorch/JAX, ...).

Results
    * ``reduction="mean"`` / ``"sum"``: a Python ``float``;
    * ``reduction="none"``: a ``numpy.float64`` array;
    * ``return_info=True`` (``batch_*`` only): ``(loss, info)``; in ``info`` counts are Python
      ``int``, fractions and mean distances Python ``float``, index arrays ``numpy.int64``
      with ``-1`` where there is no index, ``valid`` a ``numpy.bool_`` array.

Notation: ``d(i, j)`` the pairwise distance, ``m`` the margin, ``h`` the hinge:
``h(x) = max(x, 0)``, or with ``soft=True`` ``h(x) = softplus(x) = log(1 + e^x)`` computed as
``log1p(exp(-|x|)) + max(x, 0)`` (no overflow).  Ties in every arg-max / arg-min go to the
smallest index.

Decisions the contract (SEMANTICS.md) leaves open are marked "Decision" below and listed in
``docs/semantics.md``; the most visible ones:

* with ``soft=True`` *every* valid term counts as positive (softplus is > 0 on all of R), so
  ``fraction_positive`` is 1 whenever there is a valid term and ``batch_all``'s mean divides
  by the number of valid triplets;
* ``reduction="mean"``/``"sum"`` is NaN whenever the embeddings contain a NaN, even if the
  NaN row enters no term ("NaN in the embeddings gives a NaN loss");
* a NaN candidate wins every arg-max / arg-min (first NaN index), like ``numpy.argmax``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "REDUCTIONS",
    "pairwise_distances",
    "anchor_positive_mask",
    "anchor_negative_mask",
    "triplet_mask",
    "batch_all",
    "batch_hard",
    "batch_semihard",
    "batch_contrastive",
    "triplet_loss",
    "contrastive_loss",
    "hinge",
    "softplus",
]

METRICS = ("euclidean", "sqeuclidean", "cosine")
REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------
# input reading and validation (NumPy for I/O only)
# --------------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Read ``x`` into a NumPy array without importing any framework."""
    if hasattr(x, "detach") and callable(x.detach):  # a torch tensor (maybe with grad / on GPU)
        x = x.detach()
        if hasattr(x, "cpu"):
            x = x.cpu()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # e.g. array-api-strict arrays without __array__
        if hasattr(x, "__dlpack__"):
            try:
                return np.from_dlpack(x)
            except Exception:
                pass
        raise TypeError(f"{name}: cannot be read as an array ({type(x).__name__}): {exc}") from exc
    if arr.dtype == object and hasattr(x, "__dlpack__"):
        try:
            arr = np.from_dlpack(x)
        except Exception:
            pass
    return arr


def _is_floating(dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return True
    # bfloat16 / float8 from ml_dtypes (JAX) are not kind "f" in NumPy
    return dtype.kind == "V" and "float" in dtype.name


def _read_embeddings(x: Any, name: str = "embeddings") -> list[list[float]]:
    """2-D, at least one row, real floating dtype -> list of rows of Python floats (float64).

    Like the library: integer, bool, complex, string and object arrays are rejected with
    TypeError (a list of Python ints is an integer array: write ``0.0``, not ``0``).
    float16/bfloat16/float32 values are read exactly into float64.  Zero feature columns
    (shape ``(B, 0)``) are allowed: every row is then the zero vector.
    """
    arr = _to_numpy(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (B, D), got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: the batch needs at least one row, got shape {tuple(arr.shape)}")
    dt = arr.dtype
    if not _is_floating(dt):
        raise TypeError(f"{name} must have a real floating dtype, got dtype {dt}")
    arr = arr.astype(np.float64)
    return [[float(v) for v in row] for row in arr.tolist()]


def _read_labels(y: Any, batch: int | None, name: str = "labels") -> list[int]:
    """1-D integer labels of length ``batch`` -> list of Python ints."""
    arr = _to_numpy(y, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (B,), got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: the batch needs at least one element")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got dtype {arr.dtype}")
    if batch is not None and arr.shape[0] != batch:
        raise ValueError(
            f"{name} has length {arr.shape[0]} but embeddings has {batch} rows; they must match"
        )
    return [int(v) for v in arr.tolist()]


def _read_margin(margin: Any) -> float:
    if isinstance(margin, (bool, np.bool_)) or isinstance(margin, (str, bytes)):
        raise TypeError(f"margin must be a real number, got {type(margin).__name__}")
    if isinstance(margin, numbers.Real):
        m = float(margin)
    else:
        try:
            arr = _to_numpy(margin, "margin")
        except TypeError as exc:
            raise TypeError(f"margin must be a real number, got {type(margin).__name__}") from exc
        if arr.ndim != 0 or not (arr.dtype.kind in "iuf" or _is_floating(arr.dtype)):
            raise TypeError(f"margin must be a real scalar, got {type(margin).__name__} {arr.dtype} {arr.shape}")
        m = float(arr.astype(np.float64))
    if not math.isfinite(m):
        raise ValueError(f"margin must be finite, got {m}")
    if m < 0:
        raise ValueError(f"margin must be >= 0, got {m}")
    return m


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {choices}")
    return value


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _has_nan(rows: list[list[float]]) -> bool:
    """Whether the rows hold a NaN or an infinity (non-finite input gives a NaN loss)."""
    return any(not math.isfinite(v) for row in rows for v in row)


# --------------------------------------------------------------------------------------
# scalar building blocks
# --------------------------------------------------------------------------------------
def hinge(x: float) -> float:
    """``max(x, 0)``, keeping NaN as NaN (``max(nan, 0)`` must not become 0)."""
    if math.isnan(x):
        return x
    return x if x > 0.0 else 0.0


def _square(x: float) -> float:
    """``x²`` in IEEE arithmetic: ``inf`` when it overflows (Python's ``x ** 2`` raises
    ``OverflowError`` instead, where every array backend gives ``inf``)."""
    return x * x


def softplus(x: float) -> float:
    """``log(1 + e^x)`` computed as ``log1p(exp(-|x|)) + max(x, 0)``: never overflows."""
    if math.isnan(x):
        return x
    return math.log1p(math.exp(-abs(x))) + (x if x > 0.0 else 0.0)


def _h(x: float, soft: bool) -> float:
    return softplus(x) if soft else hinge(x)


def _is_positive(loss: float, soft: bool) -> bool:
    """Whether a term counts as *positive* (``l > 0``).

    Decision: with ``soft=True`` every term is positive, because softplus(x) > 0 for every
    real x; the count does not depend on float underflow of softplus (which is exactly 0 in
    float64 below x ~ -745, in float32 below x ~ -104).  With the hard hinge it is ``l > 0``
    (a NaN term is not positive; the loss is NaN anyway).
    """
    return True if soft else loss > 0.0


def _euclidean(u: list[float], v: list[float]) -> float:
    # math.dist is the correctly scaled sqrt(sum((u_k - v_k)^2)) (no overflow of the squares)
    return math.dist(u, v)


def _sqeuclidean(u: list[float], v: list[float]) -> float:
    return math.fsum((a - b) * (a - b) for a, b in zip(u, v))


def _unit(u: list[float]) -> list[float] | None:
    """u / ||u||, or None for a zero row (all entries exactly 0)."""
    norm = math.hypot(*u)
    if norm == 0.0:
        return None
    return [a / norm for a in u]


def _cosine_from_units(uu: list[float] | None, vv: list[float] | None) -> float:
    """1 - cos, with cos = 0 when either row is zero; cos clamped to [-1, 1] (d in [0, 2])."""
    if uu is None or vv is None:
        return 1.0
    c = math.fsum(a * b for a, b in zip(uu, vv))
    if math.isnan(c):
        return c
    c = min(1.0, max(-1.0, c))
    return 1.0 - c


def _distance(u: list[float], v: list[float], metric: str) -> float:
    """The distance between two rows (used for the explicit tuple forms)."""
    if metric == "euclidean":
        return _euclidean(u, v)
    if metric == "sqeuclidean":
        return _sqeuclidean(u, v)
    return _cosine_from_units(_unit(u), _unit(v))


def _distance_matrix(rows: list[list[float]], metric: str) -> list[list[float]]:
    """d[i][j] per pair from the coordinates; d[i][i] = 0 exactly; d[j][i] = d[i][j]."""
    b = len(rows)
    units = [_unit(r) for r in rows] if metric == "cosine" else None
    d = [[0.0] * b for _ in range(b)]
    for i in range(b):
        for j in range(i + 1, b):
            if metric == "euclidean":
                v = _euclidean(rows[i], rows[j])
            elif metric == "sqeuclidean":
                v = _sqeuclidean(rows[i], rows[j])
            else:
                v = _cosine_from_units(units[i], units[j])
            d[i][j] = v
            d[j][i] = v
    return d


def _cross_distance_matrix(rows: list[list[float]], refs: list[list[float]], metric: str) -> list[list[float]]:
    """d[i][j] between anchor row i and reference row j, every pair from the coordinates.

    No pair is special: an anchor and a reference row are distinct samples, so a zero anchor
    against a zero reference row has cosine distance 1 (only ``d(i, i)`` of one batch is 0
    by definition).
    """
    units = [_unit(r) for r in rows] if metric == "cosine" else None
    ref_units = [_unit(r) for r in refs] if metric == "cosine" else None
    d = [[0.0] * len(refs) for _ in range(len(rows))]
    for i, u in enumerate(rows):
        for j, v in enumerate(refs):
            if metric == "euclidean":
                d[i][j] = _euclidean(u, v)
            elif metric == "sqeuclidean":
                d[i][j] = _sqeuclidean(u, v)
            else:
                d[i][j] = _cosine_from_units(units[i], ref_units[j])
    return d


def _read_ref_embeddings(ref_embeddings: Any, rows: list[list[float]]) -> list[list[float]]:
    refs = _read_embeddings(ref_embeddings, "ref_embeddings")
    if len(refs[0]) != len(rows[0]):
        raise ValueError(
            f"ref_embeddings has {len(refs[0])} columns but embeddings has {len(rows[0])}; "
            "they must match"
        )
    return refs


def _read_reference(rows: list[list[float]], y: list[int], ref_embeddings: Any, ref_labels: Any):
    """``(refs, ref_y, same)``: the reference rows and labels the anchors mine against, and
    whether ``(a, j)`` is the same sample (only without a reference set: ``j == a``)."""
    if ref_embeddings is None and ref_labels is None:
        return rows, y, True
    if ref_embeddings is None:
        raise ValueError("ref_labels was given without ref_embeddings; pass both or neither")
    if ref_labels is None:
        raise ValueError("ref_embeddings was given without ref_labels; pass both or neither")
    refs = _read_ref_embeddings(ref_embeddings, rows)
    ref_y = _read_labels(ref_labels, None, "ref_labels")
    if len(ref_y) != len(refs):
        raise ValueError(
            f"ref_labels has length {len(ref_y)} but ref_embeddings has {len(refs)} rows; "
            "they must match"
        )
    return refs, ref_y, False


def _distances_to(rows, refs, self_ref: bool, metric: str) -> list[list[float]]:
    return _distance_matrix(rows, metric) if self_ref else _cross_distance_matrix(rows, refs, metric)


def _argbest(candidates: list[tuple[int, float]], largest: bool) -> tuple[int, float]:
    """(index, value) of the largest (or smallest) value; ties -> smallest index.

    ``candidates`` is in increasing index order.  A NaN value wins (first NaN), so a NaN
    distance propagates into the loss instead of being skipped.
    """
    best_i, best_v = candidates[0]
    for i, v in candidates[1:]:
        if math.isnan(best_v):
            break
        if math.isnan(v) or (v > best_v if largest else v < best_v):
            best_i, best_v = i, v
    return best_i, best_v


def _reduce(total_terms: list[float], count: int, reduction: str, nan_input: bool, half: bool = False) -> float:
    """mean = Σ / count (0 when count == 0), sum = Σ; both NaN when ``nan_input``."""
    if nan_input:
        return math.nan
    s = math.fsum(total_terms) if not any(math.isnan(t) for t in total_terms) else math.nan
    if half:
        s = 0.5 * s
    if reduction == "sum":
        out = s
    else:
        out = s / count if count > 0 else 0.0
    if nan_input:
        return math.nan
    return out


# --------------------------------------------------------------------------------------
# distances and masks
# --------------------------------------------------------------------------------------
def pairwise_distances(embeddings: Any, ref_embeddings: Any = None, *, metric: str = "euclidean") -> np.ndarray:
    """The ``(B, B)`` float64 matrix of pairwise distances, computed pair by pair.

    With ``ref_embeddings`` (``(R, D)``): the ``(B, R)`` matrix ``d(x_i, r_j)`` between the rows
    of ``embeddings`` and those of the reference set.  No entry is zero by definition there:
    the two sets are distinct samples (a zero row against a zero row has cosine distance 1).

    * ``"euclidean"``:   ``d(i, j) = ||x_i - x_j||_2 = sqrt(sum_k (x_ik - x_jk)^2)``
    * ``"sqeuclidean"``: ``d(i, j) = ||x_i - x_j||_2^2``
    * ``"cosine"``:      ``d(i, j) = 1 - <x_i, x_j> / (||x_i|| ||x_j||)``; a zero row (all
      entries exactly 0) has cosine 0 with every other row, so ``d = 1`` there.
      Decision: the cosine is clamped to [-1, 1] so rounding never gives ``d < 0``.

    For every metric ``d(i, i) = 0`` exactly (by definition, also for NaN rows) and
    ``d(j, i) = d(i, j)``.  No Gram-matrix identity is used (no cancellation).
    """
    metric = _check_choice(metric, "metric", METRICS)
    rows = _read_embeddings(embeddings)
    if ref_embeddings is not None:
        refs = _read_ref_embeddings(ref_embeddings, rows)
        return np.array(_cross_distance_matrix(rows, refs, metric), dtype=np.float64).reshape(len(rows), len(refs))
    return np.array(_distance_matrix(rows, metric), dtype=np.float64)


def anchor_positive_mask(labels: Any) -> np.ndarray:
    """``M[a, p] = (a != p) and (y_a == y_p)``, shape ``(B, B)``, bool."""
    y = _read_labels(labels, None)
    b = len(y)
    return np.array([[a != p and y[a] == y[p] for p in range(b)] for a in range(b)], dtype=bool).reshape(b, b)


def anchor_negative_mask(labels: Any) -> np.ndarray:
    """``M[a, n] = (y_a != y_n)``, shape ``(B, B)``, bool."""
    y = _read_labels(labels, None)
    b = len(y)
    return np.array([[y[a] != y[n] for n in range(b)] for a in range(b)], dtype=bool).reshape(b, b)


def triplet_mask(labels: Any) -> np.ndarray:
    """``M[a, p, n] = (a != p) and (y_a == y_p) and (y_a != y_n)``, shape ``(B, B, B)``, bool.

    (``n != a`` and ``n != p`` follow from the labels.)
    """
    y = _read_labels(labels, None)
    b = len(y)
    out = [
        [[a != p and y[a] == y[p] and y[a] != y[n] for n in range(b)] for p in range(b)]
        for a in range(b)
    ]
    return np.array(out, dtype=bool).reshape(b, b, b)


def _prepare(labels: Any, embeddings: Any, margin: Any, metric: str, reduction: str, return_info: Any,
             ref_embeddings: Any = None, ref_labels: Any = None):
    """Validated inputs: ``(rows, y, refs, ref_y, self_ref, m, metric, reduction, return_info)``.

    Without a reference set ``refs is rows``, ``ref_y is y`` and ``self_ref`` is True: the
    pair ``(a, a)`` is the anchor itself and never a positive.  With one, ``self_ref`` is
    False and no ``(anchor, reference)`` pair is excluded.
    """
    metric = _check_choice(metric, "metric", METRICS)
    reduction = _check_choice(reduction, "reduction", REDUCTIONS)
    return_info = _check_bool(return_info, "return_info")
    rows = _read_embeddings(embeddings)
    y = _read_labels(labels, len(rows))
    refs, ref_y, self_ref = _read_reference(rows, y, ref_embeddings, ref_labels)
    m = _read_margin(margin)
    return rows, y, refs, ref_y, self_ref, m, metric, reduction, return_info


def _nan_in(rows, refs) -> bool:
    return _has_nan(rows) or (refs is not rows and _has_nan(refs))


# --------------------------------------------------------------------------------------
# online-mined losses
# --------------------------------------------------------------------------------------
def batch_all(
    labels: Any,
    embeddings: Any,
    margin: Any = 1.0,
    *,
    metric: str = "euclidean",
    soft: bool = False,
    reduction: str = "mean",
    return_info: bool = False,
    ref_embeddings: Any = None,
    ref_labels: Any = None,
):
    """Batch-all triplet loss (every valid triplet).

    Terms: every ``(a, p, n)`` with ``a != p``, ``y_a == y_p``, ``y_a != y_n``;
    ``l(a, p, n) = h(d(a, p) - d(a, n) + m)``.  A triplet is *positive* when ``l > 0``
    (Decision: with ``soft=True`` every valid triplet is positive).

    * ``"mean"``: ``sum l / #positive``, 0 when there is no positive triplet
    * ``"sum"``:  ``sum l``
    * ``"none"``: ``(B, B)`` array ``L[a, p] = sum_n l(a, p, n)`` (0 where (a, p) is not a
      positive pair or the anchor has no negative)

    With a reference set (``ref_embeddings`` ``(R, D)``, ``ref_labels`` ``(R,)``): ``a`` runs
    over the rows of ``embeddings``, ``p`` and ``n`` over the reference rows, ``d(a, p)`` is
    the cross distance, and no pair is excluded as the same sample (``y_a == y_p`` suffices);
    ``"none"`` is ``(B, R)``.

    info: ``num_valid`` (#valid triplets), ``num_positive``,
    ``fraction_positive = num_positive / num_valid`` (0.0 when ``num_valid == 0``).
    """
    soft = _check_bool(soft, "soft")
    rows, y, refs, ry, self_ref, m, metric, reduction, return_info = _prepare(
        labels, embeddings, margin, metric, reduction, return_info, ref_embeddings, ref_labels)
    b, r = len(y), len(ry)
    d = _distances_to(rows, refs, self_ref, metric)
    per_pair = [[0.0] * r for _ in range(b)]
    terms: list[float] = []
    num_valid = 0
    num_positive = 0
    for a in range(b):
        for p in range(r):
            if (self_ref and p == a) or ry[p] != y[a]:
                continue
            pair_terms = []
            for n in range(r):
                if ry[n] == y[a]:
                    continue
                l = _h(d[a][p] - d[a][n] + m, soft)
                num_valid += 1
                if _is_positive(l, soft):
                    num_positive += 1
                pair_terms.append(l)
            terms.extend(pair_terms)
            if pair_terms:
                per_pair[a][p] = math.fsum(pair_terms) if not any(math.isnan(t) for t in pair_terms) else math.nan
    nan_input = _nan_in(rows, refs)
    if reduction == "none":
        loss = np.array(per_pair, dtype=np.float64).reshape(b, r)
    else:
        loss = _reduce(terms, num_positive, reduction, nan_input)
    if not return_info:
        return loss
    info = {
        "num_valid": num_valid,
        "num_positive": num_positive,
        "fraction_positive": num_positive / num_valid if num_valid else 0.0,
    }
    return loss, info


def batch_hard(
    labels: Any,
    embeddings: Any,
    margin: Any = 1.0,
    *,
    metric: str = "euclidean",
    soft: bool = False,
    reduction: str = "mean",
    return_info: bool = False,
    ref_embeddings: Any = None,
    ref_labels: Any = None,
):
    """Batch-hard triplet loss (Hermans, Beyer and Leibe 2017).

    An anchor ``a`` is *valid* when it has at least one positive (``p != a``, ``y_p == y_a``)
    and at least one negative (``y_n != y_a``).  For a valid anchor

    ``hp(a) = max_p d(a, p)``, ``hn(a) = min_n d(a, n)``, ``l(a) = h(hp(a) - hn(a) + m)``.

    * ``"mean"``: mean of ``l`` over valid anchors, 0 when none is valid
    * ``"sum"``:  sum over valid anchors
    * ``"none"``: ``(B,)`` array, 0 at invalid anchors

    With a reference set, positives and negatives are reference rows (``y_p == y_a``, no
    ``p != a`` condition) and the info indices point into the reference set.

    info: ``hardest_positive``, ``hardest_negative`` (``(B,)`` int64, -1 at invalid anchors,
    ties to the smallest index), ``valid`` (``(B,)`` bool), ``num_valid``,
    ``fraction_positive`` (valid anchors with ``l > 0`` / valid anchors; 0.0 when none;
    Decision: with ``soft=True`` every valid anchor counts), ``mean_hardest_positive_dist``,
    ``mean_hardest_negative_dist`` (means over valid anchors; Decision: 0.0 when none).
    """
    soft = _check_bool(soft, "soft")
    rows, y, refs, ry, self_ref, m, metric, reduction, return_info = _prepare(
        labels, embeddings, margin, metric, reduction, return_info, ref_embeddings, ref_labels)
    b, r = len(y), len(ry)
    d = _distances_to(rows, refs, self_ref, metric)
    per_anchor = [0.0] * b
    hard_pos = [-1] * b
    hard_neg = [-1] * b
    valid = [False] * b
    terms: list[float] = []
    hp_vals: list[float] = []
    hn_vals: list[float] = []
    num_positive = 0
    for a in range(b):
        positives = [(p, d[a][p]) for p in range(r) if not (self_ref and p == a) and ry[p] == y[a]]
        negatives = [(n, d[a][n]) for n in range(r) if ry[n] != y[a]]
        if not positives or not negatives:
            continue
        p_idx, hp = _argbest(positives, largest=True)
        n_idx, hn = _argbest(negatives, largest=False)
        l = _h(hp - hn + m, soft)
        valid[a] = True
        hard_pos[a] = p_idx
        hard_neg[a] = n_idx
        per_anchor[a] = l
        terms.append(l)
        hp_vals.append(hp)
        hn_vals.append(hn)
        if _is_positive(l, soft):
            num_positive += 1
    num_valid = len(terms)
    nan_input = _nan_in(rows, refs)
    if reduction == "none":
        loss = np.array(per_anchor, dtype=np.float64)
    else:
        loss = _reduce(terms, num_valid, reduction, nan_input)
    if not return_info:
        return loss

    def _mean(vals: list[float]) -> float:
        if not vals:
            return 0.0
        if any(math.isnan(v) for v in vals):
            return math.nan
        return math.fsum(vals) / len(vals)

    info = {
        "hardest_positive": np.array(hard_pos, dtype=np.int64),
        "hardest_negative": np.array(hard_neg, dtype=np.int64),
        "valid": np.array(valid, dtype=bool),
        "num_valid": num_valid,
        "fraction_positive": num_positive / num_valid if num_valid else 0.0,
        "mean_hardest_positive_dist": _mean(hp_vals),
        "mean_hardest_negative_dist": _mean(hn_vals),
    }
    return loss, info


def batch_semihard(
    labels: Any,
    embeddings: Any,
    margin: Any = 1.0,
    *,
    metric: str = "euclidean",
    reduction: str = "mean",
    return_info: bool = False,
    ref_embeddings: Any = None,
    ref_labels: Any = None,
):
    """Semi-hard triplet loss (Schroff, Kalenichenko and Philbin 2015, FaceNet).

    Terms: every positive pair ``(a, p)`` (``a != p``, ``y_a == y_p``) whose anchor has at least
    one negative.  The chosen negative is

    ``n*(a, p) = argmin { d(a, n) : y_n != y_a, d(a, n) > d(a, p) }``  (strictly greater;
    the *semi-hard* rule), or, when that set is empty,
    ``n*(a, p) = argmax { d(a, n) : y_n != y_a }``  (the fallback: the easiest negative);
    ties to the smallest index.  ``l(a, p) = max(d(a, p) - d(a, n*) + m, 0)``.

    * ``"mean"``: mean over the terms, 0 when there is none
    * ``"sum"``:  sum over the terms
    * ``"none"``: ``(B, B)`` array, 0 where ``(a, p)`` is not a term

    With a reference set, ``p`` and ``n`` are reference rows (no ``a != p`` condition),
    ``"none"`` and ``semihard_negative`` are ``(B, R)`` and the indices point into it.

    info: ``semihard_negative`` (``(B, B)`` int64, -1 where not a term), ``num_valid`` (the
    number of terms), ``fraction_positive`` (terms with ``l > 0`` / terms), ``fraction_semihard``
    (terms whose ``n*`` came from the strict rule / terms); fractions 0.0 when there is no term.
    """
    rows, y, refs, ry, self_ref, m, metric, reduction, return_info = _prepare(
        labels, embeddings, margin, metric, reduction, return_info, ref_embeddings, ref_labels)
    b, r = len(y), len(ry)
    d = _distances_to(rows, refs, self_ref, metric)
    per_pair = [[0.0] * r for _ in range(b)]
    chosen = [[-1] * r for _ in range(b)]
    terms: list[float] = []
    num_positive = 0
    num_semihard = 0
    for a in range(b):
        negatives = [(n, d[a][n]) for n in range(r) if ry[n] != y[a]]
        if not negatives:
            continue
        for p in range(r):
            if (self_ref and p == a) or ry[p] != y[a]:
                continue
            dap = d[a][p]
            farther = [(n, dn) for n, dn in negatives if dn > dap]
            if farther:
                n_star, dn_star = _argbest(farther, largest=False)
                num_semihard += 1
            else:
                n_star, dn_star = _argbest(negatives, largest=True)
            l = hinge(dap - dn_star + m)
            per_pair[a][p] = l
            chosen[a][p] = n_star
            terms.append(l)
            if l > 0.0:
                num_positive += 1
    num_valid = len(terms)
    nan_input = _nan_in(rows, refs)
    if reduction == "none":
        loss = np.array(per_pair, dtype=np.float64).reshape(b, r)
    else:
        loss = _reduce(terms, num_valid, reduction, nan_input)
    if not return_info:
        return loss
    info = {
        "semihard_negative": np.array(chosen, dtype=np.int64).reshape(b, r),
        "num_valid": num_valid,
        "fraction_positive": num_positive / num_valid if num_valid else 0.0,
        "fraction_semihard": num_semihard / num_valid if num_valid else 0.0,
    }
    return loss, info


def batch_contrastive(
    labels: Any,
    embeddings: Any,
    margin: Any = 1.0,
    *,
    reduction: str = "mean",
    return_info: bool = False,
    ref_embeddings: Any = None,
    ref_labels: Any = None,
):
    """Contrastive loss over every ordered pair of the batch (Hadsell, Chopra and LeCun 2006).

    Terms: every ordered pair ``(i, j)``, ``i != j``; ``e = ||x_i - x_j||_2`` (always euclidean);
    ``l(i, j) = e^2`` when ``y_i == y_j``, ``l(i, j) = max(m - e, 0)^2`` otherwise.

    * ``"mean"``: ``1/2 * sum l / (B (B - 1))``, 0 when ``B < 2``
    * ``"sum"``:  ``1/2 * sum l``
    * ``"none"``: Decision: the ``(B, B)`` array ``1/2 * l(i, j)`` (0 on the diagonal), so that
      ``sum(none) == sum`` and ``mean == sum / (B (B - 1))``

    With a reference set (``R`` rows): the terms are all ``B·R`` pairs ``(i, j)``, ``i`` an
    anchor row and ``j`` a reference row (none excluded); ``"mean"`` divides by ``B·R`` and
    ``"none"`` is ``(B, R)``.

    info (Decision; SEMANTICS.md lists no keys for this loss): ``num_valid`` (the number of
    terms, ``B (B - 1)``, or ``B·R``) and ``fraction_positive`` (terms with ``l > 0`` / terms,
    0.0 when none).
    """
    rows, y, refs, ry, self_ref, m, _metric, reduction, return_info = _prepare(
        labels, embeddings, margin, "euclidean", reduction, return_info, ref_embeddings, ref_labels)
    b, r = len(y), len(ry)
    d = _distances_to(rows, refs, self_ref, "euclidean")
    per_pair = [[0.0] * r for _ in range(b)]
    terms: list[float] = []
    num_positive = 0
    for i in range(b):
        for j in range(r):
            if self_ref and i == j:
                continue
            e = d[i][j]
            l = e * e if y[i] == ry[j] else _square(hinge(m - e))
            per_pair[i][j] = 0.5 * l
            terms.append(l)
            if l > 0.0:
                num_positive += 1
    num_valid = len(terms)
    if reduction == "none":
        loss = np.array(per_pair, dtype=np.float64).reshape(b, r)
    else:
        loss = _reduce(terms, num_valid, reduction, _nan_in(rows, refs), half=True)
    if not return_info:
        return loss
    info = {
        "num_valid": num_valid,
        "fraction_positive": num_positive / num_valid if num_valid else 0.0,
    }
    return loss, info


# --------------------------------------------------------------------------------------
# explicit tuple forms
# --------------------------------------------------------------------------------------
def _read_rows_like(x: Any, name: str, shape: tuple[int, int] | None) -> list[list[float]]:
    rows = _read_embeddings(x, name)
    got = (len(rows), len(rows[0]))
    if shape is not None and got != shape:
        raise ValueError(f"{name} has shape {got} but the first input has shape {shape}; they must match")
    return rows


def triplet_loss(
    anchor: Any,
    positive: Any,
    negative: Any,
    margin: Any = 1.0,
    *,
    metric: str = "euclidean",
    soft: bool = False,
    reduction: str = "mean",
):
    """Offline triplet loss on explicit rows: ``anchor``, ``positive``, ``negative`` of shape (N, D).

    ``l_i = h(d(a_i, p_i) - d(a_i, n_i) + m)`` (``metric="sqeuclidean"`` is the squared form of
    FaceNet; cosine uses the zero-row rule: a zero row has cosine 0 with any other row).

    * ``"mean"``: ``sum_i l_i / N`` (every row counts, positive or not)
    * ``"sum"``:  ``sum_i l_i``
    * ``"none"``: the ``(N,)`` array of ``l_i``
    """
    metric = _check_choice(metric, "metric", METRICS)
    reduction = _check_choice(reduction, "reduction", REDUCTIONS)
    soft = _check_bool(soft, "soft")
    a_rows = _read_rows_like(anchor, "anchor", None)
    shape = (len(a_rows), len(a_rows[0]))
    p_rows = _read_rows_like(positive, "positive", shape)
    n_rows = _read_rows_like(negative, "negative", shape)
    m = _read_margin(margin)
    terms = [
        _h(_distance(a, p, metric) - _distance(a, n, metric) + m, soft)
        for a, p, n in zip(a_rows, p_rows, n_rows)
    ]
    if reduction == "none":
        return np.array(terms, dtype=np.float64)
    nan_input = _has_nan(a_rows) or _has_nan(p_rows) or _has_nan(n_rows)
    return _reduce(terms, len(terms), reduction, nan_input)


def contrastive_loss(
    x1: Any,
    x2: Any,
    same: Any,
    margin: Any = 1.0,
    *,
    reduction: str = "mean",
):
    """Contrastive loss on explicit pairs (Hadsell, Chopra and LeCun 2006).

    ``e_i = ||x1_i - x2_i||_2``, ``l_i = same_i * e_i^2 + (1 - same_i) * max(m - e_i, 0)^2``.

    * ``"mean"``: ``1/2 * sum_i l_i / N``
    * ``"sum"``:  ``1/2 * sum_i l_i``
    * ``"none"``: the ``(N,)`` array of ``1/2 * l_i``

    ``same`` is 1-D of length N, bool, integer or floating (Decision: values are used as
    given in the formula and not checked, since a traced/jitted library cannot check values;
    1/True means "same class").
    """
    reduction = _check_choice(reduction, "reduction", REDUCTIONS)
    r1 = _read_rows_like(x1, "x1", None)
    n = len(r1)
    r2 = _read_rows_like(x2, "x2", (n, len(r1[0])))
    s = _to_numpy(same, "same")
    if s.ndim != 1:
        raise ValueError(f"same must be 1-D (N,), got shape {tuple(s.shape)}")
    if s.shape[0] != n:
        raise ValueError(f"same has length {s.shape[0]} but x1 has {n} rows; they must match")
    if not (s.dtype.kind in "biuf" or _is_floating(s.dtype)):
        raise TypeError(f"same must be bool, integer or floating, got dtype {s.dtype}")
    sv = [float(v) for v in s.astype(np.float64).tolist()]
    m = _read_margin(margin)
    terms = []
    for u, v, si in zip(r1, r2, sv):
        e = _euclidean(u, v)
        terms.append(0.5 * (si * e * e + (1.0 - si) * _square(hinge(m - e))))
    if reduction == "none":
        return np.array(terms, dtype=np.float64)
    nan_input = _has_nan(r1) or _has_nan(r2) or _has_nan([sv])
    return _reduce(terms, n, reduction, nan_input)
