"""Reference sets (ref_embeddings=, ref_labels=) on every backend against the oracles,
their gradients against finite differences of the oracles, and parity with
pytorch-metric-learning's ``ref_emb``."""
from __future__ import annotations

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import oracles as O

from loss_helpers import ONLINE, assert_close, check_array_result, check_info

# anchors: 8 rows of classes 0, 1, 2 and 5 (5 is absent from the reference set: no
# positive there); reference: 10 rows of classes 0..3 (3 is only a negative)
_RNG = np.random.default_rng(7)
Y = np.array([0, 1, 2, 5, 0, 1, 2, 0])
X = _RNG.normal(size=(8, 2))
RY = np.array([0, 1, 2, 3, 0, 1, 3, 2, 0, 1])
RX = _RNG.normal(size=(10, 2))
NONE_SHAPE = {"batch_hard": (8,), "batch_hard_soft": (8,)}


def _kw(case, dtype):
    return dict(ref_embeddings=case.asarray(RX, dtype), ref_labels=case.asarray(RY))


@pytest.mark.parametrize("loss", ONLINE, ids=repr)
def test_reference_set_matches_oracle(xp, loss):
    dtype = "float64"
    x = xp.asarray(X, dtype)
    kw, okw = _kw(xp, dtype), dict(ref_embeddings=RX, ref_labels=RY)
    metric = "cosine" if loss.id == "batch_semihard" else "euclidean"
    for red in ("mean", "sum", "none"):
        got = loss.call(Y, x, 0.7, metric, reduction=red, **kw)
        want = loss.truth(Y, X, 0.7, metric, reduction=red, **okw)
        shape = NONE_SHAPE.get(loss.id, (8, 10)) if red == "none" else ()
        assert_close(check_array_result(xp, got, x, shape), want, dtype, f"{loss.id} {red}")
    got, info = loss.call(Y, x, 0.7, metric, return_info=True, **kw)
    want, oinfo = loss.truth(Y, X, 0.7, metric, return_info=True, **okw)
    assert_close(check_array_result(xp, got, x, ()), want, dtype)
    check_info(xp, info, oinfo, dtype, x)


def test_cross_distances_match_oracle(xp):
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        got = tr.pairwise_distances(xp.asarray(X, "float32"), xp.asarray(RX, "float32"), metric=metric)
        g = check_array_result(xp, got, xp.asarray(X, "float32"), (8, 10))
        np.testing.assert_allclose(g, O.pairwise_distances(X, RX, metric=metric), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("loss", ONLINE, ids=repr)
def test_reference_set_gradients_match_oracle_finite_differences(loss):
    """Gradients reach both the anchors and the reference rows (torch, float64)."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(X, requires_grad=True)
    r = torch.tensor(RX, requires_grad=True)
    out = loss.call(torch.as_tensor(Y), x, 0.7, "euclidean", reduction="sum",
                    ref_embeddings=r, ref_labels=torch.as_tensor(RY))
    gx, gr = torch.autograd.grad(out, (x, r))
    eps = 1e-6

    def f(a, b):
        return loss.truth(Y, a, 0.7, "euclidean", reduction="sum", ref_embeddings=b, ref_labels=RY)

    for arr, g, which in ((X, gx, "anchors"), (RX, gr, "reference")):
        fd = np.zeros_like(arr)
        for idx in np.ndindex(*arr.shape):
            hi, lo = arr.copy(), arr.copy()
            hi[idx] += eps
            lo[idx] -= eps
            fd[idx] = ((f(hi, RX) - f(lo, RX)) if which == "anchors" else (f(X, hi) - f(X, lo))) / (2 * eps)
        np.testing.assert_allclose(g.numpy(), fd, rtol=1e-5, atol=1e-6, err_msg=which)
    assert np.any(gr.numpy() != 0)


def test_parity_with_pytorch_metric_learning_ref_emb():
    """PML's ``ref_emb``: all triplets (TripletMarginLoss, AvgNonZero = our batch_all mean);
    BatchHardMiner with a MeanReducer = our batch_hard; ContrastiveLoss differs (unsquared)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses, miners, reducers

    dist = distances.LpDistance(normalize_embeddings=False)
    x, y, r, ry = (torch.as_tensor(a) for a in (X, Y, RX, RY))
    for margin in (0.2, 1.0):
        theirs = losses.TripletMarginLoss(margin=margin, distance=dist)(x, y, ref_emb=r, ref_labels=ry)
        ours = tr.batch_all(y, x, margin, ref_embeddings=r, ref_labels=ry)
        np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-9)
        mined = miners.BatchHardMiner(distance=dist)(x, y, r, ry)
        theirs = losses.TripletMarginLoss(margin=margin, distance=dist, reducer=reducers.MeanReducer())(
            x, y, mined, ref_emb=r, ref_labels=ry)
        ours = tr.batch_hard(y, x, margin, ref_embeddings=r, ref_labels=ry)
        np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-9)


def test_reference_set_bad_input():
    x = np.asarray(X, np.float32)
    with pytest.raises(ValueError, match="ref_labels"):
        tr.batch_hard(Y, x, ref_embeddings=RX)
    with pytest.raises(ValueError, match="ref_embeddings"):
        tr.batch_all(Y, x, ref_labels=RY)
    with pytest.raises(ValueError, match="ref_embeddings: 3 columns"):
        tr.batch_semihard(Y, x, ref_embeddings=np.zeros((4, 3), np.float32), ref_labels=RY[:4])
    with pytest.raises(ValueError, match="ref_labels"):
        tr.batch_contrastive(Y, x, ref_embeddings=RX.astype(np.float32), ref_labels=RY[:3])
    with pytest.raises(TypeError, match="ref_labels"):
        tr.batch_hard(Y, x, ref_embeddings=RX.astype(np.float32), ref_labels=RY.astype(float))
    with pytest.raises(TypeError, match="ref_embeddings: dtype"):
        tr.batch_hard(Y, x, ref_embeddings=RX, ref_labels=RY)  # float64 vs float32 arrays
    with pytest.raises(ValueError, match="ref_embeddings: empty"):
        tr.pairwise_distances(x, np.zeros((0, 2), np.float32))
    with pytest.raises(ValueError, match="cannot be combined"):
        tr.batch_hard(Y, x, ref_embeddings=RX.astype(np.float32), ref_labels=RY, axis_name="i")
    with pytest.raises(TypeError, match="axis_name"):
        tr.batch_hard(Y, x, axis_name="i")  # NumPy arrays have no mapped axis


def test_reference_nan_poisons_the_loss(xp):
    r = RX.copy()
    r[4, 1] = np.nan
    for loss in ONLINE:
        out = loss.call(Y, xp.asarray(X, "float64"), 0.7, ref_embeddings=xp.asarray(r, "float64"),
                        ref_labels=xp.asarray(RY))
        assert np.isnan(float(xp.to_numpy(out))), loss.id
