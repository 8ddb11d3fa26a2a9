"""JAX backend (CPU and GPU); imported only when jax is in use."""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from ._base import Backend
from ._scale import match_vma


@jax.custom_jvp
def _safe_sqrt(x):
    return jnp.sqrt(x)


@_safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    out = jnp.sqrt(x)
    safe = jnp.where(out > 0, out, jnp.ones_like(out))
    return out, jnp.where(out > 0, t / (2 * safe), jnp.zeros_like(out))


# --- the NumPy kernels through pure_callback on CPU -----------------------------------

from ..mining.batch_all import batch_all_backward, batch_all_forward  # noqa: E402
from ..mining.semihard import semihard_choice  # noqa: E402


def _int_dtype():
    return jnp.asarray(0).dtype


def _batch_all_call(d, pos, neg, margin):
    idt = _int_dtype()
    shapes = (jax.ShapeDtypeStruct(d.shape, d.dtype), jax.ShapeDtypeStruct(d.shape, idt))

    def host(d, pos, neg, margin):
        out, count = batch_all_forward(np.asarray(d), np.asarray(pos), np.asarray(neg),
                                                float(np.asarray(margin)))
        return out, count.astype(idt)

    out, count = jax.pure_callback(host, shapes, d, pos, neg, margin)
    # inside shard_map a callback's results are typed replicated: type them like d (a
    # shard), or psum/grad would treat them as replicated values
    return match_vma(out, d), match_vma(count, d)


# the margin is an operand (a 0-d array), not a static argument: a traced margin under
# jax.jit works, and one compilation serves every margin
@jax.custom_vjp
def _batch_all(d, pos, neg, margin):
    return _batch_all_call(d, pos, neg, margin)


def _batch_all_fwd(d, pos, neg, margin):
    out, count = _batch_all_call(d, pos, neg, margin)
    return (out, count), (d, pos, neg, margin, count)


def _batch_all_bwd(res, cts):
    d, pos, neg, margin, count = res
    grad = cts[0]

    def host(d, pos, neg, margin, grad, count):
        return batch_all_backward(np.asarray(d), np.asarray(pos), np.asarray(neg),
                                           float(np.asarray(margin)), np.asarray(grad),
                                           np.asarray(count))

    gd = jax.pure_callback(host, jax.ShapeDtypeStruct(d.shape, d.dtype), d, pos, neg, margin, grad, count)
    # dL/dm: each positive triplet's hinge has slope 1 in the margin
    gm = jnp.sum(grad * count.astype(grad.dtype)).astype(margin.dtype)
    # inside shard_map: cotangents typed like their primals (manual axes)
    return match_vma(gd, d), None, None, match_vma(gm, margin)


_batch_all.defvjp(_batch_all_fwd, _batch_all_bwd)


def _native_batch_all(d, pos, neg, margin):
    return _batch_all(d, pos, neg, jnp.asarray(margin, dtype=d.dtype))


def _native_semihard(d, neg, term):
    idt = _int_dtype()
    shapes = (jax.ShapeDtypeStruct(d.shape, idt), jax.ShapeDtypeStruct(d.shape, jnp.bool_))

    def host(d, neg, term):
        chosen, semi = semihard_choice(np.asarray(d), np.asarray(neg), np.asarray(term))
        return chosen.astype(idt), semi

    chosen, semi = jax.pure_callback(host, shapes, jax.lax.stop_gradient(d), neg, term)
    return match_vma(chosen, d), match_vma(semi, d)


def _on_cpu(x) -> bool:
    try:
        return all(dev.platform == "cpu" for dev in x.devices())
    except Exception:  # a tracer: it runs where jax runs by default
        return jax.default_backend() == "cpu"


class JaxBackend(Backend):
    name = "jax"
    supports_grad = True
    supports_jit = True

    def namespace(self):
        return jnp

    def is_native(self, x):
        return isinstance(x, jax.Array)

    def carries_grad(self, x):
        return isinstance(x, jax.core.Tracer)

    def from_numpy(self, a, dtype=None, device=None):
        a = np.asarray(a)
        if dtype is not None and dtype != "bfloat16":
            a = a.astype(dtype)
        out = jnp.asarray(a)
        if dtype == "bfloat16":
            out = out.astype(jnp.bfloat16)
        if device is not None:
            out = jax.device_put(out, device)
        return out

    def to_numpy(self, x):
        if x.dtype == jnp.bfloat16:
            x = x.astype(jnp.float32)
        return np.asarray(x)

    def safe_sqrt(self, xp, x):
        return _safe_sqrt(x)

    def finish_sqdist(self, xp, d2, sqrt):
        d2 = jnp.maximum(d2, jnp.zeros((), d2.dtype))
        n = d2.shape[0]
        d2 = jnp.where(jnp.eye(n, dtype=bool), jnp.zeros((), d2.dtype), d2)
        return _safe_sqrt(d2) if sqrt else d2

    def sort_rows(self, xp, x):
        return jnp.sort(x, axis=-1)

    def argsort_rows(self, xp, x):
        return jnp.argsort(x, axis=-1, stable=True)

    def searchsorted_rows(self, xp, sorted_rows, values, side="left", where=None):
        return jax.vmap(lambda s, v: jnp.searchsorted(s, v, side=side))(sorted_rows, values)

    def take_rows(self, xp, x, idx):
        return jnp.take_along_axis(x, idx, axis=-1)

    def index_dtype(self, xp):
        return jnp.asarray(0).dtype  # int64 under x64, else int32

    def softplus(self, xp, x):
        return jax.nn.softplus(x)

    def native_kernel(self, step, like):
        if not _on_cpu(like):
            return None  # GPU: the portable jnp.sort / searchsorted path
        return {"batch_all_hinge": _native_batch_all, "semihard_choice": _native_semihard}.get(step.name)

    def value_and_grad(self, fn, x):
        v, g = jax.value_and_grad(fn)(x)
        return np.asarray(v, dtype=np.float64), self.to_numpy(g)

    def jit(self, fn):
        return jax.jit(fn)

    def devices(self):
        devs = list(jax.devices("cpu"))[:1]
        try:
            devs += list(jax.devices("gpu"))[:1]
        except RuntimeError:
            pass
        return devs

    def synchronize(self, x=None):
        if x is not None:
            jax.block_until_ready(x)


BACKEND = JaxBackend()
