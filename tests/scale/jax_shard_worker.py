"""Global-batch mining under JAX ``shard_map`` on 4 host devices; run by
tests/test_distributed.py in a fresh interpreter (the device count is fixed at JAX's start).

For every loss: the value (mean, sum), the info scalars, the ``"none"`` rows and
``jax.grad`` with respect to replicated parameters, through ``shard_map`` with
``axis_name`` (and the mean, ``"none"`` and gradient with ``chunk_size`` as well), against
the same loss on one device on the concatenated batch (unchunked).  Prints
``OK <n>`` when every check passes; raises otherwise.
"""
from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, PartitionSpec as P  # noqa: E402

try:
    from jax import shard_map  # noqa: E402
except ImportError:  # older JAX
    from jax.experimental.shard_map import shard_map  # noqa: E402

jax.config.update("jax_enable_x64", True)

from _cases import batch, call, info_scalars, selected  # noqa: E402

# 5 local rows: two blocks of 2 (one lax.scan under jit) and a remainder block of 1
CHUNKS = (2,)
#: chunk_size=None with this memory budget: budget // (16 arrays · 20 global rows · 8 bytes)
#: = 2 rows per block (checked through a spy on _pairs.chunked)
BUDGET = 2 * 16 * 20 * 8
BUDGET_LOSSES = ("batch_all", "batch_semihard")


def main(only=None):
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("i",))
    x, y = (jnp.asarray(a) for a in batch([5, 4, 4, 3, 2, 2], 5, seed=3))
    W = jnp.asarray(np.random.default_rng(4).normal(size=(5, 3)))
    names = selected(only)

    def results(loss_of, chunked=None):
        """Per loss: mean, sum, none, info scalars and the gradient of the mean in W (with
        ``chunked``: mean, none and the gradient with ``chunk_size=chunked``; ``"budget"``:
        mean and gradient with the default chunk_size=None, for two of the losses: the
        choice is made before any loss runs, the chunked path is checked for all above)."""
        out = {}
        for name in (names if chunked != "budget" else [n for n in names if n in BUDGET_LOSSES] or names):
            def f(ys, e, name=name, **kw):
                return call(name, ys, e, **kw)

            if chunked:
                # "budget": the default chunk_size=None (under the budget set by the caller)
                size = None if chunked == "budget" else chunked

                def fc(ys, e, name=name, **kw):
                    return call(name, ys, e, chunk_size=size, **kw)

                out[name] = {"mean": loss_of(fc, W, "mean"),
                             "grad": jax.grad(lambda W, fc=fc: loss_of(fc, W, "mean"))(W)}
                if chunked != "budget":
                    out[name]["none"] = loss_of(fc, W, "none")
                continue
            out[name] = {what: loss_of(f, W, what) for what in ("mean", "sum", "none", "info")}
            out[name]["grad"] = jax.grad(lambda W, f=f: loss_of(f, W, "mean"))(W)
        return out

    def sharded(f, W, what):
        def body(xs, ys, W):
            if what == "info":
                return info_scalars(f(ys, xs @ W, return_info=True, axis_name="i")[1])
            return f(ys, xs @ W, reduction=what, axis_name="i")
        spec = P("i") if what == "none" else P()
        return shard_map(body, mesh=mesh, in_specs=(P("i"), P("i"), P()), out_specs=spec)(x, y, W)

    def single(f, W, what):
        if what == "info":
            return info_scalars(f(y, x @ W, return_info=True)[1])
        return f(y, x @ W, reduction=what)

    from triplet_ref.losses import _pairs

    seen = []
    orig = _pairs.chunked

    def spy(fn, *a, chunk_size, **kw):
        seen.append(chunk_size)
        return orig(fn, *a, chunk_size=chunk_size, **kw)

    _pairs.chunked = spy
    got = jax.jit(lambda W: results(sharded))(W)
    assert not seen, f"chunk_size=None under the default budget chunked: {seen}"
    got_chunked = {c: jax.jit(lambda W, c=c: results(sharded, chunked=c))(W) for c in CHUNKS}
    os.environ["TRIPLET_REF_MEMORY_BUDGET"] = str(BUDGET)
    try:
        seen.clear()
        got_chunked["budget"] = jax.jit(lambda W: results(sharded, chunked="budget"))(W)
        assert seen and set(seen) == {2}, f"the tiny budget should give blocks of 2 rows: {seen}"
    finally:
        del os.environ["TRIPLET_REF_MEMORY_BUDGET"]
        _pairs.chunked = orig
    want = jax.jit(lambda W: results(single))(W)
    for name in names:
        w = want[name]
        assert np.any(np.asarray(w["grad"]) != 0), name
        for label, g in (("", got[name]), *((f" chunk_size={c}", got_chunked[c][name]) for c in got_chunked
                                            if name in got_chunked[c])):
            for key in ("mean", "sum", "none", "grad"):
                if key in g:
                    rtol = 1e-9 if key == "grad" else 1e-10
                    np.testing.assert_allclose(g[key], w[key], rtol=rtol, atol=1e-12,
                                               err_msg=f"{name}{label} {key}")
        g = got[name]
        assert g["info"].keys() == w["info"].keys(), (name, g["info"].keys(), w["info"].keys())
        for k in w["info"]:
            np.testing.assert_allclose(g["info"][k], w["info"][k], rtol=1e-10, atol=1e-12, err_msg=f"{name} {k}")
    print("OK", len(names))


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else None)
