"""Label-regime ratios measured back to back in one process (issue #9 item 3).

    python benchmarks/regime_ratios.py                      # numpy forward, B = 4096
    python benchmarks/regime_ratios.py --backend torch --mode forward_backward
    TRIPLET_REF_NUMBA=0 python benchmarks/regime_ratios.py  # the pure-NumPy kernels
    OPENBLAS_NUM_THREADS=1 python benchmarks/regime_ratios.py --cpu   # single-core CPU time

For each loss, the P×K (K = 4) batch and every other regime of
``triplet_ref.testing.regimes.REGIMES`` run alternately, ``--repeat`` rounds, best time of
each; each regime is printed as its ratio to P×K with the target (≤ 2×) met / not met.
``--cpu`` times the calling thread's CPU time instead of the wall clock, with the kernels'
threads off: single-core work, which a loaded machine disturbs much less than wall time
(run it with ``OPENBLAS_NUM_THREADS=1`` so the distances' GEMM is counted too).
``benchmarks/run.py --labels`` measures the same in fresh subprocesses (one configuration
at a time, so a loaded machine shifts the ratios more); this script is the quick check.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triplet_ref as tr  # noqa: E402
from triplet_ref.testing.regimes import REGIMES, make_labels  # noqa: E402

LOSSES = ("batch_all", "batch_hard", "batch_semihard", "batch_contrastive")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--b", type=int, default=4096)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--backend", choices=("numpy", "torch"), default="numpy")
    p.add_argument("--mode", choices=("forward", "forward_backward"), default="forward")
    p.add_argument("--losses", default="batch_all,batch_semihard")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--cpu", action="store_true", help="the calling thread's CPU time, kernel threads off")
    p.add_argument("--numba-threads", choices=("on", "off"), default="on",
                   help="the numba kernels' row-block threads (mining._numba.ROW_THREADS)")
    args = p.parse_args(argv)
    if args.backend == "numpy" and args.mode != "forward":
        p.error("numpy has no backward: --mode forward")
    losses = [s for s in args.losses.split(",") if s]
    for loss in losses:
        if loss not in LOSSES:
            p.error(f"--losses: unknown {loss!r}")
    x = np.random.default_rng(0).standard_normal((args.b, args.dim)).astype(np.float32)
    regimes = ["pk4"] + [r for r in REGIMES if r != "pk4"]
    clock = time.perf_counter
    from triplet_ref.mining import _numba

    _numba.ROW_THREADS = args.numba_threads == "on"
    if args.cpu:
        from triplet_ref.mining import _blocks

        _blocks.THREAD_MIN_ELEMENTS = 1 << 62
        clock = time.thread_time

    if args.backend == "torch":
        import torch

        xt = torch.tensor(x)

    def job(loss, regime):
        y = make_labels(regime, args.b, seed=0)
        fn = getattr(tr, loss)
        if args.backend == "numpy":
            return lambda: fn(y, x, args.margin)
        yt = torch.tensor(y)
        if args.mode == "forward":
            def run():
                with torch.no_grad():
                    fn(yt, xt, args.margin)
            return run

        def run():
            xg = xt.clone().requires_grad_(True)
            fn(yt, xg, args.margin).backward()
        return run

    print(f"B={args.b} D={args.dim} {args.backend} {args.mode}, best of {args.repeat}"
          f"{' (CPU time, one thread)' if args.cpu else ''}"
          f"{' (numba row threads off)' if args.numba_threads == 'off' else ''} "
          f"(TRIPLET_REF_NUMBA={os.environ.get('TRIPLET_REF_NUMBA', '')!r})")
    for loss in losses:
        jobs = {r: job(loss, r) for r in regimes}
        best = dict.fromkeys(regimes, float("inf"))
        for f in jobs.values():  # warm-up
            f()
        for _ in range(args.repeat):
            for r, f in jobs.items():
                t0 = clock()
                f()
                best[r] = min(best[r], clock() - t0)
        base = best["pk4"]
        print(f"{loss}: pk4 {base * 1e3:.0f} ms")
        for r in regimes[1:]:
            ratio = best[r] / base
            print(f"  {r:22s} {best[r] * 1e3:7.0f} ms  {ratio:5.2f}x  {'met' if ratio <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
