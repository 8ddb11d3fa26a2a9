"""``chunk_size=``: anchors in row blocks (checkpointed), against the oracles on every
backend, with a reference set, and with the gradients of the unchunked call."""
from __future__ import annotations

import numpy as np
import pytest

import triplet_ref as tr

from loss_helpers import ONLINE, ONLINE_BY_ID, assert_close, check_array_result, check_info

_RNG = np.random.default_rng(9)
Y = np.array([0, 1, 2, 0, 1, 2, 0, 3, 1])  # class 3 is a singleton: an invalid anchor
X = _RNG.normal(size=(9, 3))
RY = np.array([0, 1, 2, 3, 0, 1, 4])
RX = _RNG.normal(size=(7, 3))
NONE_SHAPE = {"batch_hard": (9,), "batch_hard_soft": (9,)}


@pytest.mark.parametrize("loss", ONLINE, ids=repr)
def test_chunked_matches_oracle(request, xp, loss):
    if xp.name == "jax" and not request.config.getoption("--runslow"):
        pytest.skip("slow: jax eager compiles every block shape; jax is covered by the jit test below")
    dtype = "float64"
    x = xp.asarray(X, dtype)
    for red in ("mean", "sum", "none"):
        got = loss.call(Y, x, 0.6, reduction=red, chunk_size=4)
        want = loss.truth(Y, X, 0.6, reduction=red)
        shape = NONE_SHAPE.get(loss.id, (9, 9)) if red == "none" else ()
        assert_close(check_array_result(xp, got, x, shape), want, dtype, f"{loss.id} {red}")
    got, info = loss.call(Y, x, 0.6, return_info=True, chunk_size=2)
    want, oinfo = loss.truth(Y, X, 0.6, return_info=True)
    assert_close(check_array_result(xp, got, x, ()), want, dtype)
    check_info(xp, info, oinfo, dtype, x)


@pytest.mark.parametrize("loss", ONLINE, ids=repr)
def test_chunked_reference_set_matches_oracle(loss):
    kw = dict(ref_embeddings=RX, ref_labels=RY)
    for red in ("mean", "none"):
        got = loss.call(Y, X, 0.6, reduction=red, chunk_size=4, **kw)
        assert_close(got, loss.truth(Y, X, 0.6, reduction=red, **kw), "float64", f"{loss.id} {red}")


@pytest.mark.parametrize("loss", ONLINE, ids=repr)
def test_chunked_torch_gradients_equal_unchunked(loss):
    torch = pytest.importorskip("torch")
    y = torch.as_tensor(Y)
    grads = []
    for chunk in (None, 2):
        x = torch.tensor(X, requires_grad=True)
        r = torch.tensor(RX, requires_grad=True)
        m = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
        a = loss.call(y, x, m, chunk_size=chunk)
        b = loss.call(y, x, m, chunk_size=chunk, ref_embeddings=r, ref_labels=torch.as_tensor(RY))
        grads.append([g.numpy() for g in torch.autograd.grad(a + b, (x, r, m))])
    for g, w in zip(*grads):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    assert np.any(grads[0][0] != 0)


@pytest.mark.parametrize("losses", [
    pytest.param(("batch_all", "batch_hard"), id="default"),
    pytest.param(("batch_all_soft", "batch_hard_soft", "batch_semihard", "batch_contrastive"),
                 id="rest", marks=pytest.mark.slow),
])
def test_chunked_jax_jit_gradients_equal_unchunked(losses):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    x, y = jnp.asarray(X), jnp.asarray(Y)

    def total(x, chunk):
        return sum(loss.call(y, x, 0.6, chunk_size=chunk) for loss in ONLINE if loss.id in losses)

    g = jax.jit(jax.grad(lambda x: total(x, 4)))(x)
    w = jax.jit(jax.grad(lambda x: total(x, None)))(x)
    np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_chunk_size_bad_input(monkeypatch):
    with pytest.raises(ValueError, match="chunk_size"):
        tr.batch_hard(Y, X, chunk_size=-1)
    monkeypatch.setenv("TRIPLET_REF_MEMORY_BUDGET", "1GiB")
    with pytest.raises(ValueError, match="TRIPLET_REF_MEMORY_BUDGET"):
        tr.batch_hard(Y, X)
    monkeypatch.setenv("TRIPLET_REF_MEMORY_BUDGET", "0")
    with pytest.raises(ValueError, match="TRIPLET_REF_MEMORY_BUDGET"):
        tr.batch_hard(Y, X)
    with pytest.raises(TypeError, match="chunk_size"):
        tr.batch_all(Y, X, chunk_size=2.0)
    # chunk_size goes with process_group/axis_name (tests/test_distributed.py); their own
    # checks still apply
    with pytest.raises(TypeError, match="axis_name: a JAX mapped axis needs JAX arrays"):
        tr.batch_semihard(Y, X, chunk_size=2, axis_name="i")
    with pytest.raises(ValueError, match="ref_embeddings/ref_labels cannot be combined with process_group"):
        tr.batch_all(Y, X, chunk_size=2, ref_embeddings=X, ref_labels=Y, axis_name="i")
    with pytest.raises(ValueError, match="process_group .* and axis_name .* cannot both"):
        tr.batch_contrastive(Y, X, chunk_size=2, axis_name="i", process_group=object())


@pytest.mark.parametrize("module, fn", [("batch_all", "batch_all"), ("batch_hard", "batch_hard"),
                                        ("semihard", "batch_semihard"), ("contrastive", "batch_contrastive")])
def test_chunked_blocks_compute_info_only_when_asked(monkeypatch, module, fn):
    """A row block computes its info (count passes over its (b, R) arrays, index arrays)
    only when the caller asked for ``return_info``: the mean takes the block's count from
    reduce_pairs. Spied through the loss module's ``finish``, which every call (each block
    included) ends with."""
    import importlib

    mod = importlib.import_module(f"triplet_ref.losses.{module}")
    seen = []
    real = mod.finish

    def spy(ctx, loss, x, info, return_info):
        seen.append((return_info, info is None))
        return real(ctx, loss, x, info, return_info)

    monkeypatch.setattr(mod, "finish", spy)
    loss = getattr(tr, fn)
    for red in ("mean", "sum", "none"):
        seen.clear()
        got = loss(Y, X, 0.6, reduction=red, chunk_size=2)
        assert seen and all(s == (False, True) for s in seen), (red, seen)
        seen.clear()
        got_i, info = loss(Y, X, 0.6, reduction=red, chunk_size=2, return_info=True)
        assert seen and all(s == (True, False) for s in seen), (red, seen)
        np.testing.assert_array_equal(got, got_i)
        assert_close(got, getattr(tr.oracles, fn)(Y, X, 0.6, reduction=red), "float64", f"{fn} {red}")


def test_chunked_torch_double_backward_raises():
    torch = pytest.importorskip("torch")
    x = torch.tensor(X, requires_grad=True)
    loss = tr.batch_hard(torch.as_tensor(Y), x, 0.6, chunk_size=4)
    with pytest.raises(RuntimeError, match="first-order"):
        torch.autograd.grad(loss, x, create_graph=True)


class _Shape:
    """Only the shape and dtype that chunk_rows reads."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, np.dtype(dtype)


@pytest.mark.parametrize("B, R, dtype, want", [
    (4096, None, "float32", None),     # 8 · 4096 · 4096 · 4 bytes = 512 MiB <= 1 GiB: unchunked
    (4096, None, "float64", None),     # exactly 1 GiB: unchunked
    (4097, None, "float64", 4095),     # 2**30 // (8 · 4097 · 8)
    (8192, None, "float32", 4096),
    (16384, None, "float32", 2048),
    (65536, None, "float32", 512),
    (16384, None, "float16", 2048),    # computed in float32
    (256, 65536, "float32", None),     # a memory bank: 512 rows fit
    (4096, 65536, "float32", 512),
])
def test_chunk_rows_from_the_default_budget(monkeypatch, B, R, dtype, want):
    from triplet_ref.losses._pairs import chunk_rows

    monkeypatch.delenv("TRIPLET_REF_MEMORY_BUDGET", raising=False)
    ref = None if R is None else _Shape((R, 8), dtype)
    assert chunk_rows(None, _Shape((B, 8), dtype), ref) == want
    assert chunk_rows(0, _Shape((B, 8), dtype), ref) is None
    assert chunk_rows(7, _Shape((B, 8), dtype), ref) == 7
    # chunk_rows does not decide a distributed call: gather_global does, after the gather
    # (from the global rows; tests/test_distributed.py)
    assert chunk_rows(None, _Shape((B, 8), dtype), None, axis_name="i") is None


@pytest.mark.parametrize("loss", ONLINE, ids=repr)
def test_default_chunk_size_from_budget_matches_oracle(monkeypatch, loss):
    torch = pytest.importorskip("torch")
    # 2 rows per block: 8 · 9 · 8 bytes · 2 = 1152
    monkeypatch.setenv("TRIPLET_REF_MEMORY_BUDGET", "1152")
    x = torch.tensor(X, requires_grad=True)
    got = loss.call(torch.as_tensor(Y), x, 0.6)
    assert_close(got.detach().numpy(), loss.truth(Y, X, 0.6), "float64", loss.id)
    # chunked: the fused block gradients are first-order only
    with pytest.raises(RuntimeError, match="first-order"):
        torch.autograd.grad(got, x, create_graph=True)
    # chunk_size=0: today's unchunked path, which has a double backward
    x0 = torch.tensor(X, requires_grad=True)
    (g,) = torch.autograd.grad(loss.call(torch.as_tensor(Y), x0, 0.6, chunk_size=0), x0, create_graph=True)
    (g1,) = torch.autograd.grad(got, x)
    np.testing.assert_allclose(g1.numpy(), g.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("fw", ["numpy", "torch"])
def test_block_distances_every_metric_match_oracle(fw, metric):
    """The fused block kernels (NumPy in place, torch autograd.Function) against the
    oracle, with a duplicated row (its own column exactly 0, the duplicate's a residue)."""
    x = np.concatenate([X, X[:1] * 1.0])
    y = np.concatenate([Y, Y[:1]])
    for name in ("batch_all", "batch_hard", "batch_semihard"):
        loss = ONLINE_BY_ID[name]
        want = loss.truth(y, x, 0.6, metric=metric, reduction="none")
        xin = x if fw == "numpy" else pytest.importorskip("torch").tensor(x)
        got = loss.call(y, xin, 0.6, metric=metric, reduction="none", chunk_size=3)
        assert_close(np.asarray(got), want, "float64", f"{fw} {name} {metric}")


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_block_distances_torch_gradients_detached_reference(metric):
    """torch: the block kernel's backward with a reference set that needs no gradient (a
    memory bank) and with the batch itself, against the unchunked call."""
    torch = pytest.importorskip("torch")
    y, r, ry = torch.as_tensor(Y), torch.tensor(RX), torch.as_tensor(RY)
    for loss in ONLINE:
        if not loss.has_metric and metric != "euclidean":
            continue
        grads = []
        for chunk in (0, 4):
            x = torch.tensor(X, requires_grad=True)
            a = loss.call(y, x, 0.6, metric=metric, chunk_size=chunk, ref_embeddings=r, ref_labels=ry)
            b = loss.call(y, x, 0.6, metric=metric, chunk_size=chunk)
            grads.append(torch.autograd.grad(a + 0.5 * b, x)[0].numpy())
        np.testing.assert_allclose(grads[1], grads[0], rtol=1e-10, atol=1e-12, err_msg=f"{loss.id} {metric}")
        assert np.any(grads[0] != 0)


def _jax_info_close(info, oinfo, what):
    assert set(info) == set(oinfo), what
    for key, want in oinfo.items():
        got = np.asarray(info[key])
        if isinstance(want, (np.ndarray, int)) and not isinstance(want, float):
            np.testing.assert_array_equal(got, np.asarray(want), err_msg=f"{what} {key}")
        else:
            assert_close(got, want, "float64", f"{what} {key}")


@pytest.mark.parametrize("losses", [
    pytest.param(("batch_semihard",), id="default"),
    pytest.param(("batch_all", "batch_all_soft", "batch_hard", "batch_hard_soft", "batch_contrastive"),
                 id="rest", marks=pytest.mark.slow),
])
def test_chunked_jax_scan_matches_oracle(losses):
    """JAX under jit: the equal row blocks run as one ``lax.scan`` (B = 9, blocks of 2:
    four scanned blocks and a remainder; the reference set, blocks of 3: three scanned
    blocks); ``"none"``, the mean with its info (per-row index arrays, counts,
    fractions) and the gradients of a mean and a sum in the embeddings and the reference
    set against the oracles and the unchunked gradients (torch's).  batch_semihard runs its CPU kernel through pure_callback."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    x, y, rx, ry = jnp.asarray(X), jnp.asarray(Y), jnp.asarray(RX), jnp.asarray(RY)
    sel = [ONLINE_BY_ID[n] for n in losses]

    def total(x, rx, loss, chunk):
        return (loss.call(y, x, 0.6, chunk_size=chunk)
                + loss.call(y, x, 0.6, reduction="sum", chunk_size=chunk, ref_embeddings=rx, ref_labels=ry))

    def results(x, rx):
        out = {}
        for loss in sel:
            r = dict(ref_embeddings=rx, ref_labels=ry)
            out[loss.id] = {"none": loss.call(y, x, 0.6, reduction="none", chunk_size=2)}
            out[loss.id]["info"] = loss.call(y, x, 0.6, return_info=True, chunk_size=2)
            out[loss.id]["ref info"] = loss.call(y, x, 0.6, return_info=True, chunk_size=3, **r)
            out[loss.id]["grad"] = jax.grad(total, argnums=(0, 1))(x, rx, loss, 2)
        return out

    def unchunked_grads(loss):
        """The same gradients from torch, unchunked (cheaper than compiling JAX's)."""
        torch = pytest.importorskip("torch")
        tx, trx = torch.tensor(X, requires_grad=True), torch.tensor(RX, requires_grad=True)
        ty, tr_y = torch.as_tensor(Y), torch.as_tensor(RY)
        out = (loss.call(ty, tx, 0.6, chunk_size=0)
               + loss.call(ty, tx, 0.6, reduction="sum", chunk_size=0, ref_embeddings=trx, ref_labels=tr_y))
        return [g.numpy() for g in torch.autograd.grad(out, (tx, trx))]

    # the scan is there: one per chunked call (and one more per gradient: its transpose)
    assert str(jax.make_jaxpr(results)(x, rx)).count("scan[") >= 5 * len(sel)
    got = jax.jit(results)(x, rx)
    for loss in sel:
        g = got[loss.id]
        assert_close(g["none"], loss.truth(Y, X, 0.6, reduction="none"), "float64", f"{loss.id} none")
        want, oinfo = loss.truth(Y, X, 0.6, return_info=True)
        assert_close(g["info"][0], want, "float64", loss.id)
        _jax_info_close(g["info"][1], oinfo, loss.id)
        kw = dict(ref_embeddings=RX, ref_labels=RY)
        want, oinfo = loss.truth(Y, X, 0.6, return_info=True, **kw)
        assert_close(g["ref info"][0], want, "float64", f"{loss.id} ref")
        _jax_info_close(g["ref info"][1], oinfo, f"{loss.id} ref")
        for gg, ww in zip(g["grad"], unchunked_grads(loss)):
            np.testing.assert_allclose(gg, ww, rtol=1e-10, atol=1e-12, err_msg=loss.id)
            assert np.any(np.asarray(ww) != 0), loss.id
