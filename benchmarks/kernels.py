"""The NumPy kernels' two bodies (pure NumPy, numba) compared in one process.

    python benchmarks/kernels.py                          # B = 4096, P x K (K = 4), numpy + torch
    python benchmarks/kernels.py --labels all --backends numpy
    python benchmarks/kernels.py --sizes 1024 --kernels   # also the bare kernels
    python benchmarks/kernels.py --backends jax           # JAX under jax.jit (labels traced, concrete)

For every backend, label regime and loss: the median time of the loss with the kernels'
NumPy body and with their numba body (``triplet_ref.mining.force_body``), alternated call
by call so both see the same machine load, and each as a ratio to the backend's
``pairwise_distances`` measured in the same run.  Targets (issue #9 item 6): every loss
≤ 2× its backend's distances at B = 4096 on P x K batches (K = 4), printed as met / not met
per body.  torch rows: forward (``fwd``) and forward + backward (``fwd+bwd``).
jax rows: every call is a ``jax.jit``-compiled function (compiled before timing, timed
to ``block_until_ready``), forward and forward + backward (``jax.value_and_grad`` in the
embeddings); ``traced`` passes the labels as a jit argument (the usual way; the main
figure), ``concrete`` closes over them (the labels are constants of the compiled
function).  ``batch_hard``'s kernel is its choice step (``mining.HARDEST``: the hardest
positive and negative per row from ``d`` and the labels); ``batch_contrastive``'s is its
fused pass over the pairs (``mining.CONTRASTIVE_SUMS``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import triplet_ref as tr  # noqa: E402
from triplet_ref import mining  # noqa: E402
from triplet_ref.testing.regimes import REGIMES, make_labels  # noqa: E402

LOSSES = ("batch_all", "batch_semihard", "batch_hard", "batch_contrastive", "batch_all_soft")
BODIES = ("numpy", "numba")
TARGET = 2.0


def _call(loss, y, x):
    if loss == "pairwise_distances":
        return tr.pairwise_distances(x)
    if loss == "batch_all_soft":
        return tr.batch_all(y, x, 1.0, soft=True)
    return getattr(tr, loss)(y, x, 1.0)


def _jax_step(loss, y, x, mode, labels):
    """A jitted JAX callable of the loss (compiled by the first call), timed to
    ``block_until_ready``. ``labels``: ``"traced"`` (a jit argument) or ``"concrete"``."""
    import jax

    def value(y, x):
        out = _call(loss, y, x)
        return out.sum() if out.ndim else out

    f = jax.value_and_grad(value, argnums=1) if mode == "fwd+bwd" else value
    if labels == "traced":
        g = jax.jit(f)
        return lambda: jax.block_until_ready(g(y, x))
    g = jax.jit(lambda x: f(y, x))
    return lambda: jax.block_until_ready(g(x))


def _step(backend, loss, y, x, mode):
    if backend == "numpy":
        return lambda: _call(loss, y, x)
    if backend.startswith("jax"):
        return _jax_step(loss, y, x, mode, backend.split("-", 1)[1])
    import torch

    if mode == "fwd":
        def run():
            with torch.no_grad():
                return _call(loss, y, x)
        return run

    def run_bwd():
        xx = x.detach().requires_grad_(True)
        out = _call(loss, y, xx)
        (out.sum() if out.ndim else out).backward()
        return out
    return run_bwd


STAT = np.median  # --stat min: the minimum (steadier on a loaded machine)
CLOCK = time.perf_counter  # --clock cpu: the process's CPU time (every thread's, summed)


def _median_pair(fns, repeats, min_time):
    """Median (``--stat``) of each callable, calls alternated (the same load for each)."""
    for f in fns:
        f()  # warm-up: numba compiles or loads its cache here
    times = [[] for _ in fns]
    t_end = time.perf_counter() + min_time
    while len(times[0]) < repeats or (time.perf_counter() < t_end and len(times[0]) < 3 * repeats):
        for f, ts in zip(fns, times):
            t0 = CLOCK()
            f()
            ts.append(CLOCK() - t0)
    return [float(STAT(ts)) for ts in times]


def _bodies(fn):
    def with_body(body):
        def run():
            with mining.force_body(body):
                return fn()
        return run
    return [with_body(b) for b in BODIES]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4096")
    p.add_argument("--backends", default="numpy,torch",
                   help="numpy, torch, jax (= jax-traced,jax-concrete), jax-traced, jax-concrete")
    p.add_argument("--labels", default="pk4", help="comma-separated regimes, or 'all'")
    p.add_argument("--losses", default=",".join(LOSSES[:4]))
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-time-s", type=float, default=1.0)
    p.add_argument("--kernels", action="store_true", help="also time the bare kernels (numpy backend)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic of the repeats (min: steadier on a shared, loaded machine)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: CPU time of the process (threads summed), which other processes' load "
                        "barely changes; with --torch-threads 1 on a loaded machine")
    p.add_argument("--jax-bridge", choices=("auto", "pure_callback"), default="auto",
                   help="pure_callback: the JAX bridge's fallback for JAX without buffer_callback "
                        "(the bridge before it, for a before/after comparison)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch.set_num_threads(N) (0: torch's default); 1 on a loaded machine")
    args = p.parse_args(argv)
    global STAT, CLOCK
    STAT = np.min if args.stat == "min" else np.median
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.torch_threads > 0 and "torch" in args.backends:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.jax_bridge == "pure_callback":
        from triplet_ref.backends import _jax

        _jax._buffer_callback = None  # read when a bridge is traced: every jit below
    regimes = REGIMES if args.labels == "all" else tuple(args.labels.split(","))
    losses = tuple(args.losses.split(","))
    if not mining.numba_available():
        sys.exit("numba is not importable: pip install 'triplet_ref[numba]'")

    print(f"# kernels: NumPy body vs numba body, {args.dtype}, D = {args.dim}, jax bridge {args.jax_bridge}, "
          f"{os.cpu_count()} CPUs, numba {__import__('numba').__version__}")
    print(f"{'backend':12s} {'mode':7s} {'B':>5s} {'labels':20s} {'loss':18s} "
          f"{'numpy ms':>9s} {'numba ms':>9s} {'speed-up':>8s} {'ratio np':>8s} {'ratio nb':>8s}  target")
    for b in map(int, args.sizes.split(",")):
        rng = np.random.default_rng(0)
        x_np = rng.standard_normal((b, args.dim)).astype(args.dtype)
        backends = [n for be in args.backends.split(",")
                    for n in (("jax-traced", "jax-concrete") if be == "jax" else (be,))]
        for be in backends:
            modes = ("fwd",) if be == "numpy" else ("fwd", "fwd+bwd")
            if be == "torch":
                import torch

                x = torch.from_numpy(x_np)
            elif be.startswith("jax"):
                import jax.numpy as jnp

                x = jnp.asarray(x_np)
            else:
                x = x_np
            for regime in regimes:
                y_np = make_labels(regime, b, seed=0)
                y = (y_np if be == "numpy" else jnp.asarray(y_np) if be.startswith("jax")
                     else torch.from_numpy(y_np))
                for mode in modes:
                    dist = _median_pair([_step(be, "pairwise_distances", y, x, mode)], args.repeats,
                                        args.min_time_s)[0]
                    print(f"{be:12s} {mode:7s} {b:5d} {regime:20s} {'pairwise_distances':18s} "
                          f"{dist * 1e3:9.1f}", flush=True)
                    for loss in losses:
                        t_np, t_nb = _median_pair(_bodies(_step(be, loss, y, x, mode)), args.repeats,
                                                  args.min_time_s)
                        target = ""
                        if regime == "pk4" and b == 4096 and loss != "batch_all_soft":
                            target = " ".join(f"{name}: {'met' if t / dist <= TARGET else 'not met'}"
                                              for name, t in (("numpy", t_np), ("numba", t_nb)))
                        print(f"{be:12s} {mode:7s} {b:5d} {regime:20s} {loss:18s} {t_np * 1e3:9.1f} "
                              f"{t_nb * 1e3:9.1f} {t_np / t_nb:7.2f}x {t_np / dist:7.2f}x "
                              f"{t_nb / dist:7.2f}x  {target}", flush=True)
            if args.kernels and be == "numpy":
                _kernels(x_np, regimes, args)


def _kernels(x, regimes, args):
    from triplet_ref.mining import batch_all as ba, contrastive as cs, hardest as hd, semihard as sh

    d = np.asarray(tr.pairwise_distances(x))
    B = d.shape[0]
    m = d.dtype.type(1.0)
    for regime in regimes:
        y = make_labels(regime, B, seed=0)
        pos = (y[:, None] == y[None]) & ~np.eye(B, dtype=bool)
        neg = y[:, None] != y[None]
        g = np.ones_like(d)
        count = ba.batch_all_forward(d, pos, neg, m)[1]
        slope = ba.soft_forward(d, pos, neg, m)[2] if regime.startswith("pk") else None
        cases = [("hinge forward", ba.HINGE.kernel.forward, (d, pos, neg, m)),
                 ("hinge backward", ba.HINGE.kernel.backward, (d, pos, neg, m, g, count)),
                 ("semi-hard choice", sh.CHOICE.kernel.forward, (d, neg, pos)),
                 ("contrastive sums", cs.SUMS.kernel.forward, (d * d, pos, neg, m)),
                 ("contrastive grad", cs.SUMS.kernel.backward, (d * d, pos, neg, m, m, m)),
                 ("hardest choice", hd.CHOICE.kernel.forward, (d, y, y, np.asarray(0)))]
        if slope is not None:
            cases += [("soft forward", ba.SOFT.kernel.forward, (d, pos, neg, m)),
                      ("soft backward", ba.SOFT.kernel.backward, (d, pos, neg, m, g, slope))]
        for name, k, a in cases:
            t_np, t_nb = _median_pair([lambda k=k, a=a: k.numpy(*a), lambda k=k, a=a: k.numba(*a)],
                                      args.repeats, args.min_time_s)
            print(f"{'kernel':12s} {'':7s} {B:5d} {regime:20s} {name:18s} {t_np * 1e3:9.1f} "
                  f"{t_nb * 1e3:9.1f} {t_np / t_nb:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
