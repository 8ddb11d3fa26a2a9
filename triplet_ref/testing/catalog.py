"""The batches :func:`triplet_ref.testing.check_loss` runs an implementation on.

Every batch has the same shape, ``(16, 3)``, so a compiling framework (JAX eager, a
jitted function) compiles once per dtype, not once per batch.  Two kinds:

* *random* batches: normal data, redrawn (deterministically) until no hinge argument
  ``d(a,p) - d(a,n) + m``, no semi-hard comparison ``d(a,n) - d(a,p)`` and no contrastive
  ``m - e`` lies within a gap of 0 for the requested metric and margin -- so a float32
  implementation cannot land on the other side of a kink than the float64 oracle, under
  the raw *and* the L2-normalised distances (the latter keep a normalising variant
  recognisable);
* *exact* batches: dyadic coordinates (multiples of 1/4 of small integers) whose squared
  distances are exact in float32 and float64 whichever way they are computed (a Gram
  matrix included), so exact ties (equal distances, ``d(a,n) = d(a,p)``, zero distances
  between duplicate rows) are ties on every backend.  They are used with the euclidean
  metrics only (a cosine normalises and breaks them by an ulp).

The labels are shuffled and use non-contiguous, partly negative ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .regimes import REGIMES, make_labels
from .variants import distances

__all__ = ["CatalogBatch", "catalog", "BATCH", "DIM"]

BATCH, DIM = 16, 3


@dataclass
class CatalogBatch:
    name: str
    labels: np.ndarray
    x: np.ndarray
    exact: bool = False
    #: "nan": the embeddings hold NaN; "zero_distance": duplicate or zero rows;
    #: "smooth": the finite-difference gradient check runs here; "large": big distances
    tags: set = field(default_factory=set)

    def __repr__(self) -> str:
        return self.name


def _ids(y: np.ndarray) -> np.ndarray:
    """Class ids made non-contiguous and partly negative (a loss must not assume 0..C-1)."""
    return (np.asarray(y, dtype=np.int64) * 7 - 20).astype(np.int64)


def _gap_ok(labels, x, metric, margin, exact, gap_rel=1e-4) -> bool:
    """No hinge argument, semi-hard comparison or contrastive hinge within the gap of 0
    (exact zeros allowed on exact batches), under the raw and normalised distances."""
    y = np.asarray(labels)
    same = y[:, None] == y[None, :]
    eye = np.eye(len(y), dtype=bool)
    pos, neg = same & ~eye, ~same
    valid = pos[:, :, None] & neg[:, None, :]
    # exact ties stay exact only on the raw dyadic rows: exact batches are not evidence for
    # (nor checked under) a normalising variant
    for flags in (frozenset(),) if exact else (frozenset(), frozenset({"normalize"})):
        for met in {metric, "euclidean"}:
            d = distances(x, met, flags)
            s = float(d.max()) if d.size else 0.0
            gap = gap_rel * max(1.0, s)
            diff = (d[:, :, None] - d[:, None, :])[valid]
            vals = [diff, diff + margin]
            if met == "euclidean":
                vals.append((margin - d)[neg])
            for v in vals:
                bad = np.abs(v) < gap
                if exact:
                    bad &= v != 0
                if np.any(bad):
                    return False
    return True


def _random(rng, labels, metric, margin, scale=1.0, tries=400):
    for _ in range(tries):
        x = rng.normal(size=(BATCH, DIM)) * scale
        # what the float32 implementation will see: the oracle reads the same rounded values
        x = x.astype(np.float32).astype(np.float64)
        if _gap_ok(labels, x, metric, margin, False):
            return x
    return None


def _exact_rows(rng, lo=-3, hi=3):
    return rng.integers(lo, hi + 1, size=(BATCH, DIM)).astype(np.float64) * 0.25


def catalog(metric: str = "euclidean", margin: float = 1.0, seed: int = 0):
    """The batches for this metric and margin: ``(batches, skipped)``, ``skipped`` naming
    the batches that could not be made safe (no kink within the gap) and why."""
    rng = np.random.default_rng(20251201 + seed)
    pk4 = np.repeat(np.arange(4), 4)
    out: list[CatalogBatch] = []
    skipped: list[str] = []
    exact_ok = metric in ("euclidean", "sqeuclidean")

    def random(name, labels, tags=(), scale=1.0):
        labels = _ids(labels)
        x = _random(rng, labels, metric, margin, scale)
        if x is None:
            skipped.append(f"{name}: no draw without a near-kink at margin {margin}")
        else:
            out.append(CatalogBatch(name, labels, x, False, set(tags)))

    def exact(name, labels, x, tags=()):
        labels = _ids(labels)
        if not exact_ok:
            skipped.append(f"{name}: exact ties are exact only for the euclidean metrics")
        elif not _gap_ok(labels, x, metric, margin, True):
            skipped.append(f"{name}: a near-kink at margin {margin}")
        else:
            out.append(CatalogBatch(name, labels, x, True, set(tags)))

    random("random_pk4x4", rng.permutation(pk4), tags={"smooth"})
    sing = rng.permutation(np.repeat(np.arange(7), [1, 1, 1, 2, 3, 4, 4]))
    random("singletons", sing)
    random("one_class", np.zeros(BATCH, dtype=np.int64))
    random("all_distinct", np.arange(BATCH))
    for regime in REGIMES:
        if regime in ("pk4", "all_distinct"):  # the batches above
            continue
        random(f"regime_{regime}", make_labels(regime, BATCH, seed=seed + 1))
    random("large_scale", rng.permutation(pk4), tags={"large"}, scale=64.0)
    # two classes far apart in direction, two overlapping: some valid terms are 0 and
    # some are not, also after L2-normalisation (tells "mean over l > 0" from "over all")
    centres = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [0, 0.4, 3.0]])
    lab = rng.permutation(pk4)
    for _ in range(400):
        x = (centres[lab] + rng.normal(size=(BATCH, DIM)) * 0.3).astype(np.float32).astype(np.float64)
        if _gap_ok(_ids(lab), x, metric, margin, False):
            out.append(CatalogBatch("mixed_easy_hard", _ids(lab), x))
            break
    else:
        skipped.append(f"mixed_easy_hard: no draw without a near-kink at margin {margin}")
    # exact dyadic batches: many exactly equal distances and d(a,n) = d(a,p) ties
    exact("ties_grid", rng.integers(0, 4, size=BATCH), _exact_rows(rng, -2, 2))
    exact("ties_pk", rng.permutation(pk4), _exact_rows(rng, -1, 1) * 2)
    base = _exact_rows(rng)[: BATCH // 2]
    dup = np.concatenate([base, base])
    lab = np.arange(BATCH // 2) % 3
    exact("duplicates_same_label", np.concatenate([lab, lab]), dup, tags={"zero_distance"})
    exact("duplicates_diff_label", np.concatenate([lab, (lab + 1) % 3]), dup, tags={"zero_distance"})
    exact("all_zero", rng.permutation(pk4), np.zeros((BATCH, DIM)), tags={"zero_distance"})
    # NaN: a row that enters terms, and a row in a batch with no term at all
    for name, labels in (("nan_row", rng.permutation(pk4)), ("nan_row_no_term", np.zeros(BATCH, np.int64))):
        x = rng.normal(size=(BATCH, DIM)).astype(np.float32).astype(np.float64)
        x[3] = np.nan
        out.append(CatalogBatch(name, _ids(labels), x, False, {"nan"}))
    return out, skipped
