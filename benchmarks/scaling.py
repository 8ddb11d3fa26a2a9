"""Scaling benchmark (issue #10): chunked vs unchunked losses, peak memory at large B, and
gloo global-batch mining; prints the issue's targets as met / not met.

    python benchmarks/scaling.py                  # the targets below except B = 65536 (~10 min)
    python benchmarks/run.py --scaling            # the same, from the main benchmark
    python benchmarks/scaling.py --parts ratio --b 4096 --frameworks torch
    python benchmarks/scaling.py --parts peak --b 16384 --frameworks torch,numpy,jax
    python benchmarks/scaling.py --parts peak --b 65536 --frameworks torch   # long: ~45 min on 2 loaded cores
    python benchmarks/scaling.py --parts gloo --gloo 2

Every measurement runs in a fresh process: float32, D = 64, labels drawn from B/4
classes, the four batch losses (batch_all, batch_hard, batch_semihard,
batch_contrastive, hinge versions); torch forward+backward, NumPy forward, JAX
forward+backward under ``jax.jit`` (``value_and_grad``, compiled before the timed call).
A child whose resident set passes ``--max-rss-gib`` (default 20) is killed.

* ``ratio``: the chunked call (``chunk_size=--chunk``, default 512) against the unchunked
  one (``chunk_size=0``) at ``--b`` (default 4096), in one process per framework and loss,
  alternating, ``--reps`` times each (default 3); the ratio of the fastest wall times
  (judged; target <= 1.2x), and of the fastest process CPU times (all threads; printed,
  less sensitive to other jobs on a shared machine).
* ``peak``: one call at ``--b`` (default 16384) with the default ``chunk_size=None`` (the
  memory budget, ``TRIPLET_REF_MEMORY_BUDGET``), after one warm-up call on 64 rows: its
  wall time and peak resident-set increase over the baseline (the kernel's high-water
  mark, reset before the call; JAX: after compiling).  Targets: B = 16384 within 2 GiB
  increase; B = 65536 completes (on this 24 GiB machine).
* ``gloo``: batch_hard over ``--gloo`` torch gloo processes of B/N rows against one process
  of the whole batch (1 thread each).  Target: every rank's value equals the one-process
  value (the contract); the time ratio is printed, not judged (both share these cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOSSES = {"hard": "batch_hard", "all": "batch_all", "semi": "batch_semihard", "con": "batch_contrastive"}
MODE = {"torch": "forward+backward", "numpy": "forward", "jax": "forward+backward (jit)"}


def _data(b: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.normal(size=(b, 64)).astype(np.float32), rng.integers(0, max(1, b // 4), size=b)


def _caller(fw: str, loss: str, b: int, threads: int):
    """``call(chunk) -> float``: one loss call (and its backward) at B = b, and the data."""
    import triplet_ref as tr

    fn = getattr(tr, LOSSES[loss])
    x0, y0 = _data(b)
    if fw == "torch":
        import torch

        torch.set_num_threads(threads)
        xt, yt = torch.as_tensor(x0), torch.as_tensor(y0)

        def call(chunk, rows=None):
            x = (xt if rows is None else xt[:rows]).clone().requires_grad_(True)
            out = fn(yt if rows is None else yt[:rows], x, 0.2, chunk_size=chunk)
            out.backward()
            return float(out.detach())
        return call
    if fw == "numpy":
        def call(chunk, rows=None):
            return float(fn(y0[:rows], x0[:rows], 0.2, chunk_size=chunk))
        return call
    import jax
    import jax.numpy as jnp

    compiled = {}

    def call(chunk, rows=None):
        key = (chunk, rows)
        x, y = jnp.asarray(x0[:rows]), jnp.asarray(y0[:rows])
        if key not in compiled:
            f = jax.jit(jax.value_and_grad(lambda x, y: fn(y, x, 0.2, chunk_size=chunk)))
            compiled[key] = f.lower(x, y).compile()
        v, g = compiled[key](x, y)
        jax.block_until_ready(g)
        return float(v)
    return call


def one_ratio(fw: str, b: int, loss: str, chunk: int, reps: int, threads: int) -> dict:
    call = _caller(fw, loss, b, threads)
    call(0), call(chunk)  # warm-up (and JAX compilation)
    times = {0: [], chunk: []}
    cpu = {0: [], chunk: []}
    values = {}
    for _ in range(reps):
        for c in (0, chunk):
            t, p = time.perf_counter(), time.process_time()
            values[c] = call(c)
            times[c].append(time.perf_counter() - t)
            cpu[c].append(time.process_time() - p)
    tu, tc = min(times[0]), min(times[chunk])
    return {"fw": fw, "b": b, "loss": LOSSES[loss], "chunk": chunk, "t_unchunked": tu, "t_chunked": tc,
            "ratio": tc / tu, "cpu_ratio": min(cpu[chunk]) / min(cpu[0]),
            "value_unchunked": values[0], "value_chunked": values[chunk]}


def one_peak(fw: str, b: int, loss: str, threads: int) -> dict:
    from benchmarks._worker import hwm_bytes, reset_hwm, rss_bytes
    from triplet_ref.losses._pairs import chunk_rows

    call = _caller(fw, loss, b, threads)
    call(None, rows=64)
    if fw == "jax":  # compile the full-size call first: the peak is the run's, not XLA's
        import jax
        import jax.numpy as jnp

        import triplet_ref as tr

        x0, y0 = _data(b)
        fn = getattr(tr, LOSSES[loss])
        x, y = jnp.asarray(x0), jnp.asarray(y0)
        f = jax.jit(jax.value_and_grad(lambda x, y: fn(y, x, 0.2))).lower(x, y).compile()

        def call(chunk, rows=None):  # noqa: F811
            v, g = f(x, y)
            jax.block_until_ready(g)
            return float(v)
    import numpy as np

    rows = chunk_rows(None, np.empty((b, 64), np.float32))
    base = rss_bytes()
    reset_hwm()
    t = time.perf_counter()
    value = call(None)
    dt = time.perf_counter() - t
    return {"fw": fw, "b": b, "loss": LOSSES[loss], "rows_per_block": rows, "time_s": dt,
            "peak_increase_mib": (hwm_bytes() - base) / 2**20, "value": value}


def gloo_rank(rank: int, world: int, init: str, b: int, loss: str) -> dict:
    import numpy as np
    import torch
    import torch.distributed as dist

    import triplet_ref as tr

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    fn = getattr(tr, LOSSES[loss])
    x0, y0 = _data(b)
    x, y = torch.as_tensor(x0), torch.as_tensor(y0)
    n = b // world
    xl, yl = x[rank * n:(rank + 1) * n].clone().requires_grad_(True), y[rank * n:(rank + 1) * n]
    kw = {"process_group": dist.group.WORLD} if world > 1 else {}
    fn(yl[:8], xl[:8].detach(), 0.2).item()
    if world > 1:
        dist.barrier()
    t = time.perf_counter()
    out = fn(yl, xl, 0.2, **kw)
    out.backward()
    dt = time.perf_counter() - t
    if world > 1:
        dist.destroy_process_group()
    return {"rank": rank, "world": world, "time_s": dt, "value": float(out.detach())}


def _run(args: list[str], threads: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True)


def _rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _result(p: subprocess.Popen, max_rss_gib: float, timeout_s: float) -> dict | None:
    """The child's JSON line; None (and the child killed) past ``max_rss_gib`` or ``timeout_s``."""
    t0 = time.monotonic()
    while p.poll() is None:
        if _rss_gib(p.pid) > max_rss_gib or time.monotonic() - t0 > timeout_s:
            p.kill()
            p.wait()
            print(f"  (killed: resident set > {max_rss_gib} GiB or > {timeout_s:.0f} s)", flush=True)
            return None
        time.sleep(0.5)
    out = p.stdout.read()
    if p.returncode != 0 or not out.strip():
        print(f"  (a measurement failed, exit {p.returncode})", flush=True)
        return None
    return json.loads(out.strip().splitlines()[-1])


def _verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="ratio,peak,gloo", help="comma-separated: ratio,peak,gloo")
    ap.add_argument("--b", type=int, default=None, help="batch size (ratio: 4096, peak: 16384)")
    ap.add_argument("--chunk", type=int, default=512, help="chunk_size of the ratio's chunked call")
    ap.add_argument("--losses", default="all,hard,semi,con", help="comma-separated: all,hard,semi,con")
    ap.add_argument("--frameworks", default="torch,numpy,jax")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gloo", type=int, default=2, help="gloo processes against one")
    ap.add_argument("--max-rss-gib", type=float, default=20.0)
    ap.add_argument("--timeout-s", type=float, default=3600.0, help="per measurement")
    ap.add_argument("--one", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--rank", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        kind, fw, b, loss = a.one[0], a.one[1], int(a.one[2]), a.one[3]
        if kind == "ratio":
            print(json.dumps(one_ratio(fw, b, loss, int(a.one[4]), int(a.one[5]), a.threads)))
        else:
            print(json.dumps(one_peak(fw, b, loss, a.threads)))
        return
    if a.rank is not None:
        r, w, init, b, loss = a.rank
        print(json.dumps(gloo_rank(int(r), int(w), init, int(b), loss)))
        return

    parts = a.parts.split(",")
    losses = a.losses.split(",")
    fws = a.frameworks.split(",")
    targets = []
    print(f"float32, D=64, labels from B/4 classes, {a.threads} threads, one fresh process per measurement; "
          f"torch {MODE['torch']}, numpy {MODE['numpy']}, jax {MODE['jax']}", flush=True)
    if "ratio" in parts:
        b = a.b or 4096
        print(f"\nchunk_size={a.chunk} against chunk_size=0 at B={b} (fastest of {a.reps} alternating calls)")
        print("| framework | loss | unchunked (s) | chunked (s) | ratio | CPU-time ratio |\n|---|---|---|---|---|---|",
              flush=True)
        ratios = []
        for fw in fws:
            for loss in losses:
                r = _result(_run(["--one", "ratio", fw, str(b), loss, str(a.chunk), str(a.reps),
                                  "--threads", str(a.threads)], a.threads), a.max_rss_gib, a.timeout_s)
                if r is None:
                    ratios.append((fw, LOSSES[loss], float("inf")))
                    continue
                vu, vc = r["value_unchunked"], r["value_chunked"]
                assert abs(vu - vc) <= 1e-4 * max(1.0, abs(vu)), r
                ratios.append((fw, r["loss"], r["ratio"]))
                print(f"| {fw} | {r['loss']} | {r['t_unchunked']:.3f} | {r['t_chunked']:.3f} | {r['ratio']:.2f}x | "
                      f"{r['cpu_ratio']:.2f}x |", flush=True)
        worst = max(ratios, key=lambda t: t[2])
        targets.append((f"chunk_size={a.chunk} costs <= 1.2x the unchunked time at B={b}",
                        _verdict(worst[2] <= 1.2), f"worst {worst[2]:.2f}x ({worst[0]} {worst[1]})"))
    if "peak" in parts:
        b = a.b or 16384
        print(f"\nB={b}, default chunk_size=None (memory budget), one call after a 64-row warm-up")
        print("| framework | loss | rows per block | time (s) | peak increase (MiB) |\n|---|---|---|---|---|",
              flush=True)
        peaks, done = [], []
        for fw in fws:
            for loss in losses:
                r = _result(_run(["--one", "peak", fw, str(b), loss, "--threads", str(a.threads)], a.threads),
                            a.max_rss_gib, a.timeout_s)
                done.append(r is not None)
                if r is None:
                    print(f"| {fw} | {LOSSES[loss]} | – | did not complete | – |", flush=True)
                    continue
                peaks.append((fw, r["loss"], r["peak_increase_mib"]))
                print(f"| {fw} | {r['loss']} | {r['rows_per_block'] or 'unchunked'} | {r['time_s']:.1f} | "
                      f"{r['peak_increase_mib']:.0f} |", flush=True)
        if b == 16384:
            worst = max(peaks, key=lambda t: t[2]) if peaks else ("-", "-", float("inf"))
            targets.append((f"B=16384 within 2 GiB peak increase ({','.join(fws)})",
                            _verdict(all(done) and worst[2] <= 2048),
                            f"worst {worst[2]:.0f} MiB ({worst[0]} {worst[1]})"))
        if b >= 65536:
            targets.append((f"B={b} completes under {a.max_rss_gib:g} GiB ({','.join(fws)})", _verdict(all(done)),
                            f"{sum(done)}/{len(done)} completed"))
    if "gloo" in parts and a.gloo > 1:
        b = 4096
        single = _result(_run(["--rank", "0", "1", "-", str(b), "hard"], 1), a.max_rss_gib, a.timeout_s)
        with tempfile.TemporaryDirectory() as tmp:
            procs = [_run(["--rank", str(r), str(a.gloo), f"{tmp}/init", str(b), "hard"], 1) for r in range(a.gloo)]
            ranks = [_result(p, a.max_rss_gib, a.timeout_s) for p in procs]
        ok = single is not None and all(r is not None for r in ranks)
        if ok:
            slowest = max(r["time_s"] for r in ranks)
            ok = all(abs(r["value"] - single["value"]) <= 1e-4 * max(1.0, abs(single["value"])) for r in ranks)
            print(f"\ngloo, batch_hard, B={b} global, 1 thread per process: one process {single['time_s']:.2f} s; "
                  f"{a.gloo} processes of B/{a.gloo} rows {slowest:.2f} s (slowest rank), "
                  f"{single['time_s'] / slowest:.2f}x", flush=True)
        targets.append((f"{a.gloo} gloo processes give the one-process value on every rank (batch_hard, B={b})",
                        _verdict(ok), "time ratio above, not judged"))
    if targets:
        print("\n| target | | |\n|---|---|---|")
        for name, verdict, detail in targets:
            print(f"| {name} | **{verdict}** | {detail} |")


if __name__ == "__main__":
    main()
