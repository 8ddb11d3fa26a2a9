"""Shared helpers of the losses' tests: the loss table and oracle comparisons."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import triplet_ref as tr
from triplet_ref import oracles as O
from triplet_ref.backends import backend_of

from conftest import tolerance

REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class OnlineLoss:
    """One online loss variant: the library function, its oracle and fixed kwargs."""

    id: str
    fn: Callable
    oracle: Callable
    kwargs: tuple = ()
    has_metric: bool = True

    def call(self, labels, x, margin, metric="euclidean", **kw):
        kw = {**dict(self.kwargs), **kw}
        if self.has_metric:
            kw["metric"] = metric
        return self.fn(labels, x, margin, **kw)

    def truth(self, labels, x, margin, metric="euclidean", **kw):
        kw = {**dict(self.kwargs), **kw}
        if self.has_metric:
            kw["metric"] = metric
        return self.oracle(labels, x, margin, **kw)

    def __repr__(self) -> str:
        return self.id


ONLINE = [
    OnlineLoss("batch_all", tr.batch_all, O.batch_all),
    OnlineLoss("batch_all_soft", tr.batch_all, O.batch_all, (("soft", True),)),
    OnlineLoss("batch_hard", tr.batch_hard, O.batch_hard),
    OnlineLoss("batch_hard_soft", tr.batch_hard, O.batch_hard, (("soft", True),)),
    OnlineLoss("batch_semihard", tr.batch_semihard, O.batch_semihard),
    OnlineLoss("batch_contrastive", tr.batch_contrastive, O.batch_contrastive, has_metric=False),
]
ONLINE_BY_ID = {v.id: v for v in ONLINE}

# the shape of the "none" result, from B
NONE_SHAPE = {
    "batch_all": lambda b: (b, b), "batch_all_soft": lambda b: (b, b),
    "batch_hard": lambda b: (b,), "batch_hard_soft": lambda b: (b,),
    "batch_semihard": lambda b: (b, b), "batch_contrastive": lambda b: (b, b),
}


def check_array_result(case, out, ref_input, shape) -> np.ndarray:
    """The result is an array of ``case``'s framework, of the input's dtype and
    ``shape``; returns it as NumPy float64."""
    assert backend_of(out) is case.backend, f"result of {type(out)} is not a {case.name} array"
    assert out.dtype == ref_input.dtype, f"dtype {out.dtype} != input dtype {ref_input.dtype}"
    assert tuple(out.shape) == tuple(shape), f"shape {tuple(out.shape)} != {tuple(shape)}"
    return np.asarray(case.to_numpy(out), dtype=np.float64)


def assert_close(got, want, dtype, what=""):
    tol = tolerance(dtype)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                               err_msg=what, **tol)


def check_info(case, info, oinfo, dtype, x_native):
    """Every info key of the oracle, with the library's value: indices, bools and
    counts exactly, fractions and mean distances within tolerance."""
    assert set(info) == set(oinfo), f"info keys {sorted(info)} != oracle {sorted(oinfo)}"
    for key, want in oinfo.items():
        got = info[key]
        assert backend_of(got) is case.backend, f"info[{key!r}] is a {type(got)}"
        g = np.asarray(case.to_numpy(got))
        if isinstance(want, np.ndarray) and want.dtype == bool:
            assert g.dtype == bool, f"info[{key!r}] dtype {g.dtype}"
            np.testing.assert_array_equal(g, want, err_msg=key)
        elif isinstance(want, np.ndarray) or isinstance(want, int):
            assert np.issubdtype(g.dtype, np.integer), f"info[{key!r}] dtype {g.dtype} is not integer"
            np.testing.assert_array_equal(g, np.asarray(want), err_msg=key)
        else:
            assert got.dtype == x_native.dtype, f"info[{key!r}] dtype {got.dtype}"
            assert g.shape == ()
            assert_close(g, want, dtype, key)


def check_online(case, loss: OnlineLoss, batch, metric, margin, dtype):
    """Every reduction, and the info, of ``loss`` on ``batch`` against the oracle."""
    x = case.asarray(batch.x, dtype)
    y = batch.labels
    b = batch.x.shape[0]
    for red in REDUCTIONS:
        got = loss.call(y, x, margin, metric, reduction=red)
        want = loss.truth(y, batch.x, margin, metric, reduction=red)
        shape = NONE_SHAPE[loss.id](b) if red == "none" else ()
        g = check_array_result(case, got, x, shape)
        assert_close(g, want, dtype, f"{loss.id} reduction={red}")
    got, info = loss.call(y, x, margin, metric, reduction="mean", return_info=True)
    want, oinfo = loss.truth(y, batch.x, margin, metric, reduction="mean", return_info=True)
    assert_close(check_array_result(case, got, x, ()), want, dtype, f"{loss.id} with info")
    check_info(case, info, oinfo, dtype, x)
    return info, oinfo


def finite(v) -> bool:
    return bool(np.all(np.isfinite(v)))


def isnan(v) -> bool:
    return math.isnan(float(np.asarray(v)))
