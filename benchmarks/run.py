"""Cross-backend benchmark of triplet_ref against its peers (``make bench``).

    python benchmarks/run.py            # quick sweep: the sizes the targets need (~2 min, 2 cores)
    python benchmarks/run.py --full     # B = 128 ... 16384, every loss x backend x mode x peer
    python benchmarks/run.py --sizes 16,32 --backends numpy --impls triplet_ref,dense --out /tmp/b
    python benchmarks/run.py --sizes 4096 --labels all --impls triplet_ref   # every label regime
    python benchmarks/run.py --scaling [ARGS]   # the scaling targets (benchmarks/scaling.py ARGS)

Every configuration (implementation x backend x loss x mode x batch size) runs in a fresh
subprocess (``_worker.py``), which reports the median wall time after a warm-up, the peak
memory *increase* over its baseline (RSS on CPU, the framework's allocator peak on GPU) and
the value, which is compared here with triplet_ref's NumPy value on the same batch.
A configuration predicted to exceed the memory budget (closed-form for the cubic and
all-triplet peers, otherwise scaled from the same series at the previous size) or the time
budget is skipped and reported with its prediction.

Outputs in ``--out`` (default ``benchmarks/out``, which git ignores; ``--results`` writes to
the committed ``benchmarks/results`` instead): ``<tag>.json`` (machine info, settings, every
row, the targets), ``<tag>.md`` (tables and targets), ``<tag>-time.png`` and
``<tag>-memory.png``.

Label regimes (``--labels``, from ``triplet_ref.testing.regimes``): every configuration runs on
the base P x K batches (``--k``, default 4: regime ``pk4``) and, for each regime listed, on a
batch of that regime too; the regime targets compare each with the base in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import impls  # noqa: E402
import report  # noqa: E402
from _worker import default_labels as _worker_default_labels  # noqa: E402

if ROOT not in sys.path:
    sys.path.append(ROOT)
from triplet_ref.testing.regimes import REGIMES  # noqa: E402  (NumPy only: the parent stays light)

FULL_SIZES = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
ALL_LOSSES = impls.LOSSES + impls.SOFT + impls.FLOORS
RESULTS = os.path.join(HERE, "results")  # committed results: written only with --results
SCRATCH = os.path.join(HERE, "out")  # the default output: ignored by git
QUICK_REGIMES = ("two_classes",)  # the few-classes regime of the quick sweep
GIB = 2**30

MEMORY_NOTE = (
    "Peak memory is the increase over a baseline taken in the same fresh process after the "
    "imports, the input creation and one call on a tiny batch: on CPU the resident set size's "
    "high-water mark during the timed calls (first call, with any compilation, reported "
    "separately in the JSON), on GPU the framework allocator's peak."
)


# ------------------------------------------------------------------ planning

def quick_plan(backends, gpu, regimes=QUICK_REGIMES):
    """The configurations the targets need at B = 512 and 1024, and no more (under 3 minutes
    on 2 cores).  The targets stated at B = 4096 and 16384 need ``--full``; where the quick
    sweep has a smaller size, the target lines say which size they were measured at."""
    torch_be = "torch-cuda" if gpu else "torch"
    plan = []

    def add(impl, be, loss, mode, b, labels=None):
        if be in backends and impls.supports(impl, loss, be, mode):
            plan.append(dict(impl=impl, backend=be, loss=loss, mode=mode, b=b, labels=labels))

    # semi-hard vs the dense method at B = 512 (forward)
    for be in backends:
        if be in impls.IMPLS["dense"].backends:
            add("triplet_ref", be, "batch_semihard", "forward", 512)
            add("dense", be, "batch_semihard", "forward", 512)
    b = 1024
    # every loss and the floors, forward, on every backend; soft batch_all on numpy and torch
    for be in backends:
        for loss in ALL_LOSSES:
            if loss in impls.SOFT and be not in ("numpy", torch_be):
                continue
            add("bare" if loss == "matmul" else "triplet_ref", be, loss, "forward", b)
    # batch_all vs pytorch-metric-learning (forward); soft batch_all vs its smooth loss
    add("pml", torch_be, "batch_all", "forward", b)
    add("pml", torch_be, "batch_all_soft", "forward", b)
    # a few-classes regime against the base P x K batches (the mining losses, numpy forward)
    for regime in regimes:
        for loss in ("batch_all", "batch_semihard"):
            add("triplet_ref", "numpy", loss, "forward", b, regime)
    # torch: batch_all and batch_semihard vs sentence-transformers, forward and backward
    for loss in ("batch_all", "batch_semihard"):
        for mode in impls.MODES:
            add("triplet_ref", torch_be, loss, mode, b)
            add("st", torch_be, loss, mode, b)
    seen, out = set(), []
    for c in plan:
        key = (c["impl"], c["backend"], c["loss"], c["mode"], c["b"], c["labels"])
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def grid_plan(sizes, backends, impl_keys, losses, modes, regimes=()):
    plan = []
    for labels in (None, *regimes):
        for b in sizes:
            for impl in impl_keys:
                for be in backends:
                    for loss in losses:
                        for mode in modes:
                            if impls.supports(impl, loss, be, mode):
                                plan.append(dict(impl=impl, backend=be, loss=loss, mode=mode, b=b,
                                                 labels=labels))
    return plan


def series_key(c):
    return (c["impl"], c["backend"], c["loss"], c["mode"], c.get("labels"))


# ------------------------------------------------------------------ running

def worker_env(gpu: bool, threads: int):
    env = dict(os.environ)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if gpu:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    else:
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    return env


def call_worker(cfg: dict, env: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "run.py"), "--worker", json.dumps(cfg)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res["process_wall_s"] = round(wall, 2)
            return res
    if proc.returncode < 0:
        why = f"killed by signal {-proc.returncode}"
        if -proc.returncode == 9:
            why += " (out of memory?)"
    else:
        why = f"exit code {proc.returncode}"
    tail = (proc.stderr or "").strip().splitlines()[-3:]
    return {"status": "failed", "reason": why, "stderr_tail": tail}


def predict(cfg, series_last, k):
    """Predicted (peak bytes, seconds per call) from closed forms or the previous size."""
    spec = impls.IMPLS[cfg["impl"]]
    mem = impls.predicted_bytes(cfg["impl"], cfg["loss"], cfg["mode"], cfg["b"], k)
    secs = None
    last = series_last.get(series_key(cfg))
    if last is not None and last["status"] == "ok":
        scale = (cfg["b"] / last["b"]) ** spec.growth
        secs = last["time_s"] * scale
        if mem is None:  # no closed form: scale the previous size's measured peak
            mem = max(last["peak_bytes"], 0) * scale
    return mem, secs


def budget_gib(cfg, args):
    """The memory budget: the peers' is --mem-budget-gib; triplet_ref's own rows (and the matmul
    floor) get --own-mem-budget-gib, so that the B = 16384 target is measured, not predicted."""
    if cfg["impl"] in ("triplet_ref", "bare"):
        return max(args.mem_budget_gib, args.own_mem_budget_gib)
    return args.mem_budget_gib


def run_plan(plan, args, env, gpu, log):
    results = []
    series_last: dict = {}
    progress = report.progress_bar(len(plan))
    t_start = time.perf_counter()
    with progress as bar:
        task = bar.add_task("benchmark", total=len(plan))
        for cfg in plan:
            name = f"{impls.IMPLS[cfg['impl']].label}[{cfg['backend']}] {cfg['loss']} {cfg['mode']} B={cfg['b']} {cfg['labels']}"
            bar.update(task, description=name)
            row = dict(cfg)
            last = series_last.get(series_key(cfg))
            mem, secs = predict(cfg, series_last, args.k)
            row["predicted_bytes"] = mem
            row["predicted_s"] = secs
            if last is not None and last["status"] != "ok":
                row.update(status="skipped", reason=f"{last['status']} at B={last['b']}")
            elif mem is not None and mem > budget_gib(cfg, args) * GIB:
                row.update(status="skipped",
                           reason=f"predicted {mem / GIB:.1f} GiB > budget {budget_gib(cfg, args):g} GiB")
            elif secs is not None and secs > args.time_budget_s:
                row.update(status="skipped",
                           reason=f"predicted {secs:.0f} s per call > budget {args.time_budget_s:g} s")
            else:
                wcfg = dict(cfg, k=args.k, d=args.dim, seed=args.seed, threads=args.threads,
                            min_repeats=args.min_repeats, max_repeats=args.repeats,
                            min_time_s=args.min_time_s, long_call_s=args.long_call_s,
                            single_call=secs is not None and secs > args.single_call_s)
                row.update(call_worker(wcfg, env, args.timeout_s))
            series_last[series_key(cfg)] = row
            results.append(row)
            log(report.progress_line(row))
            bar.advance(task)
    return results, time.perf_counter() - t_start


# ------------------------------------------------------------------ agreement

def run_accuracy(args, env, gpu, log):
    """``benchmarks/accuracy.py`` in a fresh process (CPU backends only): its JSON result,
    or a failed row.  B = 4096 with --full, else 1024."""
    if gpu:
        return None
    b = 4096 if args.full else 1024
    cmd = [sys.executable, os.path.join(HERE, "accuracy.py"), "--json", "--b", str(b),
           "--repeats", str(max(5, args.repeats))]
    log(f"accuracy and refinement cost (benchmarks/accuracy.py --b {b}) ...")
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        return {"rows": [{"mode": "all", "status": "failed", "reason": "timed out"}]}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("ACCURACY "):
            return json.loads(line[len("ACCURACY "):])
    tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
    return {"rows": [{"mode": "all", "status": "failed", "reason": f"exit code {proc.returncode}: {tail}"}]}


def add_agreement(results, args, tol=1e-4):
    """Compare every value with triplet_ref's NumPy forward value on the same batch."""
    ref = {}
    for r in results:
        if r["status"] == "ok" and r["mode"] == "forward" and r["backend"] == "numpy" and r["impl"] in ("triplet_ref", "bare"):
            ref[(r["loss"], r["b"], r.get("labels"))] = r["value"]
    computed = {}

    def reference(loss, b, labels):
        if (loss, b, labels) in ref:
            return ref[(loss, b, labels)], "numpy"
        if (loss, b, labels) not in computed:
            computed[(loss, b, labels)] = _numpy_value(loss, b, args, labels)
        return computed[(loss, b, labels)], "numpy (computed by the runner)"

    for r in results:
        if r["status"] != "ok":
            continue
        why = impls.IMPLS[r["impl"]].differs.get(r["loss"])
        if why:
            r["agreement"] = {"status": "n/a", "reason": f"differs: {why}"}
            continue
        value, src = reference(r["loss"], r["b"], r.get("labels"))
        if value is None:
            r["agreement"] = {"status": "n/a", "reason": "no NumPy value"}
            continue
        rel = abs(r["value"] - value) / max(abs(value), 1e-12)
        r["agreement"] = {"status": "ok" if rel <= tol else "mismatch", "rel_diff": rel,
                          "reference": value, "against": src, "tol": tol}


def _numpy_value(loss, b, args, labels=None):
    try:
        import _worker

        y, x = _worker.make_inputs(b, args.dim, args.k, args.seed, labels)
        f = impls.build("bare" if loss == "matmul" else "triplet_ref", loss, "numpy")
        import numpy as np

        out = np.asarray(f(y, x), dtype=np.float64)
        return float(out) if out.ndim == 0 else float(out.sum())
    except Exception:  # noqa: BLE001 - reported as "no NumPy value"
        return None


# ------------------------------------------------------------------ main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--report", metavar="JSON",
                   help="only re-render the targets, markdown and plots of an existing results file")
    p.add_argument("--full", action="store_true", help="B = 128 ... 16384, every combination")
    p.add_argument("--sizes", help="comma-separated batch sizes (a full grid over them)")
    p.add_argument("--backends", help="comma-separated: numpy,torch,jax (GPU: torch-cuda,jax-gpu,cupy)")
    p.add_argument("--impls", help="comma-separated subset of: " + ",".join(impls.IMPLS))
    p.add_argument("--losses", help="comma-separated subset of: " + ",".join(ALL_LOSSES))
    p.add_argument("--modes", help="comma-separated subset of: forward,forward_backward")
    p.add_argument("--labels", help="comma-separated label regimes to run besides the base P x K batches "
                   "(or 'all'): " + ",".join(REGIMES) + "; the quick sweep's default is "
                   + ",".join(QUICK_REGIMES))
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: the GPU backends when a CUDA GPU is usable, else the CPU ones")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all available cores)")
    p.add_argument("--mem-budget-gib", type=float, default=8.0)
    p.add_argument("--own-mem-budget-gib", type=float, default=None,
                   help="memory budget for triplet_ref's own configurations (default 60%% of RAM, "
                        "at least --mem-budget-gib)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="skip a configuration predicted to take longer per call (default 60 full, 20 otherwise)")
    p.add_argument("--repeats", type=int, default=None, help="most timed calls (default 10 full, 5 otherwise)")
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--min-time-s", type=float, default=None,
                   help="time the calls until this much has elapsed (default 1 full, 0.3 otherwise)")
    p.add_argument("--long-call-s", type=float, default=None,
                   help="a configuration whose warm-up call takes longer is timed once (default 10 full, 1 otherwise)")
    p.add_argument("--single-call-s", type=float, default=30.0,
                   help="a configuration predicted to take longer per call is timed by one call, "
                        "without a separate warm-up (default 30)")
    p.add_argument("--timeout-s", type=float, default=None, help="per-configuration limit")
    p.add_argument("--k", type=int, default=4, help="examples per class (P x K batches)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="output folder (default benchmarks/out, ignored by git; see --results)")
    p.add_argument("--results", action="store_true",
                   help="write to the committed benchmarks/results (results made on purpose)")
    p.add_argument("--tag", help="output name (default cpu-<n>core or the GPU's name)")
    p.add_argument("--accuracy", action="store_true",
                   help="also run benchmarks/accuracy.py (float32 accuracy vs float64 and the close-pair "
                        "refinement's cost; about a minute on 2 cores, so --full only by default)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no per-configuration lines")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.k < 2:
        p.error("--k must be >= 2 (P x K batches need positives)")
    if args.results and args.out:
        p.error("--results and --out are exclusive: --results writes to benchmarks/results")
    args.out = RESULTS if args.results else (args.out or SCRATCH)
    return args


def _csv(s, allowed, what):
    items = [t.strip() for t in s.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        sys.exit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--scaling" in argv:  # issue #10's targets: benchmarks/scaling.py, its own options
        argv.remove("--scaling")
        return subprocess.call([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaling.py"),
                                *argv])
    args = parse_args(argv)
    if args.worker:
        import _worker

        return _worker.main(args.worker)
    if args.report:
        return rerender(args.report, args.no_plots)
    exhaustive = args.full or args.sizes
    args.time_budget_s = args.time_budget_s or (60.0 if args.full else 20.0)
    args.repeats = args.repeats or (10 if args.full else 5)
    args.min_time_s = args.min_time_s if args.min_time_s is not None else (1.0 if args.full else 0.3)
    args.long_call_s = args.long_call_s or (10.0 if args.full else 1.0)
    if args.own_mem_budget_gib is None:
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
        except (ValueError, OSError, AttributeError):
            ram = 0.0
        args.own_mem_budget_gib = round(max(args.mem_budget_gib, 0.6 * ram), 1)
    args.timeout_s = args.timeout_s or (10 * args.time_budget_s + 120)
    if args.threads is None:
        try:
            args.threads = len(os.sched_getaffinity(0))
        except AttributeError:
            args.threads = os.cpu_count() or 1

    backends_arg = _csv(args.backends, impls.CPU_BACKENDS + impls.GPU_BACKENDS, "backend") if args.backends else None
    impl_keys = _csv(args.impls, tuple(impls.IMPLS), "implementation") if args.impls else list(impls.IMPLS)
    losses = _csv(args.losses, ALL_LOSSES, "loss") if args.losses else list(ALL_LOSSES)
    modes = _csv(args.modes, impls.MODES, "mode") if args.modes else list(impls.MODES)
    base = _worker_default_labels(args.k)
    if args.labels:
        regimes = list(REGIMES) if args.labels.strip() == "all" else _csv(args.labels, REGIMES, "label regime")
        regimes = [r for r in regimes if r != base]
    else:
        regimes = None
    console = report.console()
    log = (lambda s: None) if args.quiet else (lambda s: console.print(s, markup=False))
    t0 = time.perf_counter()
    # the GPU environment: CUDA stays visible so the probe can find a device
    info = call_worker({"info": True, "threads": args.threads}, worker_env(True, args.threads), 300)
    gpu = {"auto": bool(info.get("cuda")), "cpu": False, "gpu": True}[args.device]
    if gpu and not info.get("cuda"):
        sys.exit("--device gpu: no usable CUDA GPU (torch.cuda.is_available() is False)")
    if gpu:
        default_be = ["torch-cuda"] + (["jax-gpu"] if info.get("jax_gpu") else []) + (["cupy"] if info.get("cupy") else [])
    else:
        default_be = list(impls.CPU_BACKENDS)
    backends = backends_arg or default_be
    if exhaustive:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(FULL_SIZES)
        if any(s < 2 * args.k or s % args.k for s in sizes):
            sys.exit(f"--sizes: every size must be a multiple of K={args.k} and at least {2 * args.k}")
        plan = grid_plan(sizes, backends, impl_keys, losses, modes, regimes or ())
    else:
        plan = quick_plan(backends, gpu, QUICK_REGIMES if regimes is None else regimes)
        plan = [c for c in plan if c["impl"] in impl_keys and c["loss"] in losses and c["mode"] in modes]
    for c in plan:
        c["labels"] = c.get("labels") or base
    plan.sort(key=lambda c: (c["labels"] != base, c["labels"], c["b"], list(impls.IMPLS).index(c["impl"]),
                             c["backend"], ALL_LOSSES.index(c["loss"]), c["mode"]))
    if not plan:
        sys.exit("nothing to run: the filters leave no configuration")

    tag = args.tag or (_slug("gpu-" + info.get("gpu", "cuda")) if gpu else f"cpu-{args.threads}core")
    log(f"triplet_ref benchmark -> {args.out}/{tag}.*  ({len(plan)} configurations, "
        f"{args.threads} threads, budget {args.mem_budget_gib:g} GiB / {args.time_budget_s:g} s per call)")
    results, elapsed = run_plan(plan, args, worker_env(gpu, args.threads), gpu, log)
    add_agreement(results, args)
    accuracy_doc = None
    if args.accuracy or args.full:
        accuracy_doc = run_accuracy(args, worker_env(gpu, args.threads), gpu, log)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python benchmarks/run.py"] + [shlex.quote(a) for a in argv_list])
    settings = {k: v for k, v in vars(args).items() if k not in ("worker",)}
    settings.update(backends=backends, impls=impl_keys, losses=losses, modes=modes, base_labels=base,
                    labels=sorted({c["labels"] for c in plan}),
                    sweep="full" if args.full else ("grid" if exhaustive else "quick"),
                    device="gpu" if gpu else "cpu")
    doc = {
        "tag": tag,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "sweep_s": round(elapsed, 1),
        "machine": info,
        "triplet_ref_commit": _git_commit(),
        "settings": settings,
        "memory_note": MEMORY_NOTE,
        "notes": {f"{impls.IMPLS[i].label}: {loss}": n for i in impls.IMPLS
                  for loss, n in impls.IMPLS[i].notes.items()},
        "results": results,
        "accuracy": accuracy_doc,
    }
    doc["targets"] = report.targets(doc)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, tag)
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    md = report.markdown(doc)
    with open(base + ".md", "w") as f:
        f.write(md)
    if not args.no_plots:
        report.plots(doc, base)
    console.print(report.console_summary(doc), markup=False)
    console.print(f"wrote {base}.json, {base}.md" + ("" if args.no_plots else f", {base}-time.png, {base}-memory.png")
                  + f" in {doc['elapsed_s']:.0f} s", markup=False)
    return 0


def rerender(path, no_plots=False) -> int:
    with open(path) as f:
        doc = json.load(f)
    doc["targets"] = report.targets(doc)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    base = path[: -len(".json")] if path.endswith(".json") else path
    with open(base + ".md", "w") as f:
        f.write(report.markdown(doc))
    if not no_plots:
        report.plots(doc, base)
    report.console().print(report.console_summary(doc), markup=False)
    return 0


def _git_commit():
    """The repository's commit, with '+dirty' when triplet_ref/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "triplet_ref"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _slug(s):
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


if __name__ == "__main__":
    sys.exit(main())
