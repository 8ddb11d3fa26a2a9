"""Global-batch mining under JAX ``shard_map`` on 4 host devices; run by
tests/test_distributed.py in a fresh interpreter (the device count is fixed at JAX's start).

For every loss: the value (mean, sum), the info scalars, the ``"none"`` rows and
``jax.grad`` with respect to replicated parameters, through ``shard_map`` with
``axis_name``, against the same loss on one device on the concatenated batch.  Prints
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

import triplet_ref as tr  # noqa: E402

LOSSES = {
    "batch_all": (tr.batch_all, {}),
    "batch_all_soft": (tr.batch_all, {"soft": True}),
    "batch_hard": (tr.batch_hard, {}),
    "batch_hard_soft": (tr.batch_hard, {"soft": True}),
    "batch_semihard": (tr.batch_semihard, {}),
    "batch_contrastive": (tr.batch_contrastive, {}),
}
INFO_SCALARS = ("num_valid", "num_positive", "fraction_positive", "fraction_semihard",
                "mean_hardest_positive_dist", "mean_hardest_negative_dist")


def main(only=None):
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("i",))
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(16, 5)))
    y = jnp.asarray(rng.permutation(np.repeat(np.arange(5), [4, 4, 3, 3, 2])))
    W = jnp.asarray(rng.normal(size=(5, 3)))
    names = [n for n in LOSSES if not only or n in only]

    def results(loss_of):
        """Per loss: mean, sum, none, info scalars and the gradient of the mean in W."""
        out = {}
        for name in names:
            fn, extra = LOSSES[name]

            def mean(W, fn=fn, extra=extra):
                return loss_of(lambda ys, e, **kw: fn(ys, e, 0.8, **extra, **kw), W, "mean")

            out[name] = {
                "mean": mean(W),
                "sum": loss_of(lambda ys, e, fn=fn, extra=extra, **kw: fn(ys, e, 0.8, **extra, **kw), W, "sum"),
                "none": loss_of(lambda ys, e, fn=fn, extra=extra, **kw: fn(ys, e, 0.8, **extra, **kw), W, "none"),
                "info": loss_of(lambda ys, e, fn=fn, extra=extra, **kw: fn(ys, e, 0.8, **extra, **kw), W, "info"),
                "grad": jax.grad(mean)(W),
            }
        return out

    def info_of(out):
        return {k: v for k, v in out[1].items() if k in INFO_SCALARS}

    def sharded(f, W, what):
        def body(xs, ys, W):
            if what == "info":
                return info_of(f(ys, xs @ W, return_info=True, axis_name="i"))
            return f(ys, xs @ W, reduction=what, axis_name="i")
        spec = P("i") if what == "none" else P()
        return shard_map(body, mesh=mesh, in_specs=(P("i"), P("i"), P()), out_specs=spec)(x, y, W)

    def single(f, W, what):
        if what == "info":
            return info_of(f(y, x @ W, return_info=True))
        return f(y, x @ W, reduction=what)

    got = jax.jit(lambda W: results(lambda f, W, what: sharded(f, W, what)))(W)
    want = jax.jit(lambda W: results(lambda f, W, what: single(f, W, what)))(W)
    for name in names:
        g, w = got[name], want[name]
        for key in ("mean", "sum", "none"):
            np.testing.assert_allclose(g[key], w[key], rtol=1e-10, atol=1e-12, err_msg=f"{name} {key}")
        assert g["info"].keys() == w["info"].keys(), (name, g["info"].keys(), w["info"].keys())
        for k in w["info"]:
            np.testing.assert_allclose(g["info"][k], w["info"][k], rtol=1e-10, atol=1e-12, err_msg=f"{name} {k}")
        assert np.any(np.asarray(w["grad"]) != 0), name
        np.testing.assert_allclose(g["grad"], w["grad"], rtol=1e-9, atol=1e-12, err_msg=f"{name} grad")
    print("OK", len(names))


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else None)
