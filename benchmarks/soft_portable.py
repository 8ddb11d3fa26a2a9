"""Portable soft batch_all against hinge batch_all on torch CPU (issue #9 item 3): time and
peak RSS increase of one forward+backward, each configuration in a fresh process.

    python benchmarks/soft_portable.py --sizes 1024,2048
    python benchmarks/soft_portable.py --jax-jit-memory --sizes 768,2048

``--jax-jit-memory``: the portable soft step under ``jax.jit`` with traced labels (its
static-shape anchor blocks), float64: XLA's temporary memory for the compiled loss and for
its gradient (``memory_analysis()``; compiled, not run), with the hinge for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _child(b: int, soft: bool, impl: str, mode: str) -> dict:
    import torch

    sys.path.insert(0, HERE)
    import triplet_ref as tr
    from triplet_ref import mining as M
    from _worker import make_inputs

    y, x = make_inputs(b, 128, 4, 0)
    y = torch.as_tensor(y)
    x = torch.as_tensor(x)
    step = M.BATCH_ALL_SOFT if soft else M.BATCH_ALL_HINGE

    def call():
        z = x.clone().requires_grad_(mode == "forward_backward")
        with M.force(impl, step):
            v = tr.batch_all(y, z, 1.0, soft=soft)
        if mode == "forward_backward":
            v.backward()
        return float(v)

    call_small = tr.batch_all(y[:8], x[:8], 1.0, soft=soft)  # imports, first dispatch
    del call_small
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        value = call()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"b": b, "soft": soft, "impl": impl, "mode": mode, "time_s": min(times),
            "peak_increase_mib": (peak - base) / 1024, "value": value}


def _jax_jit_memory(sizes) -> None:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, os.path.dirname(HERE))
    import triplet_ref as tr
    from triplet_ref import mining as M
    from triplet_ref.testing.regimes import make_labels

    for b in sizes:
        y = jax.numpy.asarray(make_labels("pk4", b, seed=0))
        x = jax.numpy.asarray(np.random.default_rng(0).standard_normal((b, 128)))
        for soft in (False, True):
            def f(z, lab, soft=soft):
                with M.force("portable"):
                    return tr.batch_all(lab, z, 1.0, soft=soft)

            got = []
            for what, g in (("forward", f), ("gradient", jax.grad(f))):
                mem = jax.jit(g).lower(x, y).compile().memory_analysis()
                got.append(f"{what} {mem.temp_size_in_bytes / 2**20:.0f} MiB")
            print(f"B={b} {'soft ' if soft else 'hinge'} [portable, jax.jit, float64]: XLA temporaries "
                  + ", ".join(got), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="1024,2048")
    p.add_argument("--impl", default="portable", choices=("portable", "native", "auto"))
    p.add_argument("--mode", default="forward_backward", choices=("forward", "forward_backward"))
    p.add_argument("--jax-jit-memory", action="store_true",
                   help="XLA's temporary memory under jax.jit (compiled, not run) instead")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.jax_jit_memory:
        _jax_jit_memory([int(s) for s in args.sizes.split(",")])
        return 0
    if args.child:
        print("RESULT " + json.dumps(_child(**json.loads(args.child))))
        return 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    for b in (int(s) for s in args.sizes.split(",")):
        res = {}
        for soft in (False, True):
            cfg = json.dumps({"b": b, "soft": soft, "impl": args.impl, "mode": args.mode})
            out = subprocess.run([sys.executable, __file__, "--child", cfg], env=env, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                print(f"B={b} soft={soft}: failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            res[soft] = r = json.loads(line[0][7:])
            print(f"B={b} {'soft ' if soft else 'hinge'} [{args.impl}, torch, {args.mode}]: "
                  f"{r['time_s'] * 1e3:.0f} ms, peak RSS +{r['peak_increase_mib']:.0f} MiB", flush=True)
        if len(res) == 2:
            print(f"B={b}: soft / hinge = {res[True]['time_s'] / res[False]['time_s']:.2f}× time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
