"""Parity with pytorch-metric-learning (PML) where the two compute the same thing.

From PML's source (``losses/triplet_margin_loss.py``, ``miners/batch_easy_hard_miner.py``,
``reducers/threshold_reducer.py``, ``reducers/mean_reducer.py``):

* ``TripletMarginLoss`` with no miner takes every valid triplet (``get_all_triplets_indices``)
  and ``l = relu(d_ap - d_an + margin)``; its default reducer ``AvgNonZeroReducer`` averages
  the terms with ``l > 0`` (0 when there is none).  That is ``batch_all``'s mean.
* ``smooth_loss=True`` replaces relu by ``softplus(d_ap - d_an + margin)`` — the margin is
  kept, exactly our ``soft=True`` (so they coincide at every margin, not only 0).  Softplus
  is > 0, so AvgNonZero averages every valid triplet, as our soft mean does.
* ``BatchHardMiner`` keeps the anchors that have a positive *and* a negative (``a1p_keep &
  a2n_keep``), with the farthest positive and the closest negative: our valid anchors.
  With ``reducer=MeanReducer()`` the loss is the mean over those anchors: ``batch_hard``.
  With PML's default AvgNonZero reducer it is the mean over anchors with ``l > 0`` (a
  documented difference, checked below from our ``reduction="none"``).
* PML's default distance normalises the embeddings; we pass
  ``LpDistance(normalize_embeddings=False)`` to the loss *and* the miner.
"""
from __future__ import annotations

import numpy as np
import pytest

import triplet_ref as tr

from conftest import tolerance

torch = pytest.importorskip("torch")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
from pytorch_metric_learning import distances as pml_distances  # noqa: E402
from pytorch_metric_learning import miners as pml_miners  # noqa: E402
from pytorch_metric_learning import reducers as pml_reducers  # noqa: E402


def _dist():
    return pml_distances.LpDistance(normalize_embeddings=False)


def _batches():
    rng = np.random.default_rng(11)
    out = {}
    for p, k, dim in ((4, 4, 8), (8, 2, 3), (3, 6, 5), (16, 4, 16)):
        out[f"pk_{p}x{k}"] = (np.repeat(np.arange(p), k), rng.normal(size=(p * k, dim)))
    # anchors without positives (singletons) and unequal classes
    out["singletons"] = (rng.permutation(np.repeat(np.arange(6), [1, 1, 2, 3, 4, 5])), rng.normal(size=(16, 4)))
    out["all_equal"] = (np.zeros(6, dtype=np.int64), rng.normal(size=(6, 3)))
    out["all_distinct"] = (np.arange(6), rng.normal(size=(6, 3)))
    return out


BATCHES = _batches()
MARGINS = (0.0, 0.2, 1.0)


def _tensors(name, dtype):
    y, x = BATCHES[name]
    return torch.as_tensor(y), torch.as_tensor(x.astype(dtype))


def _close(ours, theirs, dtype, what):
    tol = dict(rtol=1e-7, atol=1e-9) if dtype == "float64" else tolerance(dtype)
    np.testing.assert_allclose(float(ours), float(theirs), err_msg=what, **tol)


@pytest.mark.parametrize("name", sorted(BATCHES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("soft", [False, True])
def test_batch_all_equals_pml_triplet_margin_loss(name, dtype, soft):
    y, x = _tensors(name, dtype)
    for margin in MARGINS:
        pml = pml_losses.TripletMarginLoss(margin=margin, distance=_dist(), smooth_loss=soft)
        _close(tr.batch_all(y, x, margin, soft=soft), pml(x, y), dtype, f"margin={margin}")


def _pml_batch_hard(x, y, margin, soft=False, reducer=None):
    kw = {} if reducer is None else {"reducer": reducer}
    loss = pml_losses.TripletMarginLoss(margin=margin, distance=_dist(), smooth_loss=soft, **kw)
    miner = pml_miners.BatchHardMiner(distance=_dist())
    return loss(x, y, miner(x, y))


@pytest.mark.parametrize("name", sorted(BATCHES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("soft", [False, True])
def test_batch_hard_equals_pml_batch_hard_miner_with_mean_reducer(name, dtype, soft):
    y, x = _tensors(name, dtype)
    for margin in MARGINS:
        theirs = _pml_batch_hard(x, y, margin, soft, pml_reducers.MeanReducer())
        _close(tr.batch_hard(y, x, margin, soft=soft), theirs, dtype, f"margin={margin}")


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_batch_hard_vs_pml_default_reducer_averages_nonzero_anchors(name):
    # the documented difference: PML's default AvgNonZeroReducer divides by #anchors with l > 0
    y, x = _tensors(name, "float64")
    for margin in MARGINS:
        per_anchor = tr.batch_hard(y, x, margin, reduction="none").numpy()
        nz = per_anchor[per_anchor > 0]
        ours = nz.mean() if nz.size else 0.0
        _close(ours, _pml_batch_hard(x, y, margin), "float64", f"margin={margin}")


@pytest.mark.parametrize("name", ["pk_4x4", "singletons"])
def test_gradients_equal_pml(name):
    y, x0 = _tensors(name, "float64")
    for margin in (0.2, 1.0):
        for ours_fn, theirs_fn in (
            (lambda x: tr.batch_all(y, x, margin),
             lambda x: pml_losses.TripletMarginLoss(margin=margin, distance=_dist())(x, y)),
            (lambda x: tr.batch_hard(y, x, margin, soft=True),
             lambda x: _pml_batch_hard(x, y, margin, True, pml_reducers.MeanReducer())),
        ):
            xa = x0.clone().requires_grad_(True)
            xb = x0.clone().requires_grad_(True)
            (ga,) = torch.autograd.grad(ours_fn(xa), (xa,))
            (gb,) = torch.autograd.grad(theirs_fn(xb), (xb,))
            np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=1e-6, atol=1e-9)
