"""Every loss under ``jax.jit`` and ``torch.compile(fullgraph=True)`` equals eager.

Two batch sizes (an exact dyadic batch of 8 with ties, a random P×K batch of 12) and two
margins; the result, every reduction and the info (indices exactly) are compared.

Cost on a small CPU: ``jax.jit`` compiles once per loss, batch size and margin (about a
second each).  ``torch.compile`` with inductor takes 10–20 s a graph on 2
cores, so the default run compiles every loss with ``backend="aot_eager"`` (the same
dynamo full-graph capture and AOT autograd, without inductor's code generation) at one
size, plus one loss with inductor; the whole inductor matrix (every loss × 2 sizes × 2
margins) runs with ``--runslow``.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import triplet_ref as tr

from loss_catalog import BY_NAME
from loss_helpers import ONLINE, ONLINE_BY_ID, assert_close

pytestmark = pytest.mark.jit

SIZES = ("ties_grid_8", "random_pk_3x4")
MARGINS = (0.3, 1.0)


def _explicit_inputs(b):
    rng = np.random.default_rng(b)
    a, p, n = (rng.normal(size=(b, 3)) for _ in range(3))
    same = (rng.random(b) < 0.5).astype(np.int64)
    return a, p, n, same


def _make(loss_id):
    """``(fn, arrays)`` for a loss: ``fn(*arrays, margin)`` returns a tuple of outputs;
    ``arrays(case, batch_name)`` builds the native inputs."""
    if loss_id in ONLINE_BY_ID:
        loss = ONLINE_BY_ID[loss_id]

        def fn(y, x, margin):
            outs = [loss.call(y, x, margin, reduction=r) for r in ("sum", "none")]
            mean, info = loss.call(y, x, margin, return_info=True)
            return (mean, *outs, info)

        def arrays(case, name, dtype):
            batch = BY_NAME[name]
            return case.asarray(batch.labels.astype(np.int64)), case.asarray(batch.x, dtype)

        return fn, arrays
    if loss_id == "triplet_loss":
        def fn(a, p, n, margin):
            return tuple(tr.triplet_loss(a, p, n, margin, metric=m, soft=s, reduction=r)
                         for m, s, r in (("euclidean", False, "mean"), ("sqeuclidean", True, "none"),
                                         ("cosine", False, "sum")))

        def arrays(case, name, dtype):
            a, p, n, _ = _explicit_inputs(BY_NAME[name].x.shape[0])
            return tuple(case.asarray(v, dtype) for v in (a, p, n))

        return fn, arrays

    def fn(x1, x2, same, margin):
        return tuple(tr.contrastive_loss(x1, x2, same, margin, reduction=r) for r in ("mean", "none"))

    def arrays(case, name, dtype):
        a, p, _, same = _explicit_inputs(BY_NAME[name].x.shape[0])
        return case.asarray(a, dtype), case.asarray(p, dtype), case.asarray(same)

    return fn, arrays


LOSS_IDS = [v.id for v in ONLINE] + ["triplet_loss", "contrastive_loss"]


def _compare(case, got, want, dtype, what):
    if isinstance(want, dict):
        assert set(got) == set(want)
        for k in want:
            _compare(case, got[k], want[k], dtype, f"{what} info[{k}]")
        return
    if isinstance(want, tuple):
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(case, g, w, dtype, f"{what}[{i}]")
        return
    assert got.dtype == want.dtype, what
    assert tuple(got.shape) == tuple(want.shape), what
    g, w = case.to_numpy(got), case.to_numpy(want)
    if np.issubdtype(w.dtype, np.floating):
        assert_close(g, w, dtype, what)
    else:  # indices, counts, bools: exactly
        np.testing.assert_array_equal(g, w, err_msg=what)


def _check(case, compiled, fn, arrays, dtype, sizes, margins, margin_as_array=False):
    for name in sizes:
        args = arrays(case, name, dtype)
        for margin in margins:
            want = fn(*args, margin)
            m = case.xp.asarray(margin, dtype=want[0].dtype) if margin_as_array else margin
            got = compiled(*args, m)
            _compare(case, got, want, dtype, f"{name} margin={margin}")


@pytest.mark.parametrize("loss_id", LOSS_IDS)
def test_jax_jit_equals_eager(request, xp, dtype, loss_id):
    if xp.name != "jax":
        pytest.skip("jax.jit only")
    if dtype == "float64" and not request.config.getoption("--runslow"):
        pytest.skip("slow: float64 under jax.jit runs with --runslow")
    import jax

    fn, arrays = _make(loss_id)
    # the margin is a Python float, static: one compilation per batch size and margin
    compiled = jax.jit(fn, static_argnums=(len(arrays(xp, SIZES[0], dtype)),))
    _check(xp, compiled, fn, arrays, dtype, SIZES, MARGINS)


@pytest.mark.parametrize("loss_id", [
    "batch_all", "batch_semihard", "batch_hard", "triplet_loss"])
def test_jax_jit_with_a_traced_margin(xp, loss_id):
    # the margin check lets a traced 0-d margin through (it cannot be checked under jit):
    # one compilation then serves every margin
    if xp.name != "jax":
        pytest.skip("jax.jit only")
    import jax

    fn, arrays = _make(loss_id)
    _check(xp, jax.jit(fn), fn, arrays, "float64", SIZES[:1], MARGINS, margin_as_array=True)


@pytest.mark.parametrize("loss_id", LOSS_IDS)
def test_torch_compile_fullgraph_captures_every_loss(xp, loss_id):
    if xp.name != "torch":
        pytest.skip("torch.compile only")
    import torch

    fn, arrays = _make(loss_id)
    torch._dynamo.reset()  # see torch_fresh_inductor
    compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend="aot_eager")
    _check(xp, compiled, fn, arrays, "float32", SIZES[:1], MARGINS[:1])


@pytest.fixture
def torch_fresh_inductor(xp):
    """The torch case, with no on-disk inductor/FX-graph cache: a cached graph compiled
    against an older fake (meta) of the backend's custom ops would run with stale output
    layouts."""
    if xp.name != "torch":
        pytest.skip("torch.compile only")
    import torch
    import torch._inductor.config as cfg

    # one code object (``fn`` of _make) serves every loss: start each test with empty
    # dynamo caches, or the recompile limit (8) is hit across tests
    torch._dynamo.reset()

    # the config's own patch(): monkeypatch's undo would delete the key from the config
    with cfg.patch(force_disable_caches=True):
        yield xp


def test_torch_compile_inductor_batch_all(torch_fresh_inductor):
    xp = torch_fresh_inductor
    fn, arrays = _make("batch_all")
    _check(xp, xp.backend.jit(fn), fn, arrays, "float32", SIZES[1:], MARGINS[:1])


@pytest.mark.slow
@pytest.mark.parametrize("loss_id", LOSS_IDS)
def test_torch_compile_inductor_equals_eager(torch_fresh_inductor, dtype, loss_id):
    xp = torch_fresh_inductor
    fn, arrays = _make(loss_id)
    _check(xp, xp.backend.jit(fn), fn, arrays, dtype, SIZES, MARGINS)


def test_torch_compile_as_the_first_call_of_the_process():
    pytest.importorskip("torch")
    code = (
        "import numpy as np, torch, triplet_ref as tr\n"
        "y = torch.tensor([0, 0, 1, 1]); x = torch.tensor(np.arange(8.0).reshape(4, 2))\n"
        "f = torch.compile(lambda y, x: tr.batch_hard(y, x, 0.5), fullgraph=True, backend='eager')\n"
        "assert float(f(y, x)) == float(tr.batch_hard(y, x, 0.5))\n"
    )
    _run_fresh_process(code)


def test_torch_compile_first_call_with_torch_imported_after_triplet_ref():
    """torch imported after triplet_ref: the torch backend is built right after torch's
    import (a post-import hook), so a model + loss compiled with fullgraph=True works as
    the process's first call, in this import order too."""
    pytest.importorskip("torch")
    code = (
        "import numpy as np, triplet_ref as tr, torch\n"
        "assert 'torch' in tr.backends._CACHE, 'torch backend not built after import torch'\n"
        "y = torch.tensor([0, 0, 1, 1, 2, 2]); x = torch.tensor(np.arange(12.0).reshape(6, 2))\n"
        "model = torch.nn.Linear(2, 3).double()\n"
        "def step(y, x):\n"
        "    e = model(x)\n"
        "    return tr.batch_all(y, e, 0.5) + tr.batch_semihard(y, e, 0.5) + tr.batch_hard(y, e, 0.5)\n"
        "f = torch.compile(step, fullgraph=True, backend='eager')\n"
        "got = f(y, x)\n"
        "got.backward()\n"
        "assert abs(float(got) - float(step(y, x))) < 1e-12\n"
    )
    _run_fresh_process(code)


def _run_fresh_process(code: str) -> None:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
