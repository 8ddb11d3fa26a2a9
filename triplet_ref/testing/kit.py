"""``check_loss``: judge any batch triplet-loss implementation against the contract.

See ``docs/testing-your-loss.md``.  The kit runs the implementation on the catalog of
:mod:`triplet_ref.testing.catalog` in float32 and float64, compares every value with the
float64 oracle of :mod:`triplet_ref.oracles` within the measured tolerances of
``docs/semantics.md``, checks NaN handling and (on an autograd backend) that gradients
are finite everywhere and equal the finite differences of the definition the values
match.  Where values differ, it searches the known variants of
:mod:`triplet_ref.testing.variants` for the smallest set that reproduces *every* value of
the implementation, and names it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import oracles
from .catalog import CatalogBatch, catalog
from .variants import BEHAVIOURS, LOSSES, VARIANTS, combinations, evaluate, flags_for

__all__ = ["check_loss", "assert_loss_conforms", "Report", "Finding", "variant_name"]

# loss-value tolerance on unit-scale data (tests/conftest.py ``tolerance``, docs/semantics.md)
_BASE = {"float32": 2e-4, "float64": 1e-9}
_EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def variant_name(key: str) -> str:
    """The printed name of a variant or behaviour key (``"no_positive_counted"`` ->
    ``"counts anchors without a positive"``)."""
    return (VARIANTS.get(key) or BEHAVIOURS[key])[0]


@dataclass
class Finding:
    """One difference: the batch (``case``), the dtype, what the contract gives
    (``expected``), what the implementation gave (``got``), what differs (``what``) and
    the variants or behaviour that explain it (``variants``, names; empty when none does)."""

    case: str
    dtype: str
    expected: Any
    got: Any
    what: str
    variants: tuple = ()

    def __str__(self) -> str:
        def fmt(v):
            return f"{v:.9g}" if isinstance(v, float) else str(v)

        s = f"{self.case} [{self.dtype}]: expected {fmt(self.expected)}, got {fmt(self.got)} ({self.what})"
        if self.variants:
            s += " -- " + " + ".join(self.variants)
        return s


@dataclass
class Report:
    """What :func:`check_loss` found.

    ``ok`` is True when no finding was made.  ``variants`` names the known variants and
    behaviours the evidence shows (``variant_keys`` their keys in
    :data:`triplet_ref.testing.variants.VARIANTS` / ``BEHAVIOURS``); ``findings`` lists
    every differing case; ``ambiguous`` holds other variant sets that explain the values
    equally well (the catalog cannot tell them apart); ``skipped`` and ``notes`` say what
    was not checked and why.
    """

    loss: str
    backend: str
    settings: dict
    findings: list = field(default_factory=list)
    variant_keys: tuple = ()
    ambiguous: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    runs: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def variants(self) -> tuple:
        return tuple(variant_name(k) for k in self.variant_keys)

    def __bool__(self) -> bool:  # pragma: no cover - convenience
        return self.ok

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        head = f"check_loss({self.loss}, backend={self.backend!r}, {opts}): "
        if self.ok:
            lines = [head + f"conforms ({self.runs} runs, no finding)"]
        else:
            lines = [head + f"DOES NOT CONFORM: {len(self.findings)} finding(s) in {self.runs} runs"]
        if self.variant_keys:
            lines.append("variants shown by the evidence:")
            for k in self.variant_keys:
                name, what = VARIANTS.get(k) or BEHAVIOURS[k]
                lines.append(f"  * {name}: {what}")
        for alt in self.ambiguous:
            lines.append("  (equally consistent with: " + " + ".join(variant_name(k) for k in alt) + ")")
        if self.findings:
            lines.append("findings:")
            for f in self.findings[:15]:
                lines.append(f"  - {f}")
            if len(self.findings) > 15:
                lines.append(f"  ... and {len(self.findings) - 15} more")
        for s in self.skipped:
            lines.append(f"skipped: {s}")
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# tolerances (docs/semantics.md, "Tolerances")
# --------------------------------------------------------------------------------------
def _tolerance(loss: str, x: np.ndarray, metric: str, margin: float, dtype: str) -> tuple[float, float]:
    """``(atol, rtol)`` for a loss value on the batch ``x`` in ``dtype``.

    The measured bound on a Gram-matrix distance is ``E = 64 eps s^2`` on ``d^2`` (``s``
    the data's diameter), i.e. ``|d - d_oracle| <= sqrt(d^2 + E) - d + 16 eps d``
    (euclidean; ``sqrt(eps) s`` for rows on top of each other), ``E + 16 eps d``
    (sqeuclidean), ``64 eps`` (cosine).  A hinge reads two distances, so a triplet loss
    moves by at most twice the worst distance error; a contrastive term ``e^2`` by
    ``2 e`` times it.  Added to the loss tolerance of unit-scale data (float32 2e-4,
    float64 1e-9, absolute and relative).
    """
    eps, base = _EPS[dtype], _BASE[dtype]
    met = "euclidean" if loss == "batch_contrastive" else metric
    off = ~np.eye(x.shape[0], dtype=bool)
    from .variants import distances

    d = distances(x, met)[off] if x.shape[0] > 1 else np.zeros(1)
    s = float(d.max()) if d.size else 0.0
    if met == "euclidean":
        e2 = 64 * eps * s * s
        err = float(np.max(np.sqrt(d * d + e2) - d + 16 * eps * d))
    elif met == "sqeuclidean":
        err = 64 * eps * s + 16 * eps * s
    else:
        err = 64 * eps
    k = 2.0 * max(s, margin, 1.0) if loss == "batch_contrastive" else 2.0
    return base + 2.0 * k * err, base


def _close(got: float, want: float, tol: tuple[float, float]) -> bool:
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    if math.isinf(want) or math.isinf(got):
        return got == want
    atol, rtol = tol
    return abs(got - want) <= atol + rtol * abs(want)


# --------------------------------------------------------------------------------------
# the truth
# --------------------------------------------------------------------------------------
def _oracle(loss, labels, x, margin, metric, soft) -> float:
    f = getattr(oracles, loss)
    if loss == "batch_contrastive":
        return float(f(labels, x, margin))
    if loss == "batch_semihard":
        return float(f(labels, x, margin, metric=metric))
    return float(f(labels, x, margin, metric=metric, soft=soft))


def _fd_grad(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp_) - f(xm)) / (2 * h)
    return g


class _NotScalar(Exception):
    pass


def _scalar(be, out) -> float:
    try:
        a = be.to_numpy(out)
    except Exception:
        a = out
    a = np.asarray(a, dtype=np.float64)
    if a.size != 1:
        raise _NotScalar(f"the result has shape {a.shape}, not a scalar")
    return float(a.reshape(()))


def _fmt_err(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"raised {type(exc).__name__}: {msg[0][:160] if msg else ''}"


# --------------------------------------------------------------------------------------
# check_loss
# --------------------------------------------------------------------------------------
def check_loss(fn: Callable, loss: str, *, backend: Any = "numpy", margin: float = 1.0,
               metric: str = "euclidean", soft: bool = False, grad: bool = True,
               dtypes: tuple = ("float32", "float64"), device: Any = None, seed: int = 0,
               max_variants: int = 4) -> Report:
    """Run ``fn`` on the conformance catalog and compare it with the contract.

    Args:
      fn: ``fn(labels, embeddings) -> scalar``, the loss with ``reduction="mean"``, called
        with arrays of ``backend`` (labels int64 ``(B,)``, embeddings ``(B, D)`` of each
        dtype); it may return a 0-d array, a 1-element array or a Python float.  Adapt
        argument order and options with a lambda.
      loss: which definition ``fn`` implements: ``"batch_all"``, ``"batch_hard"``,
        ``"batch_semihard"`` or ``"batch_contrastive"``.
      backend: a backend name (``"numpy"``, ``"torch"``, ``"jax"``, ...) or module: the
        arrays ``fn`` receives.
      margin, metric, soft: the parameters ``fn`` was built with (``soft`` for batch_all
        and batch_hard only; batch_contrastive is always euclidean).
      grad: on an autograd backend (torch, jax), check that gradients are finite on every
        batch and equal the central finite differences of the definition the values match.
      dtypes: the floating dtypes to run (float64 is skipped, with a note, where the
        backend cannot hold it, e.g. JAX without ``jax_enable_x64``).
      device: where to put the arrays (the backend's default when None).
      seed: seeds the random batches.
      max_variants: the largest number of variant flags combined when explaining values.

    Returns:
      a :class:`Report` (``report.ok``, ``report.variants``, ``report.findings``,
      ``str(report)``).
    """
    from ..backends import get_backend

    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
    if metric not in oracles.METRICS:
        raise ValueError(f"metric: expected one of {oracles.METRICS}, got {metric!r}")
    if loss == "batch_contrastive" and metric != "euclidean":
        raise ValueError("metric: batch_contrastive is always euclidean")
    if soft and loss not in ("batch_all", "batch_hard"):
        raise ValueError(f"soft: only batch_all and batch_hard have a soft margin, not {loss}")
    if not callable(fn):
        raise TypeError(f"fn: expected a callable fn(labels, embeddings), got {type(fn).__name__}")
    margin = float(margin)
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin: expected a finite number >= 0, got {margin}")
    for dt in dtypes:
        if dt not in _BASE:
            raise ValueError(f"dtypes: expected float32 and/or float64, got {dt!r}")
    be = get_backend(backend)
    settings = {"margin": margin, "metric": metric, "soft": soft}
    report = Report(loss, be.name, settings)
    batches, skipped = catalog(metric, margin, seed)
    report.skipped.extend(skipped)

    run_dtypes = []
    for dt in dtypes:
        probe = be.from_numpy(np.zeros((1, 1)), dtype=dt, device=device)
        if str(probe.dtype).split(".")[-1] != dt:
            report.notes.append(f"{dt} not checked: {be.name} gives {probe.dtype} for it "
                                "(JAX: enable jax_enable_x64)")
        else:
            run_dtypes.append(dt)

    # ---- values --------------------------------------------------------------------
    values: dict = {}          # (batch name, dtype) -> (batch, x64, got, want, tol)
    for b in batches:
        y_native = be.from_numpy(b.labels, device=device)
        for dt in run_dtypes:
            x64 = b.x.astype(dt).astype(np.float64)
            want = _oracle(loss, b.labels, x64, margin, metric, soft)
            tol = _tolerance(loss, np.nan_to_num(x64), metric, margin, dt)
            report.runs += 1
            try:
                # NaN and overflow are what some batches test: the report says what happened
                with np.errstate(all="ignore"):
                    got = _scalar(be, fn(y_native, be.from_numpy(b.x, dtype=dt, device=device)))
            except _NotScalar as exc:
                report.findings.append(Finding(b.name, dt, want, "-", str(exc)))
                continue
            except Exception as exc:  # the implementation failed on this batch
                report.findings.append(Finding(b.name, dt, want, "-", _fmt_err(exc)))
                continue
            values[(b.name, dt)] = (b, x64, got, want, tol)

    behaviour: set = set()
    value_cases = []
    for key, (b, x64, got, want, tol) in values.items():
        if "nan" in b.tags:
            if not math.isnan(got):
                k = "nan_not_propagated" if b.name == "nan_row" else "nan_outside_terms_ignored"
                behaviour.add(k)
                report.findings.append(Finding(b.name, key[1], want, got, "a finite loss from NaN embeddings",
                                               (variant_name(k),)))
            continue
        if soft and math.isinf(got) and math.isfinite(want):
            behaviour.add("softplus_overflow")
            report.findings.append(Finding(b.name, key[1], want, got, "the soft margin overflowed",
                                           (variant_name("softplus_overflow"),)))
            continue
        value_cases.append(key)

    differing = [k for k in value_cases if not _close(values[k][2], values[k][3], values[k][4])]
    explained: frozenset | None = frozenset() if not differing else None
    if differing:
        explained = _explain(loss, metric, soft, margin, values, value_cases, max_variants, report)
    names = tuple(variant_name(k) for k in sorted(explained or (), key=_order))
    for k in differing:
        b, x64, got, want, tol = values[k]
        what = f"|diff| {abs(got - want):.3g} > tol {tol[0] + tol[1] * abs(want):.3g}" \
            if math.isfinite(got) and math.isfinite(want) else "NaN/inf differs"
        report.findings.append(Finding(k[0], k[1], want, got, what, names))

    # ---- gradients -----------------------------------------------------------------
    if grad:
        _check_gradients(fn, loss, be, device, batches, run_dtypes, values, margin, metric, soft,
                         explained, behaviour, report)

    keys = sorted(explained or (), key=_order) + sorted(behaviour, key=_order)
    report.variant_keys = tuple(keys)
    report.findings.sort(key=lambda f: (f.case, f.dtype))
    return report


def _order(key: str) -> int:
    allk = list(VARIANTS) + list(BEHAVIOURS)
    return allk.index(key)


def _explain(loss, metric, soft, margin, values, cases, max_variants, report) -> frozenset | None:
    """The smallest set of variant flags whose definition matches every value; None when
    no combination up to ``max_variants`` flags does (ties reported as ambiguous)."""
    flags = flags_for(loss, metric, soft)
    found: list[frozenset] = []
    cache: dict = {}
    best = (None, -1)
    for combo in combinations(flags, max_variants):
        if not combo:
            continue
        if found and len(combo) > len(found[0]):
            break
        ok, matched = True, 0
        for key in cases:
            b, x64, got, want, tol = values[key]
            if "normalize" in combo and b.exact:
                continue  # exact ties are not exact once normalised: no evidence either way
            ck = (combo, key)
            if ck not in cache:
                cache[ck] = evaluate(loss, b.labels, x64, margin, metric=metric, soft=soft, flags=combo)
            if _close(got, cache[ck], tol):
                matched += 1
            else:
                ok = False
                break
        if ok:
            found.append(combo)
        elif matched > best[1]:
            best = (combo, matched)
    if not found:
        report.notes.append("no combination of up to "
                            f"{max_variants} known variants reproduces every value: the difference "
                            "is not one of the known variants (see the findings)")
        return None
    found.sort(key=lambda c: sorted(c, key=_order))
    report.ambiguous.extend(sorted(c, key=_order) for c in found[1:])
    return found[0]


def _check_gradients(fn, loss, be, device, batches, dtypes, values, margin, metric, soft,
                     explained, behaviour, report):
    probe = be.from_numpy(np.ones((2, 2)), dtype=dtypes[0] if dtypes else "float32", device=device)
    try:
        be.value_and_grad(lambda z: (z * z).sum(), probe)
    except NotImplementedError:
        report.notes.append(f"gradients not checked: {be.name} has no automatic differentiation")
        return
    nonfinite = []
    for b in batches:
        if "nan" in b.tags:
            continue
        y_native = be.from_numpy(b.labels, device=device)
        for dt in dtypes:
            key = (b.name, dt)
            if key not in values or (soft and math.isinf(values[key][2])):
                continue
            try:
                _, g = be.value_and_grad(lambda z: fn(y_native, z), be.from_numpy(b.x, dtype=dt, device=device))
            except Exception as exc:
                report.findings.append(Finding(b.name, dt, "a gradient", "-", "gradient " + _fmt_err(exc)))
                continue
            g = np.asarray(g, dtype=np.float64)
            if not np.all(np.isfinite(g)):
                nonfinite.append((b, dt, int(np.count_nonzero(~np.isfinite(g)))))
    if nonfinite:
        zero_dist = [b for b, _, _ in nonfinite if _has_zero_distance(b)]
        names = (variant_name("nan_grad_zero_distance"),) if zero_dist else ()
        if zero_dist:
            behaviour.add("nan_grad_zero_distance")
        for b, dt, n in nonfinite:
            report.findings.append(Finding(b.name, dt, "finite gradient", f"{n} non-finite entries",
                                           "non-finite gradient", names))
    # finite differences of the definition the values match, on the smooth batch: float64
    # (rtol 1e-5, atol 1e-7), or float32 where the backend has no float64 (rtol 1e-3, atol 1e-4)
    if not dtypes:
        return
    fd_dtype = "float64" if "float64" in dtypes else "float32"
    fd_tol = dict(rtol=1e-5, atol=1e-7) if fd_dtype == "float64" else dict(rtol=1e-3, atol=1e-4)
    if explained is None:
        report.notes.append("gradient vs finite differences not checked: the values match no known definition")
        return
    smooth = next(b for b in batches if "smooth" in b.tags) if any("smooth" in b.tags for b in batches) else None
    if smooth is None:
        return
    if explained:
        def ref(z):
            return evaluate(loss, smooth.labels, z, margin, metric=metric, soft=soft, flags=explained)
        what = "finite differences of the matched variant"
    else:
        def ref(z):
            return _oracle(loss, smooth.labels, z, margin, metric, soft)
        what = "finite differences of the oracle"
    y_native = be.from_numpy(smooth.labels, device=device)
    try:
        _, g = be.value_and_grad(lambda z: fn(y_native, z), be.from_numpy(smooth.x, dtype=fd_dtype, device=device))
    except Exception:
        return  # already reported above
    g = np.asarray(g, dtype=np.float64)
    if not np.all(np.isfinite(g)):
        return  # reported above
    want = _fd_grad(ref, smooth.x.astype(fd_dtype).astype(np.float64))
    if not np.allclose(g, want, **fd_tol):
        worst = float(np.max(np.abs(g - want)))
        behaviour.add("grad_mismatch")
        report.findings.append(Finding(smooth.name, fd_dtype, what, "autograd gradient",
                                       f"max |diff| {worst:.3g} > rtol {fd_tol['rtol']:g}, atol {fd_tol['atol']:g}",
                                       (variant_name("grad_mismatch"),)))


def _has_zero_distance(b: CatalogBatch) -> bool:
    from .variants import distances

    d = distances(b.x, "sqeuclidean")
    off = ~np.eye(b.x.shape[0], dtype=bool)
    return bool(np.any(d[off] == 0))


def assert_loss_conforms(fn: Callable, loss: str, **kwargs) -> Report:
    """:func:`check_loss`, raising ``AssertionError`` with the readable report when it
    finds anything; returns the report otherwise.  For use in any test suite."""
    report = check_loss(fn, loss, **kwargs)
    if not report.ok:
        raise AssertionError("\n" + str(report))
    return report
