"""The float32 accuracy target of issue #9 (item 4), and what the close-pair refinement costs.

    python benchmarks/accuracy.py                    # B = 1024 timing, numpy, torch, jax, jax.jit
    python benchmarks/accuracy.py --b 4096 --repeats 11 --compile   # + torch.compile

Accuracy: for each separation ``delta`` in 1e-2 / 1e-3 / 1e-4, a float32 batch of L2-normalised
rows in classes of 4 whose members are ``delta`` apart (B = 64, D = 32); the worst relative error
against the float64 oracle (``triplet_ref.oracles``, on the same float32 values) over every
off-diagonal pair of ``pairwise_distances`` (euclidean, sqeuclidean, cosine) and over every loss
(batch_all, batch_hard hinge and soft, batch_semihard for the three metrics, batch_contrastive).
Target: ≤ 1e-4.

Cost: the median time of ``pairwise_distances`` (euclidean, float32) on the benchmark's P x K
(K = 4) batch with and without the refinement (``triplet_ref.distances.unrefined``: the bare
Gram formula, no search), the two interleaved in one process.  Target: refined ≤ 1.2× unrefined.
Also shown (no target): the same ratio on a batch whose positives are all 1e-3 apart, where
the refinement has work to do.

``benchmarks/run.py`` runs this in a fresh process (``measure``) and adds its targets to the
others; ``targets`` turns a result into target lines.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DELTAS = (1e-2, 1e-3, 1e-4)
RTOL = 1e-4
MAX_RATIO = 1.2
METRICS = ("euclidean", "sqeuclidean", "cosine")
MARGINS = {"euclidean": 1.5, "sqeuclidean": 2.5, "cosine": 1.2}
MODES = ("numpy", "torch", "torch.compile", "jax", "jax.jit")


def close_batch(delta: float, B: int = 64, D: int = 32, seed: int = 0):
    """L2-normalised rows (float32 values, returned in float64) in classes of 4 whose members
    are about ``delta`` apart, and their labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(B // 4), 4)
    c = rng.standard_normal((B // 4, D))
    x = c[labels] / np.linalg.norm(c[labels], axis=1, keepdims=True)
    x = x + delta * rng.standard_normal((B, D)) / np.sqrt(D)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32).astype(np.float64), labels


def _mode_fns(mode):
    """``(to_array, jit)`` for a mode: how to make its float32/label arrays and how to compile
    a function of them (identity when eager)."""
    import numpy as np

    if mode == "numpy":
        return (lambda a, dt=None: np.asarray(a, dtype=dt)), (lambda f: f)
    if mode.startswith("torch"):
        import torch

        def conv(a, dt=None):
            t = torch.as_tensor(np.asarray(a))
            return t.to(getattr(torch, dt)) if dt else t

        if mode == "torch.compile":
            return conv, (lambda f: torch.compile(f, fullgraph=False))
        return conv, (lambda f: f)
    import jax

    def conv(a, dt=None):
        return jax.numpy.asarray(np.asarray(a, dtype=dt) if dt else np.asarray(a))

    return conv, (jax.jit if mode == "jax.jit" else (lambda f: f))


def _to_np(a):
    import numpy as np

    if hasattr(a, "detach"):
        a = a.detach().cpu()
    return np.asarray(a, dtype=np.float64)


def _loss_cases():
    cases = []
    for m in METRICS:
        for name, kw in (("batch_all", {}), ("batch_hard", {}), ("batch_hard", {"soft": True}),
                         ("batch_semihard", {})):
            cases.append((name, dict(kw, metric=m), MARGINS[m]))
    cases.append(("batch_contrastive", {}, MARGINS["euclidean"]))
    return cases


def errors(mode: str, B: int = 64, D: int = 32):
    """``{delta: {"distances": worst rel err, "losses": worst rel err}}`` for one mode."""
    import numpy as np

    import triplet_ref as tr
    from triplet_ref import oracles

    conv, jit = _mode_fns(mode)
    cases = _loss_cases()

    def all_values(x, y):
        d = tuple(tr.pairwise_distances(x, metric=m) for m in METRICS)
        losses = tuple(getattr(tr, name)(y, x, margin, **kw) for name, kw, margin in cases)
        return d, losses

    f = jit(all_values)
    out = {}
    for delta in DELTAS:
        x64, y = close_batch(delta, B, D)
        d, losses = f(conv(x64, "float32"), conv(y))
        off = ~np.eye(B, dtype=bool)
        err_d = 0.0
        for m, dm in zip(METRICS, d):
            ref = oracles.pairwise_distances(x64, metric=m)
            err_d = max(err_d, float((np.abs(_to_np(dm) - ref)[off] / ref[off]).max()))
        err_l = 0.0
        for (name, kw, margin), got in zip(cases, losses):
            want = float(getattr(oracles, name)(y, x64, margin, **kw))
            err_l = max(err_l, abs(float(_to_np(got)) - want) / max(abs(want), 1e-7))
        out[f"{delta:g}"] = {"distances": err_d, "losses": err_l}
    return out


def timing(mode: str, B: int, repeats: int, close: bool = False, D: int = 128):
    """Median seconds of ``pairwise_distances`` with and without the refinement (interleaved)."""
    import numpy as np

    import triplet_ref as tr
    from triplet_ref.distances import unrefined

    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    from _worker import make_inputs

    conv, jit = _mode_fns(mode)
    if close:
        x64, _ = close_batch(1e-3, B, D, seed=1)
        x = conv(x64, "float32")
    else:
        x = conv(make_inputs(B, D, 4, 0)[1])

    def sync(r):
        if hasattr(r, "block_until_ready"):
            r.block_until_ready()
        return r

    def dist(z):
        return tr.pairwise_distances(z)

    refined = jit(dist)
    sync(refined(x))
    if mode == "jax.jit":
        import jax

        with unrefined():
            bare = jax.jit(dist).lower(x).compile()  # traced without the refinement
        call_bare = bare
    elif mode == "torch.compile":
        import torch

        torch._dynamo.reset()
        with unrefined():
            bare_fn = jit(dist)
            sync(bare_fn(x))  # compiled with tau = 0 baked in

        def call_bare(z):
            with unrefined():
                return bare_fn(z)
        refined = jit(dist)  # recompiled: the threshold is a guarded constant
        sync(refined(x))
    else:
        def call_bare(z):
            with unrefined():
                return dist(z)
    sync(call_bare(x))
    t_ref, t_bare = [], []
    for _ in range(repeats):
        for fn, ts in ((refined, t_ref), (call_bare, t_bare)):
            t0 = time.perf_counter()
            sync(fn(x))
            ts.append(time.perf_counter() - t0)
    return statistics.median(t_ref), statistics.median(t_bare)


def measure(modes=("numpy", "torch", "jax", "jax.jit"), B: int = 1024, repeats: int = 5,
            close_ratio: bool = True) -> dict:
    """Every mode's errors and refined/unrefined times; a mode that cannot run is reported."""
    rows = []
    for mode in modes:
        row = {"mode": mode}
        try:
            t0 = time.perf_counter()
            row["errors"] = errors(mode)
            tr_, tb = timing(mode, B, repeats)
            row.update(b=B, refined_s=tr_, unrefined_s=tb, ratio=tr_ / tb)
            if close_ratio:
                cr, cb = timing(mode, B, max(3, repeats // 2), close=True)
                row.update(close_refined_s=cr, close_unrefined_s=cb, close_ratio=cr / cb)
            row["wall_s"] = round(time.perf_counter() - t0, 2)
            row["status"] = "ok"
        except Exception as exc:  # reported, not fatal: a missing backend, a compile failure
            row.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:300])
        rows.append(row)
    return {"rtol": RTOL, "max_ratio": MAX_RATIO, "deltas": [f"{d:g}" for d in DELTAS], "rows": rows}


def targets(acc: dict | None) -> list[dict]:
    """Target lines (the format of ``report.targets``) for a ``measure`` result."""
    if not acc:
        return [dict(target="float32 accuracy and refinement cost (issue #9.4)", status="not measured",
                     detail="not in this sweep: --accuracy or --full")]
    out = []
    for row in acc["rows"]:
        mode = row["mode"]
        if row["status"] != "ok":
            out.append(dict(target=f"float32 ≤ {RTOL:g} relative vs float64 [{mode}]",
                            status="not measured", detail=row.get("reason", "")))
            continue
        for delta in acc["deltas"]:
            e = row["errors"][delta]
            worst = max(e["distances"], e["losses"])
            out.append(dict(target=f"float32 ≤ {acc['rtol']:g} relative vs float64, pairs {delta} apart [{mode}]",
                            status="met" if worst <= acc["rtol"] else "not met",
                            detail=f"worst {worst:.2g}: distances {e['distances']:.2g}, losses {e['losses']:.2g}"))
        detail = f"{row['refined_s'] * 1e3:.1f} ms vs {row['unrefined_s'] * 1e3:.1f} ms unrefined"
        if "close_ratio" in row:
            detail += f"; every positive 1e-3 apart: {row['close_ratio']:.2f}× (no target)"
        out.append(dict(target=f"pairwise_distances fwd B={row['b']} [{mode}]: refined ≤ {acc['max_ratio']:g}× unrefined",
                        ratio=row["ratio"], threshold=acc["max_ratio"],
                        status="met" if row["ratio"] <= acc["max_ratio"] else "not met", detail=detail))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--b", type=int, default=1024, help="batch size of the timing (default 1024)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of each version (default 5)")
    p.add_argument("--modes", default="numpy,torch,jax,jax.jit",
                   help="comma-separated subset of " + ",".join(MODES))
    p.add_argument("--compile", action="store_true", help="add torch.compile (tens of seconds of compiling)")
    p.add_argument("--no-close", action="store_true", help="skip the ratio on close positives")
    p.add_argument("--json", action="store_true", help="print one line 'ACCURACY <json>' (for run.py)")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"--modes: unknown {', '.join(bad)} (choose from {', '.join(MODES)})")
    if args.compile and "torch.compile" not in modes:
        modes.insert(modes.index("torch") + 1 if "torch" in modes else len(modes), "torch.compile")
    if args.b < 8 or args.b % 4:
        p.error("--b must be a multiple of 4, at least 8")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    acc = measure(modes, args.b, args.repeats, close_ratio=not args.no_close)
    if args.json:
        print("ACCURACY " + json.dumps(acc))
        return 0
    for t in targets(acc):
        mark = {"met": "met", "not met": "NOT MET", "not measured": "not measured"}[t["status"]]
        ratio = f" — measured {t['ratio']:.3g}×" if "ratio" in t else ""
        print(f"{t['target']}{ratio} ({t.get('detail', '')}): {mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
