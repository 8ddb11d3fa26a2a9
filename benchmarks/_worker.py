"""One benchmark configuration, measured in a fresh process.

Run by ``benchmarks/run.py`` as ``python benchmarks/run.py --worker '<json config>'``; prints
one line ``RESULT <json>``.  Memory is reported as the *increase* over a baseline taken after
the imports, the input creation and one call on a tiny batch (which loads whatever the
framework loads lazily), so the imports do not dominate:

* CPU: resident set size.  ``peak_bytes`` is the high-water mark during the timed calls (the
  kernel's ``VmHWM``, reset through ``/proc/self/clear_refs`` after the warm-up), minus the
  baseline; ``peak_first_bytes`` is the same for the first call (jit compilation included).
  Where the counter cannot be reset, ``getrusage(RUSAGE_SELF).ru_maxrss`` is used (it then
  includes the warm-up).  ``baseline_bytes`` is reported too.
* GPU: the framework's allocator peak (``torch.cuda.max_memory_allocated``, JAX's
  ``peak_bytes_in_use``, a CuPy memory hook), minus the bytes allocated at the baseline.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


# ---------------------------------------------------------------- inputs

def make_inputs(b: int, d: int, k: int, seed: int, labels: str | None = None):
    """A labelled batch, float32: labels of the regime ``labels`` (``triplet_ref.testing.regimes``:
    ``pk4``, ``two_classes``, ...), by default P x K (K examples of each of B/K classes), shuffled.

    Embeddings are class centres scaled by 0.3 plus unit noise: classes overlap enough that
    many triplets violate the margin of 1 and semi-hard negatives exist, as mid-training.
    """
    import numpy as np

    from triplet_ref.testing.regimes import REGIMES, make_labels, pk_labels

    rng = np.random.default_rng(seed)
    regime = labels or default_labels(k)
    if regime in REGIMES:
        y = make_labels(regime, b, seed)
    else:  # P x K with a K that is no named regime
        if b % k:
            raise ValueError(f"batch size {b} is not a multiple of K={k}")
        y = pk_labels(b, k)[rng.permutation(b)]
    ids, y = np.unique(y, return_inverse=True)
    centres = rng.standard_normal((ids.size, d)).astype(np.float32)
    noise = rng.standard_normal((b, d)).astype(np.float32)
    emb = (0.3 * centres[y] + noise).astype(np.float32)
    return y.astype(np.int64), emb


def default_labels(k: int) -> str:
    """The sweep's base label regime: P x K with the ``--k`` examples per class."""
    return f"pk{k}"


# ---------------------------------------------------------------- memory probes

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def hwm_bytes() -> int:
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else maxrss_bytes()


class CupyPeak:
    """Tracks the peak of CuPy's bytes in use with a memory hook."""

    def __init__(self):
        import cupy

        self.cupy = cupy
        pool = cupy.get_default_memory_pool()
        self.pool = pool
        self.peak = pool.used_bytes()
        hook_base = cupy.cuda.MemoryHook
        outer = self

        class Hook(hook_base):
            name = "peak"

            def malloc_postprocess(self, **kw):
                outer.peak = max(outer.peak, outer.pool.used_bytes())

            def alloc_postprocess(self, **kw):
                outer.peak = max(outer.peak, outer.pool.used_bytes())

        self.hook = Hook()
        self.hook.__enter__()

    def used(self):
        return self.pool.used_bytes()

    def reset(self):
        self.peak = self.pool.used_bytes()


# ---------------------------------------------------------------- backends

class Backend:
    def __init__(self, name: str):
        self.name = name
        self.lib = name.split("-")[0]
        self.gpu = name in ("torch-cuda", "jax-gpu", "cupy")
        if self.lib == "torch":
            import torch

            self.torch = torch
            self.device = torch.device("cuda" if self.gpu else "cpu")
            if self.gpu and not torch.cuda.is_available():
                raise RuntimeError("no CUDA device for torch")
        elif self.lib == "jax":
            import jax

            self.jax = jax
            self.device = jax.devices("gpu" if self.gpu else "cpu")[0]
        elif self.lib == "cupy":
            import cupy

            self.cupy = cupy
            self.peak_hook = CupyPeak()

    def convert(self, labels, emb):
        if self.lib == "numpy":
            return labels, emb
        if self.lib == "torch":
            t = self.torch
            return (t.from_numpy(labels).to(self.device), t.from_numpy(emb).to(self.device))
        if self.lib == "jax":
            import numpy as np

            put = self.jax.device_put
            return put(labels.astype(np.int32), self.device), put(emb, self.device)
        return self.cupy.asarray(labels), self.cupy.asarray(emb)

    def sync(self, out):
        if self.lib == "torch" and self.gpu:
            self.torch.cuda.synchronize()
        elif self.lib == "jax":
            self.jax.block_until_ready(out)
        elif self.lib == "cupy":
            self.cupy.cuda.get_current_stream().synchronize()

    def to_float(self, out) -> float:
        """A scalar summary of the output: the loss, or the sum of a matrix (float64)."""
        import numpy as np

        if self.lib == "torch":
            out = out.detach().cpu().numpy()
        elif self.lib == "cupy":
            out = out.get()
        out = np.asarray(out, dtype=np.float64)
        return float(out) if out.ndim == 0 else float(out.sum())

    def runner(self, f, labels, emb, mode):
        """A zero-argument function doing one step (forward, or forward + backward)."""
        if mode == "forward":
            if self.lib == "jax":
                jf = self.jax.jit(f)
                return lambda: self._done(jf(labels, emb))
            return lambda: self._done(f(labels, emb))
        if self.lib == "torch":
            x = emb.detach().clone().requires_grad_(True)

            def step():
                x.grad = None
                out = f(labels, x)
                s = out if out.ndim == 0 else out.sum()
                s.backward()
                self.sync(x.grad)
                return s

            return step
        if self.lib == "jax":
            jnp = self.jax.numpy

            def scalar(x, y):
                out = f(y, x)
                return out if out.ndim == 0 else jnp.sum(out)

            vg = self.jax.jit(self.jax.value_and_grad(scalar))

            def step():
                v, g = vg(emb, labels)
                self.jax.block_until_ready(g)
                return v

            return step
        raise ValueError(f"backend {self.name} has no autograd")

    def _done(self, out):
        self.sync(out)
        return out

    # device memory
    def gpu_used(self) -> int:
        if self.lib == "torch":
            return self.torch.cuda.memory_allocated()
        if self.lib == "jax":
            return (self.device.memory_stats() or {}).get("bytes_in_use", 0)
        return self.peak_hook.used()

    def gpu_reset_peak(self):
        if self.lib == "torch":
            self.torch.cuda.reset_peak_memory_stats()
        elif self.lib == "cupy":
            self.peak_hook.reset()
        # JAX's peak_bytes_in_use cannot be reset: it then includes the warm-up

    def gpu_peak(self) -> int:
        if self.lib == "torch":
            return self.torch.cuda.max_memory_allocated()
        if self.lib == "jax":
            return (self.device.memory_stats() or {}).get("peak_bytes_in_use", 0)
        return self.peak_hook.peak


# ---------------------------------------------------------------- the measurement

def set_threads(n: int | None):
    if not n:
        return
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if n < len(cpus):
            os.sched_setaffinity(0, set(cpus[:n]))
    except (AttributeError, OSError):
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass


def measure(cfg: dict) -> dict:
    import impls

    set_threads(cfg.get("threads"))
    backend = Backend(cfg["backend"])
    if backend.lib == "torch" and cfg.get("threads"):
        backend.torch.set_num_threads(cfg["threads"])
    f = impls.build(cfg["impl"], cfg["loss"], cfg["backend"])
    k, d, seed = cfg["k"], cfg["d"], cfg["seed"]

    # prime on a tiny batch: lazy imports, thread pools, kernels' first-use allocations
    y_s, x_s = backend.convert(*make_inputs(4 * k, d, k, seed, cfg.get("labels")))
    backend.runner(f, y_s, x_s, cfg["mode"])()
    del y_s, x_s

    y, x = backend.convert(*make_inputs(cfg["b"], d, k, seed, cfg.get("labels")))
    gc.collect()
    baseline = rss_bytes()
    gpu_base = backend.gpu_used() if backend.gpu else 0
    can_reset = reset_hwm()

    step = backend.runner(f, y, x, cfg["mode"])
    t0 = time.perf_counter()
    out = step()  # warm-up (compilation for jax.jit)
    first = time.perf_counter() - t0
    peak_first = (hwm_bytes() if can_reset else maxrss_bytes()) - baseline
    gpu_peak_first = backend.gpu_peak() - gpu_base if backend.gpu else None

    if cfg.get("single_call"):
        # predicted too long to repeat: the one call is the measurement (no separate warm-up)
        times, peak_timed, gpu_peak = [first], peak_first, gpu_peak_first
    else:
        reset_hwm()
        if backend.gpu:
            backend.gpu_reset_peak()
        # several calls; fewer when each is long
        min_rep = 1 if first >= cfg["long_call_s"] else (2 if first >= 1.0 else cfg["min_repeats"])
        min_rep = min(min_rep, cfg["min_repeats"])
        times = []
        while len(times) < cfg["max_repeats"]:
            t0 = time.perf_counter()
            out = step()
            times.append(time.perf_counter() - t0)
            if len(times) >= min_rep and sum(times) >= cfg["min_time_s"]:
                break
        peak_timed = (hwm_bytes() if can_reset else maxrss_bytes()) - baseline
        gpu_peak = backend.gpu_peak() - gpu_base if backend.gpu else None
    value = backend.to_float(out)
    times_sorted = sorted(times)
    n = len(times_sorted)
    median = (times_sorted[(n - 1) // 2] + times_sorted[n // 2]) / 2
    res = {
        "status": "ok",
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "time_s": median,
        "times_s": times,
        "first_call_s": first,
        "repeats": n,
        "value": value,
        "baseline_bytes": baseline,
        "peak_first_bytes": peak_first,
        "warmup": not cfg.get("single_call"),
        "rss_peak_bytes": peak_timed,
        "rss_peak_method": "VmHWM reset by clear_refs" if can_reset else "ru_maxrss (incl. warm-up)",
    }
    if backend.gpu:
        res["peak_bytes"] = gpu_peak
        res["peak_first_gpu_bytes"] = gpu_peak_first
        res["memory_kind"] = f"{backend.lib} allocator peak (device)"
    else:
        res["peak_bytes"] = res["rss_peak_bytes"]
        res["memory_kind"] = "RSS"
    return res


def machine_info(threads: int | None) -> dict:
    """Machine, thread counts, library versions and BLAS; whether a CUDA GPU is usable."""
    set_threads(threads)
    info: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
    }
    try:
        info["cpus_available"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["cpus_available"] = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    import importlib.metadata as md

    for dist in ("numpy", "torch", "jax", "jaxlib", "cupy-cuda12x", "array-api-compat",
                 "array-api-extra", "pytorch-metric-learning", "sentence-transformers",
                 "triplet_ref", "matplotlib"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    info["versions"] = versions
    import numpy as np

    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["numpy_blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older numpy
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: p.get(k) for k in ("user_api", "internal_api", "version", "num_threads",
                                   "threading_layer", "architecture")}
            for p in threadpool_info()
        ]
    except ImportError:
        pass
    info["cuda"] = False
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        info["torch_num_threads"] = torch.get_num_threads()
        conf = torch.__config__.show()
        info["torch_blas"] = next(
            (ln.strip() for ln in conf.splitlines() if "BLAS_INFO" in ln or "LAPACK_INFO" in ln),
            "",
        )
        if torch.cuda.is_available():
            info["cuda"] = True
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda_version"] = torch.version.cuda
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except ImportError:
        pass
    try:
        import cupy  # noqa: F401

        info["cupy"] = True
    except Exception:  # noqa: BLE001 - cupy raises various errors without a GPU
        info["cupy"] = False
    if info["cuda"]:
        try:
            import jax

            info["jax_gpu"] = bool(jax.devices("gpu"))
        except Exception:  # noqa: BLE001
            info["jax_gpu"] = False
    return info


def main(arg: str) -> int:
    cfg = json.loads(arg)
    try:
        if cfg.get("info"):
            res = machine_info(cfg.get("threads"))
        else:
            res = measure(cfg)
    except NotImplementedError as e:
        res = {"status": "unavailable", "reason": str(e)}
    except ImportError as e:
        res = {"status": "unavailable", "reason": f"{type(e).__name__}: {e}"}
    except MemoryError as e:
        res = {"status": "failed", "reason": f"MemoryError: {e}"}
    except Exception as e:  # noqa: BLE001 - reported in the results, the sweep goes on
        tb = traceback.format_exc(limit=3).strip().splitlines()
        res = {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:300], "traceback": tb[-6:]}
    sys.stdout.write("RESULT " + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
