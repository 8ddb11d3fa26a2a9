"""Measure the float32 error of ``pairwise_distances`` against the float64 oracle.

Run:  ``python tests/measure_tolerance.py``  (``--quick`` for a smaller sweep, ``--dtype float64``
for the float64 computation; ``--close`` for the close-pair refinement: the Gram formula's
error constant and the relative error of every pair of near-duplicate batches)

For every installed CPU backend and metric, random normal embeddings ``X = offset + scale·Z``
(``Z ~ N(0, 1)``, B rows, D columns, a fixed seed) are rounded to float32, passed to
``triplet_ref.pairwise_distances`` and compared with ``triplet_ref.oracles.pairwise_distances``
of *the same float32 values* (read exactly into float64), so only the computation's rounding
is measured, not the input's.  Near-duplicate rows (``x_j = x_i + delta·u``) are measured
separately because the Gram identity ``|x_i|² + |x_j|² − 2<x_i, x_j>`` loses all relative
accuracy there and the square root amplifies it.

Printed per case: the largest absolute error divided by the data's spread ``s`` (the
diameter ``max |x_i − x_j|``; ``s²`` for ``sqeuclidean``; 1 for ``cosine``), and the
largest relative error over pairs with ``d >= 0.1·s``.  The test tolerances in
``tests/conftest.py`` (``tolerance()``) and the "Tolerances" section of docs/semantics.md
come from this output.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triplet_ref as tr  # noqa: E402
from triplet_ref import backends, oracles  # noqa: E402


def _backends() -> list:
    names = [n for n in backends.available_backends() if n != "cupy"]
    if "jax" in names:
        import jax

        jax.config.update("jax_enable_x64", True)
    return [backends.get_backend(n) for n in names]


def _spread(x64: np.ndarray, metric: str) -> float:
    """The data's diameter ``max |x_i - x_j|`` (translation invariant: it bounds the rows'
    norms after the shift the code applies); squared for sqeuclidean; 1 for cosine."""
    if metric == "cosine":
        return 1.0
    s = float(oracles.pairwise_distances(x64).max())
    return s * s if metric == "sqeuclidean" else s


def errors(be, x32: np.ndarray, metric: str, dtype: str = "float32") -> tuple[float, float, float]:
    """(max |err| / spread, max relative err where d >= 0.1·spread, spread) of one input."""
    x = be.from_numpy(x32, dtype=dtype)
    got = be.to_numpy(tr.pairwise_distances(x, metric=metric)).astype(np.float64)
    x64 = be.to_numpy(x).astype(np.float64)  # the values actually passed, exactly
    ref = oracles.pairwise_distances(x64, metric=metric)
    s = _spread(x64, metric) or 1.0
    err = np.abs(got - ref)
    far = ref >= 0.1 * s
    rel = float((err[far] / ref[far]).max()) if far.any() else 0.0
    return float(err.max()) / s, rel, s


def random_cases(quick: bool):
    Bs = (32,) if quick else (64,)
    Ds = (1, 16, 128) if quick else (1, 16, 128, 1024)
    scales = (1e-3, 1.0, 1e3)
    offsets = (0.0, 1e3)  # in units of the scale
    for B in Bs:
        for D in Ds:
            for scale in scales:
                for off in offsets:
                    yield B, D, scale, off


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller sweep")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                    help="the dtype of the tested computation (default float32)")
    ap.add_argument("--close", action="store_true",
                    help="measure the close-pair refinement instead (see close_pairs())")
    args = ap.parse_args(argv)
    bes = _backends()
    if args.close:
        return close_pairs(bes, args.dtype)
    rng = np.random.default_rng(0)

    dt = args.dtype
    print(f"## {dt} pairwise_distances vs the float64 oracle (random normal data)")
    print("err/s = max |d - d_oracle| / s (s = diameter max |x_i - x_j|; s² for sqeuclidean; 1 for cosine)")
    print("rel   = max |d - d_oracle| / d_oracle over pairs with d_oracle >= 0.1·s\n")
    header = "| metric | B | D | scale | offset/scale | " + " | ".join(
        f"{be.name} err/s | {be.name} rel" for be in bes) + " |"
    print(header)
    print("|" + "---|" * (5 + 2 * len(bes)))
    worst: dict = {}
    for metric in tr.METRICS:
        for B, D, scale, off in random_cases(args.quick):
            x32 = (off * scale + scale * rng.standard_normal((B, D))).astype(dt)
            cells = []
            for be in bes:
                e, r, _ = errors(be, x32, metric, dtype=dt)
                key = (metric, "random")
                w = worst.setdefault(key, [0.0, 0.0])
                w[0], w[1] = max(w[0], e), max(w[1], r)
                cells.append(f"{e:.1e} | {r:.1e}")
            print(f"| {metric} | {B} | {D} | {scale:g} | {off:g} | " + " | ".join(cells) + " |")

    print("\n## near-duplicate rows (scale 1, offset 0): x_(2k+1) = x_(2k) + delta·u, |u| = 1")
    print("| metric | D | delta | " + " | ".join(f"{be.name} err/s" for be in bes) + " |")
    print("|" + "---|" * (3 + len(bes)))
    for metric in tr.METRICS:
        for D in ((16, 128) if args.quick else (16, 128, 1024)):
            for delta in (0.0, 1e-6, 1e-3):
                z = rng.standard_normal((16, D))
                u = rng.standard_normal((16, D))
                u /= np.linalg.norm(u, axis=1, keepdims=True)
                x = np.repeat(z, 2, axis=0)
                x[1::2] += delta * u
                x32 = x.astype(dt)
                cells = []
                for be in bes:
                    e, _, _ = errors(be, x32, metric, dtype=dt)
                    w = worst.setdefault((metric, "near-duplicate"), [0.0, 0.0])
                    w[0] = max(w[0], e)
                    cells.append(f"{e:.1e}")
                print(f"| {metric} | {D} | {delta:g} | " + " | ".join(cells) + " |")

    print("\n## low precision inputs (scale 1, B=32, D=16): result vs oracle of the same values")
    print("| metric | dtype | " + " | ".join(f"{be.name} err/s | {be.name} rel" for be in bes) + " |")
    print("|" + "---|" * (2 + 2 * len(bes)))
    for metric in (tr.METRICS if dt == "float32" else ()):
        for dtype in ("float16", "bfloat16"):
            x32 = rng.standard_normal((32, 16)).astype(np.float32)
            cells = []
            for be in bes:
                if be.name == "array_api_strict" or (dtype == "bfloat16" and be.name == "numpy"):
                    cells.append("- | -")
                    continue
                e, r, _ = errors(be, x32, metric, dtype=dtype)
                w = worst.setdefault((metric, dtype), [0.0, 0.0])
                w[0], w[1] = max(w[0], e), max(w[1], r)
                cells.append(f"{e:.1e} | {r:.1e}")
            print(f"| {metric} | {dtype} | " + " | ".join(cells) + " |")

    print("\n## worst over all backends")
    print("| metric | data | max err/s | max rel (d >= 0.1·s) |")
    print("|---|---|---|---|")
    for (metric, kind), (e, r) in worst.items():
        print(f"| {metric} | {kind} | {e:.1e} | {r:.1e} |")
    return 0


def _gram_d2(name: str, x: np.ndarray):
    """The Gram formula of triplet_ref on rows shifted by the first, with ``name``'s matmul:
    ``(d², w)``, ``w`` the shifted rows' squared norms (the diagonal of G)."""
    xc = x - x[:1]
    if name == "torch":
        import torch

        t = torch.from_numpy(xc)
        G = torch.mm(t, t.t()).numpy()
    elif name == "jax":
        import jax.numpy as jnp

        G = np.asarray(jnp.asarray(xc) @ jnp.asarray(xc).T)
    else:
        G = xc @ xc.T
    w = np.diagonal(G).copy()
    return (w[:, None] + w[None, :]) - 2 * G, w


def close_pairs(bes, dt: str) -> int:
    """(1) gamma: max over pairs of |d²_Gram − d²| / (eps·(w_i + w_j)), the constant behind
    ``triplet_ref.distances.close_pair_threshold``; (2) the library's largest relative
    error over every off-diagonal pair of L2-normalised batches whose classes of 4 are
    delta apart (the refinement's target: 1e-4 in float32), eager and compiled."""
    rng = np.random.default_rng(0)
    eps = float(np.finfo(dt).eps)
    print(f"## {dt}: Gram formula error / (eps·(w_i + w_j)), B = 256 (max over pairs)")
    print("| D | data | " + " | ".join(be.name for be in bes if be.name != "array_api_strict") + " |")
    print("|---|---|" + "---|" * sum(be.name != "array_api_strict" for be in bes))
    gamma = 0.0
    for D in (8, 128, 1024):
        for kind in ("normal", "unit", "offset", "clustered"):
            z = rng.standard_normal((256, D))
            if kind == "unit":
                z /= np.linalg.norm(z, axis=1, keepdims=True)
            elif kind == "offset":
                z += 10.0
            elif kind == "clustered":
                z = rng.standard_normal((8, D))[rng.integers(0, 8, 256)] + 1e-3 * z
            x = z.astype(dt)
            x64 = x.astype(np.float64)
            true = ((x64[:, None] - x64[None]) ** 2).sum(-1)
            cells = []
            for be in bes:
                if be.name == "array_api_strict":
                    continue
                d2, w = _gram_d2(be.name, x)
                S = (w[:, None] + w[None, :]).astype(np.float64)
                ok = S > 0
                g = float((np.abs(d2.astype(np.float64) - true)[ok] / S[ok]).max() / eps)
                gamma = max(gamma, g)
                cells.append(f"{g:.2f}")
            print(f"| {D} | {kind} | " + " | ".join(cells) + " |")
    print(f"\nworst gamma: {gamma:.2f}\n")

    print(f"## {dt}: max relative error over all off-diagonal pairs, B = 64, classes of 4 delta apart")
    labels = np.repeat(np.arange(16), 4)
    cols = []
    for be in bes:
        cols.append((be, False))
        if be.supports_jit:
            cols.append((be, True))
    print("| metric | D | delta | " + " | ".join(f"{be.name}{' jit' if j else ''}" for be, j in cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    worst = 0.0
    for metric in tr.METRICS:
        for D in (8, 128):
            for delta in (1e-2, 1e-3, 1e-4):
                c = rng.standard_normal((16, D))
                x = c[labels] + delta * rng.standard_normal((64, D)) / np.sqrt(D) * np.linalg.norm(c[labels], axis=1, keepdims=True)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                x = x.astype(dt)
                x64 = x.astype(np.float64)
                ref = oracles.pairwise_distances(x64, metric=metric)
                off = ~np.eye(64, dtype=bool)
                cells = []
                for be, jit in cols:
                    xb = be.from_numpy(x)
                    f = lambda z: tr.pairwise_distances(z, metric=metric)  # noqa: E731
                    d = be.to_numpy((be.jit(f) if jit else f)(xb)).astype(np.float64)
                    rel = float((np.abs(d - ref)[off] / ref[off]).max())
                    worst = max(worst, rel)
                    cells.append(f"{rel:.1e}")
                print(f"| {metric} | {D} | {delta:g} | " + " | ".join(cells) + " |")
    print(f"\nworst relative error: {worst:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
