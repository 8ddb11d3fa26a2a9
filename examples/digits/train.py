"""Train a tiny CNN with triplet_ref losses on the 8x8 digits, in PyTorch or JAX, and evaluate
nearest-neighbour retrieval on the digits never seen in training (7-9).

    python examples/digits/train.py --backend torch --loss batch_hard    # one run
    python examples/digits/train.py --all                                # torch and jax x 3 losses
                                                                         # -> examples/results/
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from examples.digits.data import SEEN_DIGITS, UNSEEN_DIGITS, DigitsSplit, load_split
from examples.digits.metrics import retrieval_metrics
from examples.digits.objective import BACKENDS, CURVES, LOSSES, SCHEDULES, Config
from examples.digits.trainers import train, untrained_embed

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"
EXPORT_RUN = ("torch", "batch_hard")  # the run whose test embedding is plotted and exported


def evaluate(embed, split: DigitsSplit) -> dict:
    unseen = retrieval_metrics(embed(split.x_unseen), split.y_unseen)
    seen = retrieval_metrics(embed(split.x_seen_test), split.y_seen_test)
    return {
        "recall_at_1_unseen": unseen["recall_at_1"],
        "map_unseen": unseen["map"],
        "recall_at_1_seen": seen["recall_at_1"],
        "map_seen": seen["map"],
    }


def run_one(backend: str, split: DigitsSplit, cfg: Config, progress: bool = True):
    result = train(backend, split, cfg, progress=progress)
    row = {"backend": backend, "loss": cfg.loss, **evaluate(result.embed, split), "seconds": round(result.seconds, 2)}
    return row, result


def backend_agreement(curves: dict, rtol: float = 1e-3) -> dict:
    """For each loss trained on both backends: how many first steps have torch and jax losses equal
    within ``rtol`` (same initial weights, same batches; after that, rounding differences grow)."""
    agree = {}
    for loss in LOSSES:
        if ("torch", loss) in curves and ("jax", loss) in curves:
            t, j = curves[("torch", loss)]["loss"], curves[("jax", loss)]["loss"]
            off = np.abs(t - j) > rtol * np.maximum(np.abs(t), 1e-3)
            agree[loss] = int(np.argmax(off)) if off.any() else int(t.size)
    return agree


SPREAD_METRICS = ("recall_at_1_unseen", "map_unseen", "recall_at_1_seen", "map_seen")


def seed_spread(seeds, base: dict, first: dict, progress: bool) -> dict:
    """Every backend x loss for each seed (the first seed's runs are reused from ``first``)."""
    rows = []
    for seed in seeds:
        cfg_base = {**base, "seed": seed}
        if seed == base["seed"]:
            report = first
        else:
            split = load_split(seed=seed)
            report = {"baseline_pixels": evaluate(lambda x: x, split),
                      "baseline_untrained_network": evaluate(untrained_embed(Config(**cfg_base)), split),
                      "runs": [run_one(b, split, Config(loss=l, **cfg_base), progress)[0]
                               for b in BACKENDS for l in LOSSES]}
        rows.append({"embedding": "raw pixels", "seed": seed, **report["baseline_pixels"]})
        rows.append({"embedding": "untrained CNN", "seed": seed, **report["baseline_untrained_network"]})
        rows += [{"embedding": f"{r['backend']} {r['loss']}", "seed": seed, **{m: r[m] for m in SPREAD_METRICS}}
                 for r in report["runs"]]
        print(f"seed {seed} done", flush=True)
    summary = {}
    for name in dict.fromkeys(r["embedding"] for r in rows):
        vals = {m: np.array([r[m] for r in rows if r["embedding"] == name]) for m in SPREAD_METRICS}
        summary[name] = {m: {"mean": float(v.mean()), "std": float(v.std(ddof=1)), "min": float(v.min()),
                             "max": float(v.max())} for m, v in vals.items()}
    return {"seeds": list(seeds), "n_unseen": int(len(load_split(seed=seeds[0]).y_unseen)), "summary": summary,
            "rows": rows}


def versus_baselines(spread: dict) -> dict:
    """Over every trained run of every seed: how many beat raw pixels and the untrained network of the
    same seed on the unseen digits (strictly), and the worst unseen recall@1 and mAP."""
    rows = spread["rows"]
    base = {(r["embedding"], r["seed"]): r for r in rows if r["embedding"] in ("raw pixels", "untrained CNN")}
    runs = [r for r in rows if r["embedding"] not in ("raw pixels", "untrained CNN")]
    out = {"runs": len(runs)}
    for metric in ("recall_at_1_unseen", "map_unseen"):
        for ref in ("raw pixels", "untrained CNN"):
            out[f"{metric} > {ref}"] = sum(r[metric] > base[(ref, r["seed"])][metric] for r in runs)
        out[f"{metric} worst"] = min(r[metric] for r in runs)
    return out


def seeds_table(spread: dict) -> str:
    n = len(spread["seeds"])
    lines = [f"| embedding ({n} seeds: mean ± std) | recall@1 unseen 7–9 | mAP unseen 7–9 | recall@1 seen | mAP seen |",
             "|---|---|---|---|---|"]
    for name, s in spread["summary"].items():
        cells = " | ".join(f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}" for m in SPREAD_METRICS)
        lines.append(f"| {name} | {cells} |")
    v = versus_baselines(spread)
    n_unseen = spread.get("n_unseen") or len(load_split(seed=spread["seeds"][0]).y_unseen)
    errors = f" ({round((1 - v['recall_at_1_unseen worst']) * n_unseen)} errors in {n_unseen})"
    lines += [
        "",
        f"Trained runs, unseen digits, strictly above raw pixels / above the untrained network of the same seed: "
        f"recall@1 {v['recall_at_1_unseen > raw pixels']} / {v['recall_at_1_unseen > untrained CNN']} of {v['runs']}, "
        f"mAP {v['map_unseen > raw pixels']} / {v['map_unseen > untrained CNN']} of {v['runs']}; worst recall@1 "
        f"{v['recall_at_1_unseen worst']:.4f}{errors}, worst mAP {v['map_unseen worst']:.4f}.",
    ]
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def markdown_table(report: dict) -> str:
    b = report["baseline_pixels"]
    lines = [
        "| embedding | recall@1 unseen 7–9 | mAP unseen 7–9 | recall@1 seen (held out) | mAP seen (held out) | train s |",
        "|---|---|---|---|---|---|",
        f"| raw pixels (64-d) | {_fmt(b['recall_at_1_unseen'])} | {_fmt(b['map_unseen'])} | "
        f"{_fmt(b['recall_at_1_seen'])} | {_fmt(b['map_seen'])} | – |",
    ]
    u = report.get("baseline_untrained_network")
    if u is not None:
        lines.append(
            f"| untrained CNN (its initial weights) | {_fmt(u['recall_at_1_unseen'])} | {_fmt(u['map_unseen'])} | "
            f"{_fmt(u['recall_at_1_seen'])} | {_fmt(u['map_seen'])} | – |"
        )
    for r in report["runs"]:
        lines.append(
            f"| {r['backend']} `{r['loss']}` | {_fmt(r['recall_at_1_unseen'])} | {_fmt(r['map_unseen'])} | "
            f"{_fmt(r['recall_at_1_seen'])} | {_fmt(r['map_seen'])} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, y.size))
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(y.size):  # trailing mean over the last `window` steps
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def plot_curves(curves: dict, path: Path, smooth: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "loss": "loss",
        "fraction_positive": "fraction of positive triplets / anchors",
        "mean_embedding_norm": "mean embedding norm (before L2 normalisation)",
        "mean_hardest_positive_dist": "mean hardest-positive distance",
        "mean_hardest_negative_dist": "mean hardest-negative distance",
    }
    colors = {"batch_all": "tab:blue", "batch_hard": "tab:red", "batch_semihard": "tab:green"}
    styles = {"torch": "-", "jax": "--"}
    fig, grid = plt.subplots(2, 3, figsize=(13, 7))
    axes = grid.ravel()
    for ax, name in zip(axes, CURVES):
        for (backend, loss), c in curves.items():
            ax.plot(_smooth(c[name], smooth), styles[backend], color=colors[loss], lw=1.3, label=f"{backend} {loss}")
        ax.set_title(titles[name], fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].axis("off")
    axes[-1].legend(handles, labels, loc="center", fontsize=10, title="backend, loss")
    fig.suptitle(f"training curves (trailing mean over {smooth} steps; solid torch, dashed jax)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def project_2d(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, init="pca", perplexity=30, random_state=seed).fit_transform(x)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")


def plot_embedding(x_pixels: np.ndarray, x_emb: np.ndarray, labels: np.ndarray, title: str, path: Path, seed: int,
                   method: str = "tsne"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    for ax, x, name in ((axes[0], x_pixels, "raw pixels"), (axes[1], x_emb, title)):
        xy = project_2d(x, method, seed)
        for digit in range(10):
            m = labels == digit
            unseen = digit in UNSEEN_DIGITS
            ax.scatter(xy[m, 0], xy[m, 1], s=9 if unseen else 5, color=plt.cm.tab10(digit),
                       marker="^" if unseen else "o", alpha=0.9 if unseen else 0.5,
                       label=f"{digit}{' (unseen)' if unseen else ''}")
            cx, cy = np.median(xy[m], axis=0)
            ax.text(cx, cy, str(digit), fontsize=13, weight="bold", ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.7, lw=0))
        ax.set_title(f"{'t-SNE' if method == 'tsne' else 'PCA'} of {name}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(fontsize=7, markerscale=2, loc="best")
    fig.suptitle("test images: held-out images of digits 0–6 (circles) and all of the unseen digits 7–9 (triangles)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_projector_tsv(emb: np.ndarray, labels: np.ndarray, out: Path) -> None:
    """vecs.tsv / meta.tsv for https://projector.tensorflow.org (as in the TF-Addons triplet tutorial).
    Four significant digits (the 1,024-d file is still about 6 MB, so it is not committed)."""
    np.savetxt(out / "vecs.tsv", emb, delimiter="\t", fmt="%.4g")
    with open(out / "meta.tsv", "w") as f:
        f.writelines(f"{int(y)}\n" for y in labels)


def write_curves_csv(curves: dict, path: Path) -> None:
    with open(path, "w") as f:
        f.write("backend,loss_function,step," + ",".join(CURVES) + "\n")
        for (backend, loss), c in curves.items():
            for step in range(len(c["loss"])):
                f.write(f"{backend},{loss},{step}," + ",".join(f"{c[n][step]:.6g}" for n in CURVES) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=BACKENDS, default="torch")
    ap.add_argument("--loss", choices=LOSSES, default="batch_hard")
    ap.add_argument("--all", action="store_true", help="every backend x every loss; writes all outputs")
    d = Config()
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--margin", type=float, default=d.margin)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--p", type=int, default=d.p, help="classes per batch")
    ap.add_argument("--k", type=int, default=d.k, help="images per class in a batch")
    ap.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning rate schedule")
    ap.add_argument("--embedding-dim", type=int, default=d.embedding_dim,
                    help="add a final linear layer to this many dimensions (default: none, the embedding is the "
                         "1,024 pooled features)")
    ap.add_argument("--standardize", action="store_true", help="standardise each image first (mean 0, std 1 over "
                                                               "its pixels)")
    ap.add_argument("--no-normalize", action="store_true", help="use the raw network output (no L2 normalisation)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--seeds", type=int, default=1,
                    help="with --all: also repeat the grid for seeds seed+1 .. seed+N-1 (new split, weights and "
                         "batches) and write the spread to digits_seeds.json")
    ap.add_argument("--projection", choices=("tsne", "pca"), default="tsne", help="2-D map of the test embedding")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--table-from", type=Path, metavar="DIGITS_SEEDS_JSON",
                    help="only print the seeds table of an existing digits_seeds.json (no training)")
    args = ap.parse_args(argv)
    if args.table_from is not None:
        print(seeds_table(json.loads(args.table_from.read_text())))
        return 0

    split = load_split(seed=args.seed)
    base = dict(margin=args.margin, steps=args.steps, p=args.p, k=args.k, lr=args.lr, schedule=args.schedule,
                embedding_dim=args.embedding_dim, standardize=args.standardize,
                normalize=not args.no_normalize, seed=args.seed)
    jobs = [(b, l) for b in BACKENDS for l in LOSSES] if args.all else [(args.backend, args.loss)]
    export = EXPORT_RUN if EXPORT_RUN in jobs else jobs[0]
    print(f"digits: {len(split.y_train)} training images of {SEEN_DIGITS}; test: {len(split.y_seen_test)} held-out "
          f"seen, {len(split.y_unseen)} unseen {UNSEEN_DIGITS}")

    pixels = evaluate(lambda x: x, split)
    report = {
        "baseline_pixels": pixels,
        "baseline_untrained_network": evaluate(untrained_embed(Config(**base)), split),
        "config": {**Config(**base).__dict__, "channels": list(Config().channels)},
        "runs": [],
    }
    curves, export_emb = {}, None
    x_test = np.concatenate([split.x_seen_test, split.x_unseen])
    y_test = np.concatenate([split.y_seen_test, split.y_unseen])
    for backend, loss in jobs:
        row, result = run_one(backend, split, Config(loss=loss, **base), progress=not args.no_progress)
        report["runs"].append(row)
        curves[(backend, loss)] = result.curves
        if (backend, loss) == export:
            export_emb = result.embed(x_test)
        print(f"{backend:5s} {loss:14s} recall@1 unseen {row['recall_at_1_unseen']:.4f} (pixels "
              f"{pixels['recall_at_1_unseen']:.4f})  mAP unseen {row['map_unseen']:.4f} (pixels "
              f"{pixels['map_unseen']:.4f})  recall@1 seen {row['recall_at_1_seen']:.4f}  {row['seconds']:.1f}s",
              flush=True)

    agree = backend_agreement(curves)
    if agree:
        report["torch_jax_same_loss_steps"] = agree
        print("torch and jax losses agree within 0.1% for the first steps: "
              + ", ".join(f"{k} {v}" for k, v in agree.items()))

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    name = "digits.json" if args.all else f"digits_{args.backend}_{args.loss}.json"
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    write_curves_csv(curves, out / ("curves.csv" if args.all else f"curves_{args.backend}_{args.loss}.csv"))
    if args.all:
        plot_curves(curves, out / "training_curves.png")
        plot_embedding(x_test, export_emb, y_test, f"{export[0]} {export[1]} embedding",
                       out / f"embedding_{args.projection}.png", seed=args.seed, method=args.projection)
        write_projector_tsv(export_emb, y_test, out)
        (out / "results_table.md").write_text(markdown_table(report) + "\n")
    print(markdown_table(report))
    if args.all and args.seeds > 1:
        seeds = list(range(args.seed, args.seed + args.seeds))
        spread = seed_spread(seeds, base, first=report, progress=not args.no_progress)
        (out / "digits_seeds.json").write_text(json.dumps(spread, indent=2) + "\n")
        (out / "seeds_table.md").write_text(seeds_table(spread) + "\n")
        print(seeds_table(spread))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
