"""Named input batches for the losses' conformance suite (a helper module, not tests).

Every batch is a NumPy float64 array plus NumPy integer labels; tests move it to a
backend with ``case.asarray(x, dtype)``.  Two kinds:

* *generic* batches: random normal data, checked here to have no (near-)ties that a
  float32 computation could legitimately break differently from the float64 oracle;
* *exact* batches: coordinates on a grid of multiples of 1/4 whose column sums are
  divisible by B (or B a power of two), so the centred Gram matrix — and with it every
  squared distance — is exact in float32 as in float64.  Equal distances are then equal
  on every backend, and tie-breaking to the smallest index is tested exactly.

:func:`loss_cases` yields ``(batch, metric)`` pairs for which every index the losses
report is well defined in both float32 and float64: exact batches with the euclidean
metrics (and cosine when it has no ties), generic batches with every metric that passes
the gap check.  The gap check is part of the catalog, so a new batch that is not safe
fails at import instead of giving a flaky test.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from triplet_ref import oracles as O

METRICS = ("euclidean", "sqeuclidean", "cosine")
MARGINS = (1.0, 0.3)
# integer label dtypes cycled over the batches (signed ones where labels are negative)
LABEL_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "uint16", "int64", "int32")


@dataclass
class Batch:
    name: str
    labels: np.ndarray
    x: np.ndarray
    exact: bool
    # metrics on which exact ties are exact in every dtype (besides the euclidean ones)
    exact_metrics: tuple = ("euclidean", "sqeuclidean")
    tags: set = field(default_factory=set)

    def __repr__(self) -> str:
        return self.name


def _exact(ints, scale=0.25) -> np.ndarray:
    a = np.asarray(ints, dtype=np.int64)
    if a.ndim == 1:
        a = a[:, None]
    b = a.shape[0]
    # the library centres the rows: the column means must be exact dyadic numbers
    assert (b & (b - 1)) == 0 or np.all(a.sum(axis=0) % b == 0), "column sums must divide by B"
    return a.astype(np.float64) * scale


def _labels(values, i) -> np.ndarray:
    values = np.asarray(values)
    dt = LABEL_DTYPES[i % len(LABEL_DTYPES)]
    if values.min() < 0 and dt.startswith("u"):
        dt = "int16"
    return values.astype(dt)


def _batches() -> list[Batch]:
    rng = np.random.default_rng(20240611)
    out: list[tuple] = []

    def generic(name, labels, b, dim, tags=()):
        # drawn (deterministically) until no near-tie under the euclidean metric
        for _ in range(100):
            x = rng.normal(size=(b, dim))
            if safe(Batch(name, np.asarray(labels), x, False), "euclidean"):
                break
        else:  # pragma: no cover
            raise AssertionError(f"no tie-free draw for {name}")
        out.append((name, labels, x, False, ("euclidean", "sqeuclidean"), set(tags)))

    def exact(name, labels, ints, scale=0.25, exact_metrics=("euclidean", "sqeuclidean"), tags=()):
        out.append((name, labels, _exact(ints, scale), True, exact_metrics, set(tags)))

    generic("random_pk_3x4", np.repeat(np.arange(3), 4), 12, 5, tags={"pk"})
    generic("random_pk_4x2", np.repeat(np.array([3, 1, 0, 2]), 2), 8, 2, tags={"pk"})
    generic("random_pk_2x2", np.array([7, 7, 2, 2]), 4, 3, tags={"pk"})
    generic("unequal_classes", rng.permutation(np.repeat(np.arange(4), [1, 2, 3, 5])), 11, 4)
    generic("singleton_classes", np.array([5, 5, 9, 2, 2, 2, 7]), 7, 3)
    generic("all_equal_labels", np.full(6, 3), 6, 3)
    generic("all_distinct_labels", np.array([-3, -1, 1, 3, 5, 7]), 6, 3)
    generic("b1", np.array([0]), 1, 3)
    generic("b2_same", np.array([1, 1]), 2, 3)
    generic("b2_diff", np.array([0, 1]), 2, 3)
    generic("b3", np.array([0, 0, 1]), 3, 2)
    # duplicate rows with the same label and with different labels (exact: equal
    # distances must be equal on every backend)
    base = rng.integers(-4, 5, size=(4, 2))
    exact("duplicate_rows_same_label", np.array([0, 0, 1, 1, 0, 0, 1, 1]),
          np.concatenate([base, base]))
    exact("duplicate_rows_diff_label", np.array([0, 1, 0, 1, 1, 0, 2, 2]),
          np.concatenate([base, base]))
    exact("all_zero", np.array([0, 0, 1, 1, 2, 2, 3, 3]), np.zeros((8, 2), dtype=np.int64),
          exact_metrics=METRICS)
    # all-easy: rows identical within a class, classes >= 2 apart (margins <= 1)
    exact("all_easy", np.array([0, 0, 1, 1, 2, 2, 3, 3]),
          np.repeat(np.array([[0, 0], [8, 0], [0, 8], [8, 8]]), 2, axis=0), tags={"easy"})
    # no semi-hard negative for anchor 0 / positive 1: both negatives are closer than it
    exact("no_semihard", np.array([0, 0, 1, 1]), np.array([0, 8, 2, 3]), tags={"fallback"})
    exact("fallback_mixed", np.array([0, 0, 0, 1, 1, 2, 2, 2]),
          np.array([[0, 0], [6, 0], [0, 5], [1, 1], [2, 0], [-1, 0], [3, 3], [0, 2]]),
          tags={"fallback"})
    # dyadic grids: many exactly equal distances
    exact("ties_grid_8", rng.integers(0, 3, size=8), rng.integers(-2, 3, size=(8, 2)))
    exact("ties_grid_16", rng.integers(0, 4, size=16), rng.integers(-3, 4, size=(16, 3)))
    exact("ties_pk_2x4", np.repeat(np.arange(2), 4), rng.integers(-2, 3, size=(8, 2)), tags={"pk"})
    exact("ties_b3", np.array([0, 0, 1]), np.array([[0], [1], [-1]]), scale=1.0)
    return [Batch(n, _labels(lab, i), x, ex, em, tags) for i, (n, lab, x, ex, em, tags) in enumerate(out)]


def _row_gaps_ok(d: np.ndarray, allow_equal: bool, tol: float) -> bool:
    """No two distances in an anchor's row (its diagonal excluded) closer than ``tol``
    without being equal (equal allowed only when ``allow_equal``)."""
    b = d.shape[0]
    for a in range(b):
        v = np.sort(np.delete(d[a], a))
        diff = np.diff(v)
        bad = (diff < tol) & ((diff != 0) | (not allow_equal))
        if np.any(bad):
            return False
    return True


def _margin_gaps_ok(d: np.ndarray, labels: np.ndarray, allow_equal: bool, tol: float) -> bool:
    """``d(a, p) + m - d(a, n)`` and ``m - d(i, j)`` not within ``tol`` of 0 (unless 0
    exactly, when ``allow_equal``): the hinge boundary decides the counts."""
    same = labels[:, None] == labels[None, :]
    for m in MARGINS:
        for a in range(d.shape[0]):
            for p in range(d.shape[0]):
                if p == a:
                    continue
                vals = [d[a, p] + m - d[a, n] for n in range(d.shape[0]) if not same[a, n]] if same[a, p] else []
                vals.append(m - d[a, p])
                for v in vals:
                    if abs(v) < tol and not (allow_equal and v == 0):
                        return False
    return True


def safe(batch: Batch, metric: str) -> bool:
    d = O.pairwise_distances(batch.x, metric=metric)
    exact = batch.exact and metric in batch.exact_metrics
    tol = 1e-5 if exact else 1e-4
    ok = _row_gaps_ok(d, exact, tol) and _margin_gaps_ok(d, batch.labels, exact, tol)
    if metric != "euclidean":
        # contrastive always uses the euclidean distance
        e = O.pairwise_distances(batch.x, metric="euclidean")
        ok = ok and _margin_gaps_ok(e, batch.labels, exact, tol)
    return ok


BATCHES = _batches()
BY_NAME = {b.name: b for b in BATCHES}


def loss_cases() -> list[tuple[Batch, str]]:
    """Every (batch, metric) pair whose indices and counts are well defined in float32."""
    cases = []
    for b in BATCHES:
        for metric in METRICS:
            if safe(b, metric):
                cases.append((b, metric))
    return cases


LOSS_CASES = loss_cases()

# JAX compiles every eager operation per input shape (about 0.1 s each on a small CPU, a
# few seconds per loss and shape): the default run sweeps it over the batches of one
# shape only, the whole catalog with --runslow
JAX_FAST_SHAPE = (8, 2)

# every batch must be usable at least with the euclidean metric: a batch that is not is a
# catalog bug (pick another seed or make it exact), not something to skip silently
_unsafe = [b.name for b in BATCHES if not safe(b, "euclidean")]
assert not _unsafe, f"catalog batches with near-ties under euclidean: {_unsafe}"
