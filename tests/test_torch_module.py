"""triplet_ref.torch: the nn.Module losses (values, gradients, learnable margin against the
oracles' counts, repr, bad arguments) and the P×K batch sampler in a DataLoader."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import triplet_ref as tr  # noqa: E402
from triplet_ref import oracles as O  # noqa: E402
from triplet_ref.testing.regimes import make_labels  # noqa: E402
from triplet_ref.torch import (  # noqa: E402
    BatchAllLoss,
    BatchContrastiveLoss,
    BatchHardLoss,
    BatchSemiHardLoss,
    ContrastiveLoss,
    PKBatchSampler,
    TripletLoss,
)

ONLINE = [
    (BatchAllLoss, tr.batch_all, O.batch_all, {"metric": "sqeuclidean"}),
    (BatchHardLoss, tr.batch_hard, O.batch_hard, {"metric": "cosine"}),
    (BatchHardLoss, tr.batch_hard, O.batch_hard, {"soft": True}),
    (BatchSemiHardLoss, tr.batch_semihard, O.batch_semihard, {}),
    (BatchContrastiveLoss, tr.batch_contrastive, O.batch_contrastive, {}),
]


def _batch(regime="random_singletons", B=12, D=4, seed=0):
    y = make_labels(regime, B, seed=seed)
    x = np.random.default_rng(seed).standard_normal((B, D))
    return y, x


@pytest.mark.parametrize("cls, fn, oracle, opts", ONLINE, ids=lambda v: getattr(v, "__name__", str(v)))
def test_module_equals_function_and_oracle(cls, fn, oracle, opts):
    y, x = _batch()
    xt = torch.tensor(x, requires_grad=True)
    got = cls(0.7, **opts)(xt, torch.tensor(y))
    got.backward()
    xf = torch.tensor(x, requires_grad=True)
    want = fn(y, xf, 0.7, **opts)
    want.backward()
    assert got.item() == want.item()
    torch.testing.assert_close(xt.grad, xf.grad, rtol=0, atol=0)
    assert got.item() == pytest.approx(oracle(y, x, 0.7, **opts), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("cls, fn, oracle, opts", ONLINE, ids=lambda v: getattr(v, "__name__", str(v)))
def test_module_scaling_keywords_equal_the_function(cls, fn, oracle, opts):
    """``chunk_size=`` at construction and a reference set in ``forward``
    (``ref_embeddings``/``ref_labels``, or ``ref=`` a memory bank): the function's value
    and gradient, and the oracle's value."""
    from triplet_ref.torch import MemoryBank

    y, x = _batch("pk4", B=12)
    ry, r = _batch("random_singletons", B=7, seed=1)
    # chunked (blocks of 5, 5 and 2 anchors)
    xt = torch.tensor(x, requires_grad=True)
    got = cls(0.7, chunk_size=5, **opts)(xt, torch.tensor(y))
    got.backward()
    xf = torch.tensor(x, requires_grad=True)
    want = fn(y, xf, 0.7, chunk_size=5, **opts)
    want.backward()
    assert got.item() == want.item()
    torch.testing.assert_close(xt.grad, xf.grad, rtol=0, atol=0)
    assert got.item() == pytest.approx(oracle(y, x, 0.7, **opts), rel=1e-9, abs=1e-12)
    # a reference set, given as arrays and as a memory bank holding it
    want_ref = oracle(y, x, 0.7, ref_embeddings=r, ref_labels=ry, **opts)
    module = cls(0.7, chunk_size=5, **opts)
    bank = MemoryBank(7, 4, dtype=torch.float64)
    bank.enqueue(torch.tensor(r), torch.tensor(ry))
    for kw in ({"ref_embeddings": torch.tensor(r), "ref_labels": torch.tensor(ry)}, {"ref": bank},
               {"ref": bank._state()}):
        xt = torch.tensor(x, requires_grad=True)
        got = module(xt, torch.tensor(y), **kw)
        got.backward()
        xf = torch.tensor(x, requires_grad=True)
        want = fn(y, xf, 0.7, chunk_size=5, ref_embeddings=r, ref_labels=ry, **opts)
        want.backward()
        assert got.item() == want.item(), kw
        torch.testing.assert_close(xt.grad, xf.grad, rtol=0, atol=0)
        assert got.item() == pytest.approx(want_ref, rel=1e-9, abs=1e-12)


def test_module_scaling_keywords_bad_input():
    from triplet_ref.torch import MemoryBank

    y, x = _batch("pk4", B=8)
    xt, yt = torch.tensor(x), torch.tensor(y)
    with pytest.raises(ValueError, match="ref: the memory bank is empty"):
        BatchHardLoss()(xt, yt, ref=MemoryBank(4, 4, dtype=torch.float64))
    bank = MemoryBank(8, 4, dtype=torch.float64)
    bank.enqueue(xt, yt)
    with pytest.raises(ValueError, match="ref: pass a memory bank as ref= or a reference set"):
        BatchAllLoss()(xt, yt, ref=bank, ref_embeddings=xt)
    with pytest.raises(TypeError, match="ref: expected a triplet_ref.torch.MemoryBank"):
        BatchSemiHardLoss()(xt, yt, ref=(xt, yt))
    with pytest.raises(TypeError, match="chunk_size"):
        BatchAllLoss(chunk_size=2.5)
    with pytest.raises(ValueError, match="chunk_size"):
        BatchHardLoss(chunk_size=-1)
    with pytest.raises(TypeError, match="process_group: expected a torch.distributed ProcessGroup"):
        BatchContrastiveLoss(process_group="world")
    # given, the keywords show in the repr; not given, the repr is as before
    assert repr(BatchContrastiveLoss(0.5, chunk_size=64)) == (
        "BatchContrastiveLoss(margin=0.5, reduction='mean', return_info=False, chunk_size=64)")


def test_module_options_pass_through():
    y, x = _batch("pk4", B=12)
    xt = torch.tensor(x)
    loss, info = BatchHardLoss(0.5, reduction="none", return_info=True)(xt, y)
    o_loss, o_info = O.batch_hard(y, x, 0.5, reduction="none", return_info=True)
    np.testing.assert_allclose(loss.numpy(), o_loss, rtol=1e-9, atol=1e-12)
    assert info["hardest_negative"].tolist() == list(o_info["hardest_negative"])
    per_pair = BatchSemiHardLoss(0.5, reduction="none")(xt, y)
    assert per_pair.shape == (12, 12)


def test_explicit_modules():
    rng = np.random.default_rng(1)
    a, p, n = (rng.standard_normal((5, 3)) for _ in range(3))
    same = np.array([1, 0, 0, 1, 0])
    t = TripletLoss(0.4, metric="sqeuclidean")(*(torch.tensor(v) for v in (a, p, n)))
    assert t.item() == pytest.approx(O.triplet_loss(a, p, n, 0.4, metric="sqeuclidean"), rel=1e-9)
    c = ContrastiveLoss(1.5, reduction="sum")(torch.tensor(a), torch.tensor(p), torch.tensor(same))
    assert c.item() == pytest.approx(O.contrastive_loss(a, p, same, 1.5, reduction="sum"), rel=1e-9)


# --- learnable margin ---------------------------------------------------------------------------

def _margin_grad(module, *args):
    module.zero_grad()
    loss = module(*args)
    loss.backward()
    return module.margin.grad.item(), loss


@pytest.mark.parametrize("regime", ["pk4", "random_singletons"])
def test_learnable_margin_gradient_is_the_oracles_count(regime):
    """Each active hinge term has slope 1 in m: with reduction="sum", dL/dm is the number of
    active terms, read from the oracles' info (float64 loops)."""
    y, x = _batch(regime, B=16, seed=3)
    xt, yt = torch.tensor(x), torch.tensor(y)
    m = 0.8
    _, info = O.batch_all(y, x, m, return_info=True)
    g, _ = _margin_grad(BatchAllLoss(m, reduction="sum", learn_margin=True), xt, yt)
    assert g == info["num_positive"] > 0
    # mean = Σ l / #positive: slope #positive / #positive
    g, _ = _margin_grad(BatchAllLoss(m, learn_margin=True), xt, yt)
    assert g == pytest.approx(1.0)
    _, info = O.batch_hard(y, x, m, return_info=True)
    g, _ = _margin_grad(BatchHardLoss(m, reduction="sum", learn_margin=True), xt, yt)
    assert g == round(info["fraction_positive"] * info["num_valid"]) > 0
    g, _ = _margin_grad(BatchHardLoss(m, learn_margin=True), xt, yt)
    assert g == pytest.approx(info["fraction_positive"], rel=1e-6)
    _, info = O.batch_semihard(y, x, m, return_info=True)
    g, _ = _margin_grad(BatchSemiHardLoss(m, reduction="sum", learn_margin=True), xt, yt)
    assert g == round(info["fraction_positive"] * info["num_valid"]) > 0
    per_row = O.triplet_loss(x[:8], x[8:], x[::-1][:8], m, reduction="none")
    g, _ = _margin_grad(TripletLoss(m, reduction="sum", learn_margin=True),
                        xt[:8], xt[8:], torch.flip(xt, [0])[:8])
    assert g == int(np.sum(np.asarray(per_row) > 0)) > 0


def _oracle_slope(f, m, h=1e-6):
    return (f(m + h) - f(m - h)) / (2 * h)


def test_learnable_margin_gradient_smooth_losses_match_oracle_slope():
    """Where dL/dm is not a count (softplus, the contrastive square), compare with the central
    difference of the float64 oracle in m."""
    y, x = _batch("pk4", B=12, seed=5)
    xt, yt = torch.tensor(x), torch.tensor(y)
    m = 1.3
    g, _ = _margin_grad(BatchHardLoss(m, soft=True, learn_margin=True), xt, yt)
    assert g == pytest.approx(_oracle_slope(lambda v: O.batch_hard(y, x, v, soft=True), m), rel=1e-5)
    g, _ = _margin_grad(BatchAllLoss(m, soft=True, learn_margin=True), xt, yt)
    assert g == pytest.approx(_oracle_slope(lambda v: O.batch_all(y, x, v, soft=True), m), rel=1e-5)
    g, _ = _margin_grad(BatchContrastiveLoss(m, learn_margin=True), xt, yt)
    assert g == pytest.approx(_oracle_slope(lambda v: O.batch_contrastive(y, x, v), m), rel=1e-5)
    assert g > 0
    same = (np.arange(6) % 2).astype(np.int64)
    g, _ = _margin_grad(ContrastiveLoss(m, learn_margin=True), xt[:6], xt[6:], torch.tensor(same))
    assert g == pytest.approx(
        _oracle_slope(lambda v: O.contrastive_loss(x[:6], x[6:], same, v), m), rel=1e-5)


def test_learnable_margin_is_a_clamped_parameter():
    y, x = _batch("pk4", B=12)
    xt, yt = torch.tensor(x), torch.tensor(y)
    module = BatchHardLoss(0.5, learn_margin=True)
    assert [n for n, _ in module.named_parameters()] == ["margin"]
    assert module.margin.dtype == torch.float32 and module.margin.item() == 0.5
    restored = BatchHardLoss(0.0, learn_margin=True)
    restored.load_state_dict(module.state_dict())
    assert restored.margin.item() == 0.5
    with torch.no_grad():
        module.margin.fill_(-0.25)  # an optimiser pushed it below 0: used as 0, no gradient
    g, loss = _margin_grad(module, xt, yt)
    assert loss.item() == pytest.approx(O.batch_hard(y, x, 0.0), rel=1e-9)
    assert g == 0.0
    # an optimiser step moves it (SGD: m - lr * dL/dm)
    module = BatchAllLoss(1.0, learn_margin=True)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module(xt, yt).backward()
    opt.step()
    assert module.margin.item() == pytest.approx(0.9)
    assert BatchHardLoss(0.5).margin == 0.5 and list(BatchHardLoss().parameters()) == []


def test_extra_repr():
    assert repr(BatchHardLoss(0.2, metric="cosine")) == (
        "BatchHardLoss(margin=0.2, metric='cosine', soft=False, reduction='mean', return_info=False)")
    assert repr(BatchContrastiveLoss(learn_margin=True)) == (
        "BatchContrastiveLoss(margin=1, reduction='mean', return_info=False, learn_margin=True)")
    assert repr(ContrastiveLoss(0.5)) == "ContrastiveLoss(margin=0.5, reduction='mean')"


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="metric"):
        BatchHardLoss(metric="l2")
    with pytest.raises(ValueError, match="reduction"):
        BatchAllLoss(reduction="avg")
    with pytest.raises(ValueError, match="margin"):
        BatchSemiHardLoss(-1.0)
    with pytest.raises(TypeError, match="soft"):
        BatchHardLoss(soft="yes")
    with pytest.raises(TypeError, match="learn_margin"):
        TripletLoss(learn_margin=1)
    with pytest.raises(TypeError, match="metric"):
        BatchContrastiveLoss(metric="cosine")  # not an option of batch_contrastive
    y, x = _batch("pk4", B=8)
    with pytest.raises(TypeError, match=r"loss\(embeddings, labels\)"):
        BatchHardLoss()(torch.tensor(y), torch.tensor(x))


# --- the batch sampler in a DataLoader -----------------------------------------------------------

def test_pk_batch_sampler_in_a_dataloader():
    from torch.utils.data import DataLoader, Sampler, TensorDataset

    labels = torch.tensor(np.repeat(np.arange(6), [9, 9, 9, 9, 3, 1]))
    ds = TensorDataset(torch.arange(labels.numel()), labels)
    bs = PKBatchSampler(labels, p=3, k=4, seed=7)
    assert isinstance(bs, Sampler) and bs.batch_size == 12
    loader = DataLoader(ds, batch_sampler=bs)
    assert len(loader) == 40 // 12 == 3
    epoch1 = [(i.tolist(), y.tolist()) for i, y in loader]
    epoch2 = [i.tolist() for i, _ in loader]
    assert len(epoch1) == 3 and epoch2 != [i for i, _ in epoch1]  # epochs continue the stream
    for idx, y in epoch1:
        assert labels[idx].tolist() == y
        classes, counts = np.unique(y, return_counts=True)
        assert classes.size == 3 and (counts == 4).all()
    # the same indices as the framework-agnostic sampler with the same seed
    ref = tr.PKSampler(labels.numpy(), 3, 4, seed=7)
    assert [i for i, _ in epoch1] == [b.tolist() for b in ref]
    wrapped = PKBatchSampler(sampler=tr.PKSampler(labels, 3, 4, seed=7, small_classes="drop"))
    for batch in wrapped:
        assert not set(labels[batch].tolist()) & {4, 5}
    with pytest.raises(ValueError, match="sampler"):
        PKBatchSampler(labels, 3, 4, sampler=ref)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [BatchAllLoss, BatchHardLoss, BatchSemiHardLoss, BatchContrastiveLoss])
def test_learnable_margin_under_torch_compile(cls):
    """model + module with a learnable margin under torch.compile(fullgraph=True): the loss and
    both gradients equal eager (the margin's value check is skipped while tracing)."""
    y, x = _batch("pk4", B=12, seed=8)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    module = cls(0.5, learn_margin=True)
    compiled = torch.compile(lambda a, b: module(lin(a), b), fullgraph=True)
    got = compiled(xt, yt)
    got.backward()
    g_m, g_w = module.margin.grad.clone(), lin.weight.grad.clone()
    module.zero_grad()
    lin.zero_grad()
    want = module(lin(xt), yt)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert g_m.item() == pytest.approx(module.margin.grad.item(), rel=1e-5)
    torch.testing.assert_close(g_w, lin.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_modules_sampler_and_tuples_on_cuda():
    """The module (learnable margin moved by .to), mined_triplets and the sampler with CUDA
    tensors: the CPU values."""
    y, x = _batch("pk4", B=16, seed=9)
    dev = torch.device("cuda")
    module = BatchSemiHardLoss(0.5, learn_margin=True).to(dev)
    assert module.margin.device.type == "cuda"
    xc = torch.tensor(x, device=dev, requires_grad=True)
    loss = module(xc, torch.tensor(y, device=dev))
    loss.backward()
    assert loss.device.type == "cuda" and module.margin.grad is not None
    assert loss.item() == pytest.approx(O.batch_semihard(y, x, 0.5), rel=1e-9)
    a, p, n = tr.mined_triplets(torch.tensor(y, device=dev), xc.detach(), "hard")
    assert a.device.type == "cuda"
    assert [t.tolist() for t in (a, p, n)] == [t.tolist() for t in tr.mined_triplets(y, x, "hard")]
    cpu = [b.tolist() for b in tr.PKSampler(y, 2, 2, seed=1)]
    assert [b.tolist() for b in tr.PKSampler(torch.tensor(y, device=dev), 2, 2, seed=1)] == cpu
