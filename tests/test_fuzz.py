"""Differential fuzzing (issue 13): the library against the oracles on hypothesis-drawn
batches, for every loss, every CPU backend (JAX in its 64-bit *and* its default 32-bit
mode), float32 and float64.

What is drawn: label layouts from singletons to two classes
(:func:`triplet_ref.testing.strategies.label_vectors`, sparse and negative ids), labels
moved beyond ±2³¹ or to uint64; embeddings of every kind of
:func:`triplet_ref.testing.strategies.embeddings` (normal, grid ties, duplicate rows, zero
rows) times a scale from tiny to huge plus an optional offset; a NaN or ±inf at a random
place; margins from 0 to a few distances; every metric.  Each example runs every loss
with ``"mean"`` (and its info), ``"sum"`` and ``"none"``, and ``triplet_loss`` /
``contrastive_loss`` on rows taken from the batch.

How it compares (the tolerances of docs/semantics.md, "Tolerances", derived per example
from the data): a distance may differ from the oracle's by ``δ`` — for ``d²`` by
``E = 64·eps·s²`` (``s`` the data's largest |coordinate| after the offset), so
``sqrt(d² + E) − d + 16·eps·d`` for euclidean, ``E + 16·eps·d²`` for sqeuclidean,
``64·eps`` for cosine.  A loss term reads at most two distances, so a continuous
quantity (a term, batch-hard's max/min, a sum, a mean with a fixed denominator) may move
by ``2δ`` per term plus float rounding of the sums.  Discontinuities are where float
arithmetic may legitimately decide differently, and are counted as *explained*, never
silently passed:

* a hinge argument within ``2δ`` of 0 (``l > 0`` counts, batch_all's mean denominator):
  counts may differ by at most the number of such terms; batch_all's mean is then checked
  through its (continuous) sum;
* batch-hard indices: candidates within ``2δ`` of the max/min (ties broken differently);
* semi-hard: a negative within ``2δ`` of ``d(a, p)`` or of the fallback's largest
  distance: that term's chosen negative (and value) may differ; the other terms are
  compared exactly, and the mean through them.

Non-finite input must give NaN (every entry of ``"none"``) exactly.  The scales are
bounded so that ``s²·D`` neither overflows nor underflows the dtype (float32: 1e-15 to
1e15; float64: 1e-100 to 1e100): outside that range a Gram-based distance cannot be
computed (docs/semantics.md) and the comparison would test the dtype, not the loss.

Budget: a few examples per (backend, dtype) in the default run (derandomized, one
batch shape for JAX, whose eager mode compiles per shape); ``--runslow`` runs
``FUZZ_SLOW_EXAMPLES`` (default 1000) per (backend, dtype), random, all shapes.  Every
example runs all 8 losses, so that is the count per loss × backend × dtype.  The
module prints a summary (examples, comparisons, explained cases by kind) at the end.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import triplet_ref as tr
from triplet_ref import backends as B
from triplet_ref import oracles as O
from triplet_ref.testing.strategies import embeddings, label_vectors

DEFAULT_EXAMPLES = 3
SLOW_EXAMPLES = int(os.environ.get("FUZZ_SLOW_EXAMPLES", "1000"))
SIZES = (1, 2, 3, 4, 5, 7, 8, 12, 16, 24)
DIMS = (1, 2, 3, 5)
JAX_FAST_SHAPE = (8, 2)  # the loss catalog's shape: already compiled by the rest of the suite

STATS: Counter = Counter()


# ------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class FuzzCase:
    label: str
    name: str
    dtype: str
    x32: bool = False  # JAX in its default 32-bit mode (scoped jax.enable_x64(False))

    def __repr__(self) -> str:
        return f"{self.label}-{self.dtype}"


def _cases() -> list[FuzzCase]:
    out = []
    for name in B.available_backends():
        if name == "cupy":
            continue
        for dt in ("float32", "float64"):
            out.append(FuzzCase(name, name, dt))
        if name == "jax":
            out.append(FuzzCase("jax32", "jax", "float32", x32=True))  # no float64 in 32-bit mode
    return out


CASES = _cases()


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if STATS["examples"]:
        line = ", ".join(f"{k}={v}" for k, v in sorted(STATS.items()))
        print(f"\n[fuzz summary] {line}")
        path = os.environ.get("FUZZ_SUMMARY")
        if path:
            with open(path, "a") as fh:
                fh.write(line + "\n")


def _scoped_mode(case: FuzzCase):
    import contextlib

    if case.x32:
        import jax

        return jax.enable_x64(False)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------ examples
@dataclass
class Example:
    labels: np.ndarray
    x: np.ndarray  # float64 holding values exactly representable in the case's dtype
    margin: float  # in the metric's unit (triplet losses)
    margin_e: float  # in euclidean units (the contrastive losses: always euclidean)
    metric: str
    same: np.ndarray
    nonfinite: bool


@st.composite
def examples(draw, case: FuzzCase, slow: bool):
    if case.name == "jax" and not slow:
        b, dim = JAX_FAST_SHAPE
    else:
        b, dim = draw(st.sampled_from(SIZES)), draw(st.sampled_from(DIMS))
    y = draw(label_vectors(min_size=b, max_size=b))
    how = draw(st.sampled_from(["as_is", "as_is", "beyond_int32", "negative_huge", "uint64"]))
    if how == "beyond_int32":
        y = y * (2**33) + 7  # differ only above bit 32 when y does below
    elif how == "negative_huge":
        y = y - 2**62
    elif how == "uint64":
        y = (y - y.min()).astype(np.uint64) + np.uint64(2**63)
    x = draw(embeddings(b, dim))
    lo, hi = (-15, 15) if case.dtype == "float32" else (-100, 100)
    scale = 10.0 ** draw(st.sampled_from([0, 0, draw(st.integers(lo, hi))]))
    offset = draw(st.sampled_from([0.0, 0.0, 10.0]))
    x = (x - x.mean(axis=0) + offset) * scale
    with np.errstate(over="ignore", under="ignore"):
        x = x.astype(case.dtype).astype(np.float64)
    metric = draw(st.sampled_from(["euclidean", "sqeuclidean", "cosine"]))
    unit = {"euclidean": scale, "sqeuclidean": scale**2, "cosine": 1.0}[metric]
    factor = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0]))
    margin, margin_e = float(factor * unit), float(factor * scale)
    same_kind = draw(st.sampled_from(["bool", "int", "float"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    same = rng.random(b) < 0.5
    same = {"bool": same, "int": same.astype(np.int64) * rng.integers(1, 3, size=b),
            "float": rng.random(b).astype(case.dtype).astype(np.float64)}[same_kind]
    nonfinite = draw(st.integers(0, 9)) == 0
    if nonfinite:
        x = x.copy()
        x[rng.integers(b), rng.integers(dim)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return Example(y, x, margin, margin_e, metric, same, nonfinite)


# ------------------------------------------------------------------------------ bounds
def _delta(ex: Example, dtype: str, metric: str, d: np.ndarray) -> np.ndarray:
    """Per-pair bound ``δ_ij`` on a distance's error for this data (docs/semantics.md)."""
    eps = float(np.finfo(dtype).eps)
    s = float(np.max(np.abs(ex.x))) if ex.x.size else 0.0
    s = max(s, float(np.finfo(dtype).tiny))
    E = 64 * eps * s * s * max(1, ex.x.shape[1])
    dd = np.where(np.isfinite(d), d, 0.0)
    if metric == "cosine":
        return np.full(d.shape, 64 * eps)
    if metric == "sqeuclidean":
        return E + 16 * eps * dd
    return np.sqrt(dd * dd + E) - dd + 16 * eps * dd


def _arith(dtype: str, n_terms: int, magnitude: float) -> float:
    """Float rounding of sums of ``n_terms`` terms of size ``magnitude``."""
    eps = float(np.finfo(dtype).eps)
    return 8 * eps * (n_terms + 4) * magnitude


class Mismatch(AssertionError):
    pass


# the case dtype's eps and smallest subnormal, set per example: results are rounded to the
# dtype, and values in its subnormal range carry an absolute error of a few subnormal steps
_REL = {"eps": 0.0, "sub": 0.0}


def _close(got, want, tol, what):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    tol = tol + 16 * _REL["eps"] * np.abs(want) + 64 * _REL["sub"]  # evaluating and rounding the result
    bad = ~(np.abs(got - want) <= tol)
    if np.any(bad):
        idx = np.argwhere(bad)[:3].tolist() if got.ndim else []
        raise Mismatch(f"{what}: got {got if got.ndim == 0 else got[bad][:3]} want "
                       f"{want if want.ndim == 0 else want[bad][:3]} (tol {tol}) at {idx}")
    STATS["comparisons"] += int(np.size(got))


def _count_close(got, want, slack, what, kind):
    got, want = float(np.asarray(got)), float(np.asarray(want))
    if got == want:
        STATS["comparisons"] += 1
        return
    rel = 2**-22 * abs(want)  # JAX 32-bit mode: batch_all counts are float32
    if abs(got - want) <= slack + rel:
        STATS[f"explained_{kind}"] += 1
        return
    raise Mismatch(f"{what}: got {got} want {want} (explainable difference {slack})")


# ------------------------------------------------------------------------------ checks
def _np(case, x):
    return np.asarray(B.get_backend(case.name).to_numpy(x))


def _call(case, fn, *args, **kw):
    return fn(*args, backend=case.name, **kw)


def _check_nan(case, ex):
    xb = B.get_backend(case.name).from_numpy(ex.x, dtype=case.dtype)
    y = ex.labels
    for fn, kw in _ONLINE:
        m = ex.margin_e if fn is tr.batch_contrastive else ex.margin  # contrastive: euclidean units
        for red in ("mean", "sum", "none"):
            out = _np(case, fn(y, xb, m, reduction=red, **kw(ex)))
            if not np.isnan(out).all():
                raise Mismatch(f"{fn.__name__}{kw(ex)} {red}: non-finite input gave {out}")
        want = getattr(O, fn.__name__)(y, ex.x, m, **kw(ex))
        if not math.isnan(want):
            raise Mismatch(f"oracle {fn.__name__}: non-finite input gave {want}")
    xb2 = B.get_backend(case.name).from_numpy(np.roll(ex.x, 1, axis=0), dtype=case.dtype)
    for red in ("mean", "sum", "none"):
        for out in (tr.triplet_loss(xb, xb2, xb, ex.margin, reduction=red),
                    tr.contrastive_loss(xb, xb2, ex.same, ex.margin_e, reduction=red)):
            if not np.isnan(_np(case, out)).all():
                raise Mismatch(f"explicit {red}: non-finite input gave {_np(case, out)}")
    STATS["nonfinite_checks"] += 1


def _metric_kw(ex):
    return {"metric": ex.metric}


_ONLINE = [
    (tr.batch_all, lambda ex: {"metric": ex.metric}),
    (tr.batch_all, lambda ex: {"metric": ex.metric, "soft": True}),
    (tr.batch_hard, lambda ex: {"metric": ex.metric}),
    (tr.batch_hard, lambda ex: {"metric": ex.metric, "soft": True}),
    (tr.batch_semihard, lambda ex: {"metric": ex.metric}),
    (tr.batch_contrastive, lambda ex: {}),
]


def _check_batch_all(case, ex, xb, d, delta, dm, soft):
    y, m, kw = ex.labels, ex.margin, {"metric": ex.metric, "soft": soft}
    b = len(y)
    same = y[:, None] == y[None, :]
    pos = same & ~np.eye(b, dtype=bool)
    neg = ~same
    args = (d[:, :, None] - d[:, None, :] + m)  # (a, p, n)
    valid = pos[:, :, None] & neg[:, None, :]
    n_valid = int(valid.sum())
    ambiguous = int((valid & (np.abs(args) <= dm[:, :, None] + dm[:, None, :])).sum()) if not soft else 0
    dmax = float(np.max(d, initial=0.0)) + m
    term_tol = 2 * delta + _arith(case.dtype, b, dmax)
    want_sum = O.batch_all(y, ex.x, m, reduction="sum", **kw)
    got_sum = _np(case, tr.batch_all(y, xb, m, reduction="sum", **kw))
    _close(got_sum, want_sum, n_valid * term_tol + _arith(case.dtype, n_valid, dmax), "batch_all sum")
    got, info = tr.batch_all(y, xb, m, return_info=True, **kw)
    want, oinfo = O.batch_all(y, ex.x, m, return_info=True, **kw)
    _count_close(_np(case, info["num_valid"]), oinfo["num_valid"], 0, "batch_all num_valid", "none")
    _count_close(_np(case, info["num_positive"]), oinfo["num_positive"], ambiguous,
                 "batch_all num_positive", "hinge_boundary")
    if ambiguous == 0:
        _close(_np(case, got), want, term_tol + _arith(case.dtype, n_valid, dmax), "batch_all mean")
    else:
        STATS["explained_hinge_boundary_mean"] += 1  # checked through the sum above
    none = _np(case, tr.batch_all(y, xb, m, reduction="none", **kw))
    want_none = O.batch_all(y, ex.x, m, reduction="none", **kw)
    _close(none, want_none, b * term_tol + _arith(case.dtype, b, dmax), "batch_all none")


def _check_batch_hard(case, ex, xb, d, delta, dm, soft):
    y, m, kw = ex.labels, ex.margin, {"metric": ex.metric, "soft": soft}
    b = len(y)
    same = y[:, None] == y[None, :]
    pos = same & ~np.eye(b, dtype=bool)
    neg = ~same
    dmax = float(np.max(d, initial=0.0)) + m
    tol = 2 * delta + _arith(case.dtype, b, dmax)
    got, info = tr.batch_hard(y, xb, m, return_info=True, **kw)
    want, oinfo = O.batch_hard(y, ex.x, m, return_info=True, **kw)
    _close(_np(case, got), want, tol, "batch_hard mean")
    _close(_np(case, tr.batch_hard(y, xb, m, reduction="sum", **kw)),
           O.batch_hard(y, ex.x, m, reduction="sum", **kw), b * tol, "batch_hard sum")
    _close(_np(case, tr.batch_hard(y, xb, m, reduction="none", **kw)),
           O.batch_hard(y, ex.x, m, reduction="none", **kw), tol, "batch_hard none")
    valid = oinfo["valid"]
    np.testing.assert_array_equal(_np(case, info["valid"]), valid)
    _count_close(_np(case, info["num_valid"]), oinfo["num_valid"], 0, "batch_hard num_valid", "none")
    for key, mask, best in (("hardest_positive", pos, np.max), ("hardest_negative", neg, np.min)):
        g = _np(case, info[key])
        w = oinfo[key]
        for a in range(b):
            if g[a] == w[a]:
                continue
            cand = d[a][mask[a]]
            if valid[a] and mask[a][g[a]] and abs(d[a, g[a]] - d[a, w[a]]) <= dm[a, g[a]] + dm[a, w[a]]:
                STATS["explained_index_tie"] += 1
                continue
            raise Mismatch(f"batch_hard {key}[{a}]: got {g[a]} want {w[a]} (d {d[a, g[a]]} vs {d[a, w[a]]})")
    hp = np.where(valid, d[np.arange(b), np.maximum(oinfo["hardest_positive"], 0)], 0)
    hn = np.where(valid, d[np.arange(b), np.maximum(oinfo["hardest_negative"], 0)], 0)
    ar = np.arange(b)
    dhp = dm[ar, np.maximum(oinfo["hardest_positive"], 0)]
    dhn = dm[ar, np.maximum(oinfo["hardest_negative"], 0)]
    amb = int((valid & (np.abs(hp - hn + m) <= dhp + dhn)).sum()) if not soft else 0
    nv = max(int(valid.sum()), 1)
    _count_close(_np(case, info["fraction_positive"]) * nv, oinfo["fraction_positive"] * nv, amb + 1e-3,
                 "batch_hard fraction_positive", "hinge_boundary")
    for key in ("mean_hardest_positive_dist", "mean_hardest_negative_dist"):
        _close(_np(case, info[key]), oinfo[key], delta + _arith(case.dtype, b, dmax), f"batch_hard {key}")


def _check_semihard(case, ex, xb, d, delta, dm):
    y, m, kw = ex.labels, ex.margin, {"metric": ex.metric}
    b = len(y)
    same = y[:, None] == y[None, :]
    pos = same & ~np.eye(b, dtype=bool)
    neg = ~same
    term = pos & neg.any(axis=1)[:, None]
    # a term is ambiguous when a negative is within 2δ of d(a, p) (the strict rule) or of
    # the largest negative distance while the fallback is close to applying
    amb = np.zeros((b, b), dtype=bool)
    for a in range(b):
        dn, dmn = d[a][neg[a]], dm[a][neg[a]]
        if dn.size == 0:
            continue
        for p in np.nonzero(term[a])[0]:
            amb[a, p] = bool(np.any(np.abs(dn - d[a, p]) <= dmn + dm[a, p]))
    dmax = float(np.max(d, initial=0.0)) + m
    tol = 2 * delta + _arith(case.dtype, b, dmax)
    none = _np(case, tr.batch_semihard(y, xb, m, reduction="none", **kw))
    want_none = O.batch_semihard(y, ex.x, m, reduction="none", **kw)
    ok = ~amb
    _close(none[ok], want_none[ok], tol, "batch_semihard none")
    n_amb = int(amb.sum())
    STATS["explained_semihard_tie"] += n_amb
    got, info = tr.batch_semihard(y, xb, m, return_info=True, **kw)
    want, oinfo = O.batch_semihard(y, ex.x, m, return_info=True, **kw)
    nterms = int(term.sum())
    if n_amb == 0:
        _close(_np(case, got), want, tol + _arith(case.dtype, nterms, dmax), "batch_semihard mean")
        _close(_np(case, tr.batch_semihard(y, xb, m, reduction="sum", **kw)),
               O.batch_semihard(y, ex.x, m, reduction="sum", **kw),
               nterms * tol + _arith(case.dtype, nterms, dmax), "batch_semihard sum")
    else:  # the mean is the mean of the "none" entries, checked above where unambiguous
        _close(_np(case, got), none.sum() / max(nterms, 1), tol + _arith(case.dtype, nterms, dmax),
               "batch_semihard mean vs its none")
    _count_close(_np(case, info["num_valid"]), oinfo["num_valid"], 0, "batch_semihard num_valid", "none")
    g = _np(case, info["semihard_negative"])
    w = oinfo["semihard_negative"]
    diff = (g != w) & ~amb
    if np.any(diff):
        a, p = np.argwhere(diff)[0]
        # equal distances (an exact tie between two negatives) pick by index: only a
        # near-tie of the chosen negatives' distances explains a different index
        if not abs(d[a, g[a, p]] - d[a, w[a, p]]) <= dm[a, g[a, p]] + dm[a, w[a, p]]:
            raise Mismatch(f"batch_semihard semihard_negative[{a}, {p}]: got {g[a, p]} want {w[a, p]}")
        STATS["explained_index_tie"] += 1
    wi = np.maximum(w, 0)
    dw = d[np.arange(b)[:, None], wi]
    hinge_amb = int((term & ~amb & (np.abs(np.where(term, d - dw + m, 1))
                                      <= dm + dm[np.arange(b)[:, None], wi])).sum())
    _count_close(_np(case, info["fraction_positive"]) * max(nterms, 1), oinfo["fraction_positive"] * max(nterms, 1),
                 n_amb + hinge_amb + 1e-3, "batch_semihard fraction_positive", "hinge_boundary")
    _count_close(_np(case, info["fraction_semihard"]) * max(nterms, 1), oinfo["fraction_semihard"] * max(nterms, 1),
                 n_amb + 1e-3, "batch_semihard fraction_semihard", "semihard_tie")


def _check_contrastive(case, ex, xb, e, delta, dm):
    y, m = ex.labels, ex.margin_e
    b = len(y)
    same = y[:, None] == y[None, :]
    off = ~np.eye(b, dtype=bool)
    emax = float(np.max(e, initial=0.0)) + m
    tol = 2 * emax * delta + delta * delta + _arith(case.dtype, b, emax * emax)
    n = b * (b - 1)
    _close(_np(case, tr.batch_contrastive(y, xb, m, reduction="sum")), O.batch_contrastive(y, ex.x, m, reduction="sum"),
           max(n, 1) * tol, "batch_contrastive sum")
    _close(_np(case, tr.batch_contrastive(y, xb, m, reduction="none")),
           O.batch_contrastive(y, ex.x, m, reduction="none"), tol, "batch_contrastive none")
    got, info = tr.batch_contrastive(y, xb, m, return_info=True)
    want, oinfo = O.batch_contrastive(y, ex.x, m, return_info=True)
    _close(_np(case, got), want, tol, "batch_contrastive mean")
    _count_close(_np(case, info["num_valid"]), oinfo["num_valid"], 0, "batch_contrastive num_valid", "none")
    amb = int((off & ((same & (e <= dm)) | (~same & (np.abs(m - e) <= dm)))).sum())
    _count_close(_np(case, info["fraction_positive"]) * max(n, 1), oinfo["fraction_positive"] * max(n, 1),
                 amb + 1e-3 * max(1, n / 1000), "batch_contrastive fraction_positive", "hinge_boundary")


def _check_explicit(case, ex, xb, delta, delta_e):
    be = B.get_backend(case.name)
    b = ex.x.shape[0]
    rows = [ex.x, np.roll(ex.x, 1, axis=0), np.roll(ex.x[::-1], 2, axis=0)]
    nat = [be.from_numpy(r, dtype=case.dtype) for r in rows]
    reach = float(np.max(np.abs(ex.x), initial=0.0)) * 2 * math.sqrt(max(1, ex.x.shape[1]))
    dmax = {"euclidean": reach, "sqeuclidean": reach * reach, "cosine": 2.0}[ex.metric] + ex.margin
    tol = 2 * delta + _arith(case.dtype, b, dmax)
    for red in ("mean", "sum", "none"):
        for soft in (False, True):
            got = _np(case, tr.triplet_loss(*nat, ex.margin, metric=ex.metric, soft=soft, reduction=red))
            want = O.triplet_loss(*rows, ex.margin, metric=ex.metric, soft=soft, reduction=red)
            _close(got, want, tol * (b if red == "sum" else 1), f"triplet_loss {red} soft={soft}")
        emax = math.sqrt(max(np.sum((rows[0] - rows[1]) ** 2, axis=1).max(initial=0.0), 0.0)) + ex.margin_e
        ctol = (2 * emax * delta_e + delta_e**2 + _arith(case.dtype, b, emax * emax)) * max(1.0, float(np.max(np.abs(ex.same))) + 1)
        got = _np(case, tr.contrastive_loss(nat[0], nat[1], ex.same, ex.margin_e, reduction=red))
        want = O.contrastive_loss(rows[0], rows[1], ex.same, ex.margin_e, reduction=red)
        _close(got, want, ctol * (b if red == "sum" else 1), f"contrastive_loss {red} same={ex.same.dtype}")


def check_example(case: FuzzCase, ex: Example) -> None:
    STATS["examples"] += 1
    _REL["eps"] = float(np.finfo(case.dtype).eps)
    _REL["sub"] = float(np.finfo(case.dtype).smallest_subnormal)
    if ex.nonfinite:
        _check_nan(case, ex)
        return
    be = B.get_backend(case.name)
    xb = be.from_numpy(ex.x, dtype=case.dtype)
    d = O.pairwise_distances(ex.x, metric=ex.metric)
    e = d if ex.metric == "euclidean" else O.pairwise_distances(ex.x, metric="euclidean")
    dm = _delta(ex, case.dtype, ex.metric, d)
    dm_e = _delta(ex, case.dtype, "euclidean", e)
    delta, delta_e = float(dm.max()), float(dm_e.max())
    _check_batch_all(case, ex, xb, d, delta, dm, soft=False)
    _check_batch_all(case, ex, xb, d, delta, dm, soft=True)
    _check_batch_hard(case, ex, xb, d, delta, dm, soft=False)
    _check_batch_hard(case, ex, xb, d, delta, dm, soft=True)
    _check_semihard(case, ex, xb, d, delta, dm)
    _check_contrastive(case, ex, xb, e, delta_e, dm_e)
    _check_explicit(case, ex, xb, delta, delta_e)


# ------------------------------------------------------------------------------ the test
@pytest.mark.parametrize("case", CASES, ids=[repr(c) for c in CASES])
def test_fuzz_against_oracle(case, request):
    slow = request.config.getoption("--runslow")
    if case.x32 and not slow:
        # a fresh dtype mode compiles every JAX operation anew (~15 s on 2 cores); the
        # default run checks 32-bit mode in tests/test_fresh_process.py instead
        pytest.skip("JAX 32-bit mode is fuzzed with --runslow")
    n = SLOW_EXAMPLES if slow else DEFAULT_EXAMPLES

    @settings(max_examples=n, deadline=None, derandomize=not slow, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(ex=examples(case, slow))
    def run(ex):
        with _scoped_mode(case):
            try:
                check_example(case, ex)
            except Mismatch:
                STATS["unexplained"] += 1
                raise

    run()
