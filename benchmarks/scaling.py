"""Scaling benchmark (issue #10): chunked vs unchunked losses, and gloo global-batch mining.

    python benchmarks/scaling.py                       # B=4096, batch_hard and batch_all, torch CPU
    python benchmarks/scaling.py --b 16384 --losses hard,all,semi,con --chunk 1024
    python benchmarks/scaling.py --gloo 2              # also 2 gloo processes vs one process

Each measurement runs in a fresh process (``--one``): torch CPU, float32, D=64, labels
drawn from B/4 classes, one warm-up call on 64 rows, then one forward+backward of the whole
batch, timed, with the peak resident-set increase over the baseline (the kernel's high-water
mark, reset before the call; see benchmarks/_worker.py).  Prints a table and the issue's
targets as met / not met, from ratios measured in this run:

* ``chunk_size`` costs <= 1.2x the time of the unchunked call (at the ``--b`` given; the
  issue states it at B = 4096);
* B = 16384 forward+backward within 2 GiB peak increase (only judged when ``--b 16384``).
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


def one(b: int, loss: str, chunk: int | None, threads: int) -> dict:
    import numpy as np
    import torch

    import triplet_ref as tr
    from benchmarks._worker import hwm_bytes, reset_hwm, rss_bytes

    torch.set_num_threads(threads)
    fn = getattr(tr, LOSSES[loss])
    rng = np.random.default_rng(0)
    x0 = torch.as_tensor(rng.normal(size=(b, 64)).astype(np.float32))
    y = torch.as_tensor(rng.integers(0, max(1, b // 4), size=b))
    x = x0.clone().requires_grad_(True)
    fn(y[:64], x0[:64], 0.2, chunk_size=chunk).item()
    base = rss_bytes()
    reset_hwm()
    t = time.perf_counter()
    out = fn(y, x, 0.2, chunk_size=chunk)
    out.backward()
    dt = time.perf_counter() - t
    return {"b": b, "loss": LOSSES[loss], "chunk": chunk, "time_s": dt,
            "peak_increase_mib": (hwm_bytes() - base) / 2**20, "value": float(out.detach())}


def gloo_rank(rank: int, world: int, init: str, b: int, loss: str) -> dict:
    import numpy as np
    import torch
    import torch.distributed as dist

    import triplet_ref as tr

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    fn = getattr(tr, LOSSES[loss])
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(b, 64)).astype(np.float32))
    y = torch.as_tensor(rng.integers(0, max(1, b // 4), size=b))
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


def _run(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True)


def _result(p: subprocess.Popen) -> dict:
    out, _ = p.communicate(timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"a measurement failed (exit {p.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--b", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--losses", default="hard,all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gloo", type=int, default=0, help="also time N gloo processes against one")
    ap.add_argument("--chunked-only", action="store_true",
                    help="measure only the chunked calls (the memory target; no time ratio)")
    ap.add_argument("--one", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--rank", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        b, loss, chunk = int(a.one[0]), a.one[1], 0 if a.one[2] == "none" else int(a.one[2])
        print(json.dumps(one(b, loss, chunk, a.threads)))
        return
    if a.rank is not None:
        r, w, init, b, loss = a.rank
        print(json.dumps(gloo_rank(int(r), int(w), init, int(b), loss)))
        return

    print(f"torch CPU, float32, D=64, B={a.b}, chunk_size={a.chunk}, threads={a.threads}; "
          "one forward+backward per fresh process")
    print(f"| loss | unchunked time (s) | chunked time (s) | time ratio | unchunked peak (MiB) | chunked peak (MiB) |")
    print("|---|---|---|---|---|---|")
    ratios, peaks = [], []
    for loss in a.losses.split(","):
        c = _result(_run(["--one", str(a.b), loss, str(a.chunk), "--threads", str(a.threads)]))
        peaks.append(c["peak_increase_mib"])
        if a.chunked_only:
            print(f"| {LOSSES[loss]} | – | {c['time_s']:.2f} | – | – | {c['peak_increase_mib']:.0f} |")
            continue
        u = _result(_run(["--one", str(a.b), loss, "none", "--threads", str(a.threads)]))
        assert abs(u["value"] - c["value"]) <= 1e-4 * max(1.0, abs(u["value"])), (u, c)
        ratio = c["time_s"] / u["time_s"]
        ratios.append(ratio)
        print(f"| {LOSSES[loss]} | {u['time_s']:.2f} | {c['time_s']:.2f} | {ratio:.2f}x | "
              f"{u['peak_increase_mib']:.0f} | {c['peak_increase_mib']:.0f} |")
    if ratios:
        ok = all(r <= 1.2 for r in ratios)
        print(f"target: chunked time <= 1.2x unchunked at B={a.b}: {'met' if ok else 'not met'} "
              f"(worst {max(ratios):.2f}x)")
    if a.b == 16384:
        ok = all(p <= 2048 for p in peaks)
        print(f"target: B=16384 forward+backward within 2 GiB peak increase (chunked): "
              f"{'met' if ok else 'not met'} (worst {max(peaks):.0f} MiB)")
    if a.gloo > 1:
        loss = a.losses.split(",")[0]
        single = _result(_run(["--rank", "0", "1", "-", str(a.b), loss]))
        with tempfile.TemporaryDirectory() as tmp:
            procs = [_run(["--rank", str(r), str(a.gloo), f"{tmp}/init", str(a.b), loss]) for r in range(a.gloo)]
            ranks = [_result(p) for p in procs]
        slowest = max(r["time_s"] for r in ranks)
        assert all(abs(r["value"] - single["value"]) <= 1e-4 * max(1.0, abs(single["value"])) for r in ranks)
        print(f"gloo, {LOSSES[loss]}, B={a.b} global, 1 thread per process: one process "
              f"{single['time_s']:.2f} s; {a.gloo} processes of B/{a.gloo} rows {slowest:.2f} s "
              f"(slowest rank), {single['time_s'] / slowest:.2f}x; same value on every rank")


if __name__ == "__main__":
    main()
