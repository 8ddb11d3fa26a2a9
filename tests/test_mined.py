"""mined_triplets: batch_hard / batch_semihard's choices as pytorch-metric-learning index
tuples, checked against the oracles and against PML's own miners and TripletMarginLoss."""
from __future__ import annotations

import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import oracles as O
from triplet_ref.testing.regimes import make_labels

torch = pytest.importorskip("torch")
pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances, losses, miners, reducers  # noqa: E402

PML_DISTANCE = {
    "euclidean": lambda: distances.LpDistance(normalize_embeddings=False),
    "sqeuclidean": lambda: distances.LpDistance(normalize_embeddings=False, power=2),
    "cosine": lambda: distances.CosineSimilarity(),
}


def _batch(regime, B=20, D=6, seed=0):
    y = make_labels(regime, B, seed=seed)
    x = np.random.default_rng(seed).standard_normal((B, D)).astype(np.float32)
    return y, x


@pytest.mark.parametrize("regime", ["pk4", "random_singletons"])
def test_tuples_match_the_oracles_choices(regime):
    y, x = _batch(regime)
    _, info = O.batch_hard(y, x, return_info=True)
    a, p, n = (t.tolist() for t in tr.mined_triplets(y, x, "hard"))
    valid = [i for i in range(len(y)) if info["valid"][i]]
    assert a == valid and p == [info["hardest_positive"][i] for i in valid]
    assert n == [info["hardest_negative"][i] for i in valid]
    _, info = O.batch_semihard(y, x, return_info=True)
    a, p, n = (t.tolist() for t in tr.mined_triplets(y, x, "semihard"))
    sn = np.asarray(info["semihard_negative"])
    terms = np.argwhere(sn >= 0)
    assert list(zip(a, p)) == [tuple(t) for t in terms.tolist()] and len(a) == info["num_valid"]
    assert n == [sn[i, j] for i, j in terms]


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("regime", ["pk4", "random_singletons"])
def test_hard_tuples_equal_pml_batch_hard_miner(metric, regime):
    """Same semantics: the hardest positive and negative of every anchor that has both
    (PML drops the others, as we do). Random float embeddings: no ties."""
    y, x = _batch(regime, seed=2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    ours = tr.mined_triplets(yt, xt, "hard", metric=metric)
    theirs = miners.BatchHardMiner(distance=PML_DISTANCE[metric]())(xt, yt)
    assert all(o.dtype == torch.int64 for o in ours)
    for o, t in zip(ours, theirs):
        assert o.tolist() == t.tolist()


@pytest.mark.parametrize("rule, soft", [("hard", False), ("hard", True), ("semihard", False)])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_pml_triplet_margin_loss_on_our_tuples_is_our_loss(rule, soft, metric):
    """TripletMarginLoss(margin=m, the same distance, smooth_loss=soft, MeanReducer) on the
    tuples gives batch_hard / batch_semihard's mean; SumReducer gives reduction="sum"."""
    y, x = _batch("random_singletons", seed=4)
    xt = torch.tensor(x, dtype=torch.float64)
    yt = torch.tensor(y)
    m = 0.3
    fn = tr.batch_hard if rule == "hard" else tr.batch_semihard
    kw = {"soft": soft} if soft else {}
    idx = tr.mined_triplets(yt, xt, rule, metric=metric)
    for red, reducer in (("mean", reducers.MeanReducer()), ("sum", reducers.SumReducer())):
        peer = losses.TripletMarginLoss(margin=m, distance=PML_DISTANCE[metric](), smooth_loss=soft,
                                        reducer=reducer)
        got = peer(xt, yt, indices_tuple=idx).item()
        assert got == pytest.approx(fn(yt, xt, m, metric=metric, reduction=red, **kw).item(), rel=1e-9)
        assert got == pytest.approx(O.__dict__[fn.__name__](y, x, m, metric=metric, reduction=red, **kw),
                                    rel=1e-6)


def test_semihard_tuples_are_the_closest_of_pml_semihard_triplets():
    """PML's TripletMarginMiner("semihard", margin) returns EVERY triplet with
    d(a,p) < d(a,n) < d(a,p) + margin; ours keeps one negative per (a, p), the closest with
    d(a,n) > d(a,p) (the farthest negative when there is none), whatever the margin. Where
    PML has a triplet for (a, p), our negative is the closest of PML's."""
    y, x = _batch("pk4", B=24, seed=6)
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    d = O.pairwise_distances(x.astype(np.float64))
    a, p, n = (t.tolist() for t in tr.mined_triplets(yt, xt, "semihard"))
    ours = {(i, j): k for i, j, k in zip(a, p, n)}
    pa, pp, pn = (t.tolist() for t in miners.TripletMarginMiner(
        margin=0.5, type_of_triplets="semihard", distance=PML_DISTANCE["euclidean"]())(xt, yt))
    theirs: dict = {}
    for i, j, k in zip(pa, pp, pn):
        theirs.setdefault((i, j), []).append(k)
    assert theirs  # the comparison is not empty
    for (i, j), ks in theirs.items():
        assert ours[(i, j)] == min(ks, key=lambda k: (d[i][k], k))
    # and where PML has none for (a, p), ours lies outside PML's band
    for (i, j), k in ours.items():
        if (i, j) not in theirs:
            assert not d[i][j] < d[i][k] < d[i][j] + 0.5


def test_other_backends_and_bad_input():
    y, x = _batch("pk4", B=8)
    want = [t.tolist() for t in tr.mined_triplets(y, x, "semihard")]
    jnp = pytest.importorskip("jax.numpy")
    got = tr.mined_triplets(jnp.asarray(y), jnp.asarray(x), "semihard")
    assert [np.asarray(t).tolist() for t in got] == want
    _, info = tr.batch_hard(y, x, return_info=True)
    assert [t.tolist() for t in tr.triplets_from_info(info)] == [
        t.tolist() for t in tr.mined_triplets(y, x, "hard")]
    with pytest.raises(ValueError, match="rule"):
        tr.mined_triplets(y, x, "easy")
    with pytest.raises(ValueError, match="metric"):
        tr.mined_triplets(y, x, metric="l1")
    with pytest.raises(ValueError, match="info"):
        tr.triplets_from_info({"num_valid": 3})
    with pytest.raises(TypeError, match="info"):
        tr.triplets_from_info(None)
