"""Tables, target ratios, plots and progress display for ``benchmarks/run.py``."""

from __future__ import annotations

import contextlib
import math
import re

import impls

GIB = 2**30
MIB = 2**20
MEM_FLOOR = 1 * MIB  # memory ratios divide by at least this (a measured increase can be ~0)
LOSS_ORDER = impls.LOSSES + impls.SOFT + impls.FLOORS
MODE_LABEL = {"forward": "fwd", "forward_backward": "fwd+bwd"}


# ------------------------------------------------------------------ console and progress

def console():
    try:
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True)
    except ImportError:  # rich is in the bench extra; plain output otherwise
        class Plain:
            def print(self, *a, **k):
                import re

                print(*(re.sub(r"\[/?[a-z ]+\]", "", str(x)) for x in a), flush=True)

        return Plain()


def progress_bar(total):
    try:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)

        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), transient=True)
    except ImportError:
        class Dummy(contextlib.AbstractContextManager):
            def __exit__(self, *a):
                return False

            def add_task(self, *a, **k):
                return 0

            def update(self, *a, **k):
                pass

            def advance(self, *a, **k):
                pass

        return Dummy()


def fmt_time(s):
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_mem(b):
    if b is None:
        return "—"
    if abs(b) >= GIB:
        return f"{b / GIB:.2f} GiB"
    return f"{b / MIB:.3g} MiB" if abs(b) >= 0.1 * MIB else f"{b / MIB:.2f} MiB"


def short(reason, n=160):
    """A failure reason on one line (exceptions may carry a traceback)."""
    line = " ".join(str(reason).split("Traceback")[0].split())
    return line if len(line) <= n else line[: n - 1] + "…"


def label(r):
    return f"{impls.IMPLS[r['impl']].label}[{r['backend']}]"


def progress_line(r):
    head = f"{label(r)} {r['loss']} {MODE_LABEL[r['mode']]} B={r['b']} {r.get('labels') or ''}".rstrip()
    if r["status"] == "ok":
        return f"  {head}: {fmt_time(r['time_s'])}, +{fmt_mem(r['peak_bytes'])} ({r['repeats']} runs)"
    return f"  {head}: {r['status']} ({short(r.get('reason', ''))})"


# ------------------------------------------------------------------ targets

def _base_labels(doc):
    s = doc["settings"]
    return s.get("base_labels") or f"pk{s.get('k', 4)}"


def _index(doc, labels=None):
    """Rows by (impl, backend, loss, mode, B) for one label regime (default: the base P x K)."""
    labels = labels or _base_labels(doc)
    return {(r["impl"], r["backend"], r["loss"], r["mode"], r["b"]): r for r in doc["results"]
            if (r.get("labels") or _base_labels(doc)) == labels}


def targets(doc):
    """The issue's targets, as ratios measured in this run; each met / not met / not measured."""
    gpu = doc["settings"]["device"] == "gpu"
    idx = _index(doc)
    tb = "torch-cuda" if gpu else "torch"
    jb = "jax-gpu" if gpu else "jax"
    all_be = ["torch-cuda", "jax-gpu", "cupy"] if gpu else ["numpy", "torch", "jax"]
    out = []

    def get(impl, be, loss, mode, b):
        return idx.get((impl, be, loss, mode, b))

    def ok(r):
        return r is not None and r["status"] == "ok"

    def why_missing(*rows):
        for r in rows:
            if r is None:
                return "not in this sweep"
            if r["status"] != "ok":
                return f"{label(r)} {r['status']}: {short(r.get('reason', ''))}"
        return ""

    def ratio_target(name, num, den, threshold, kind="time", strict=False):
        """num / den >= threshold (time: den faster; memory: den leaner)."""
        if not (ok(num) and ok(den)):
            out.append(dict(target=name, status="not measured", detail=why_missing(num, den)))
            return
        if kind == "time":
            ratio = num["time_s"] / den["time_s"]
            detail = f"{fmt_time(den['time_s'])} vs {fmt_time(num['time_s'])}"
        else:
            ratio = max(num["peak_bytes"], MEM_FLOOR) / max(den["peak_bytes"], MEM_FLOOR)
            detail = f"{fmt_mem(den['peak_bytes'])} vs {fmt_mem(num['peak_bytes'])}"
        met = ratio > threshold if strict else ratio >= threshold
        out.append(dict(target=name, ratio=ratio, threshold=threshold,
                        status="met" if met else "not met", detail=detail))

    # 1-2. batch_all forward vs pytorch-metric-learning (all triplets)
    own = [(tb, 50, 3)] if gpu else [("numpy", 50, 10), ("torch", 50, 3)]
    for be, t1024, t4096 in own:
        pml1, pml4 = (get("pml", tb, "batch_all", "forward", b) for b in (1024, 4096))
        o1, o4 = (get("triplet_ref", be, "batch_all", "forward", b) for b in (1024, 4096))
        ratio_target(f"batch_all fwd B=1024 [{be}]: ≥ {t1024}× faster than pytorch-metric-learning",
                     pml1, o1, t1024)
        ratio_target(f"batch_all fwd B=4096 [{be}]: ≥ {t4096}× faster than pytorch-metric-learning",
                     pml4, o4, t4096)
        ratio_target(f"batch_all fwd B=4096 [{be}]: ≥ 20× less peak memory than pytorch-metric-learning",
                     pml4, o4, 20, kind="memory")
    # 3. torch: batch_all and batch_semihard vs sentence-transformers
    for loss in ("batch_all", "batch_semihard"):
        for b in (1024, 4096):
            for mode in impls.MODES:
                st, o = get("st", tb, loss, mode, b), get("triplet_ref", tb, loss, mode, b)
                ratio_target(f"{loss} {MODE_LABEL[mode]} B={b} [{tb}]: faster than sentence-transformers",
                             st, o, 1.0, strict=True)
                ratio_target(f"{loss} {MODE_LABEL[mode]} B={b} [{tb}]: leaner than sentence-transformers",
                             st, o, 1.0, kind="memory", strict=True)
    # 4. semi-hard vs the dense method at B=512
    for be in all_be:
        if "dense" in impls.IMPLS and be in impls.IMPLS["dense"].backends:
            ratio_target(f"batch_semihard fwd B=512 [{be}]: ≥ 100× faster than the dense B³ method",
                         get("dense", be, "batch_semihard", "forward", 512),
                         get("triplet_ref", be, "batch_semihard", "forward", 512), 100)
    # 5. every loss forward <= 2x pairwise_distances at B=4096; 6. pairwise <= 1.3x matmul
    # (at the largest measured size up to 4096 when the sweep has no 4096: the line says so)
    for be in all_be:
        measured = sorted(b for (i, e, l, m, b), r in idx.items()
                          if i == "triplet_ref" and e == be and l == "pairwise_distances"
                          and m == "forward" and b <= 4096 and ok(r))
        b = 4096 if not measured or 4096 in measured else measured[-1]
        note = "" if b == 4096 else " (target stated at B=4096)"
        pd = get("triplet_ref", be, "pairwise_distances", "forward", b)
        for loss in impls.LOSSES:
            o = get("triplet_ref", be, loss, "forward", b)
            _le_target(out, f"{loss} fwd B={b} [{be}]: ≤ 2× pairwise_distances{note}", o, pd, 2.0, why_missing)
        _le_target(out, f"pairwise_distances fwd B={b} [{be}]: ≤ 1.3× X @ X.T{note}", pd,
                   get("bare", be, "matmul", "forward", b), 1.3, why_missing)
    # 7. B=16384 forward+backward within 6 GiB; the all-triplet and dense peers cannot
    for be in (tb, jb):
        for loss in impls.LOSSES:
            r = get("triplet_ref", be, loss, "forward_backward", 16384)
            name = f"{loss} fwd+bwd B=16384 [{be}]: completes within 6 GiB"
            if not ok(r):
                out.append(dict(target=name, status="not measured", detail=why_missing(r)))
            else:
                out.append(dict(target=name, ratio=r["peak_bytes"] / GIB, threshold=6.0,
                                status="met" if r["peak_bytes"] <= 6 * GIB else "not met",
                                detail=f"{fmt_mem(r['peak_bytes'])} peak, {fmt_time(r['time_s'])}"))
    for impl, loss in (("pml", "batch_all"), ("dense", "batch_all"), ("dense", "batch_semihard")):
        r = get(impl, tb, loss, "forward_backward", 16384)
        name = f"{impls.IMPLS[impl].label} {loss} fwd+bwd B=16384 [{tb}]: cannot complete within 6 GiB"
        if r is None:
            out.append(dict(target=name, status="not measured", detail="not in this sweep"))
        elif r["status"] == "ok":
            fits = r["peak_bytes"] <= 6 * GIB
            out.append(dict(target=name, status="not met" if fits else "met",
                            detail=f"completed with {fmt_mem(r['peak_bytes'])}"))
        else:
            pred = r.get("predicted_bytes")
            out.append(dict(target=name, status="met",
                            detail=f"{r['status']}: {short(r.get('reason', ''))}"
                            + (f" (predicted {pred / GIB:.0f} GiB)" if pred and "GiB" not in r.get("reason", "") else "")))
    # 8. soft batch_all (issue #9): ≤ 3× the hinge batch_all on P x K at B = 1024 and 4096;
    # and against pytorch-metric-learning's smooth loss (its peer) where measured
    own_be = [tb] if gpu else ["numpy", "torch"]
    for be in own_be:
        for b in (1024, 4096):
            for mode in impls.MODES:
                soft, hinge = get("triplet_ref", be, "batch_all_soft", mode, b), get("triplet_ref", be, "batch_all", mode, b)
                if mode != "forward" and soft is None:
                    continue
                _le_target(out, f"batch_all_soft {MODE_LABEL[mode]} B={b} [{be}]: ≤ 3× hinge batch_all",
                           soft, hinge, 3.0, why_missing)
            peer = get("pml", tb, "batch_all_soft", "forward", b)
            if peer is not None:
                ratio_target(f"batch_all_soft fwd B={b} [{be}]: faster than pytorch-metric-learning smooth_loss",
                             peer, get("triplet_ref", be, "batch_all_soft", "forward", b), 1.0, strict=True)
    # 9. no cliff (issue #9): every loss in every label regime ≤ 2× its time on the base
    # P x K (K = 4) batches at B = 4096 (or the largest size measured in both), same run
    base = _base_labels(doc)
    regimes = sorted({r["labels"] for r in doc["results"] if r.get("labels") and r["labels"] != base})
    for regime in regimes:
        ridx = _index(doc, regime)
        for be in own_be:
            for loss in impls.LOSSES:
                for mode in impls.MODES:
                    rows = {b: r for (i, e, lo, mo, b), r in ridx.items()
                            if i == "triplet_ref" and e == be and lo == loss and mo == mode}
                    if not rows:
                        continue
                    both = sorted(b for b in rows if b <= 4096 and get("triplet_ref", be, loss, mode, b) is not None)
                    b = (4096 if 4096 in both else both[-1]) if both else max(rows)
                    note = "" if b == 4096 else " (target stated at B=4096)"
                    _le_target(out, f"{loss} {MODE_LABEL[mode]} B={b} [{be}] {regime}: ≤ 2× its {base} time{note}",
                               rows[b], get("triplet_ref", be, loss, mode, b), 2.0, why_missing)
    # 10. float32 accuracy and the close-pair refinement's cost (issue #9.4): accuracy.py
    if not gpu:
        import accuracy

        out.extend(accuracy.targets(doc.get("accuracy")))
    return out


def _le_target(out, name, num, den, threshold, why_missing):
    if not (num is not None and den is not None and num["status"] == "ok" and den["status"] == "ok"):
        out.append(dict(target=name, status="not measured", detail=why_missing(num, den)))
        return
    ratio = num["time_s"] / den["time_s"]
    out.append(dict(target=name, ratio=ratio, threshold=threshold,
                    status="met" if ratio <= threshold else "not met",
                    detail=f"{fmt_time(num['time_s'])} vs {fmt_time(den['time_s'])}"))


def target_line(t):
    mark = {"met": "met", "not met": "NOT MET", "not measured": "not measured"}[t["status"]]
    ratio = ""
    if "ratio" in t:
        ratio = f"{t['ratio']:.3g}" + (" GiB" if "GiB" in t["target"] and "within" in t["target"] else "×")
        ratio = f" — measured {ratio}"
    detail = f" ({t['detail']})" if t.get("detail") else ""
    return f"{t['target']}{ratio}{detail}: **{mark}**"


# ------------------------------------------------------------------ tables

def _rows_by_series(doc):
    series = {}
    base = _base_labels(doc)
    for r in doc["results"]:
        labels = r.get("labels") or base
        series.setdefault((r["loss"], r["impl"], r["backend"], r["mode"], "" if labels == base else labels),
                          {})[r["b"]] = r
    impl_order = list(impls.IMPLS)

    def key(k):
        loss, impl, be, mode, labels = k
        return (LOSS_ORDER.index(loss), labels, impl_order.index(impl), be, mode)

    return [(k, series[k]) for k in sorted(series, key=key)]


def _cell(r, what):
    if r is None:
        return ""
    if r["status"] == "ok":
        return fmt_time(r["time_s"]) if what == "time" else fmt_mem(r["peak_bytes"])
    if r["status"] == "skipped":
        reason = r.get("reason", "")
        if reason.startswith("predicted"):
            return "skip (" + reason.split(">")[0].replace("predicted ", "pred. ").strip() + ")"
        return "skip"
    return r["status"]


def _agreement(rows):
    worst, na, bad = None, None, []
    for b, r in sorted(rows.items()):
        a = r.get("agreement")
        if not a:
            continue
        if a["status"] == "n/a":
            na = a["reason"]
            continue
        worst = a["rel_diff"] if worst is None else max(worst, a["rel_diff"])
        if a["status"] == "mismatch":
            bad.append(f"B={b}: {a['rel_diff']:.1e}")
    if bad:
        return "✗ " + "; ".join(bad)
    if worst is not None:
        return f"✓ ≤ {worst:.0e}" if worst > 0 else "✓ exact"
    if na:
        return f"n/a ({na})"
    return ""


def table(doc, what):
    sizes = sorted({r["b"] for r in doc["results"]})
    head = ["loss", "implementation", "mode"] + [f"B={b}" for b in sizes]
    if what == "time":
        head.append("agreement with NumPy")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (loss, impl, be, mode, labels), rows in _rows_by_series(doc):
        cells = [loss + (f" ({labels})" if labels else ""), f"{impls.IMPLS[impl].label} [{be}]", MODE_LABEL[mode]]
        cells += [_cell(rows.get(b), what) for b in sizes]
        if what == "time":
            cells.append(_agreement(rows))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_summary(doc):
    m = doc["machine"]
    v = m.get("versions", {})
    s = doc["settings"]
    lines = [
        f"- machine: {m.get('cpu', '?')}, {m.get('cpus_available', '?')} cores available, "
        f"{m.get('memory_total_gib', '?')} GiB RAM" + (f"; GPU {m['gpu']} ({m.get('gpu_memory_gib')} GiB, CUDA {m.get('cuda_version')})"
                                                         if s["device"] == "gpu" else ""),
        f"- threads: {s['threads']} (torch.get_num_threads() = {m.get('torch_num_threads', '?')}); "
        f"NumPy BLAS: {m.get('numpy_blas', '?')}"
        + "".join(f"; {p['internal_api']} {p['version']} ({p['num_threads']} threads, {p.get('architecture')})"
                  for p in m.get("threadpools", []) if p.get("user_api") == "blas")
        + "".join(f"; torch {k}={v}" for k, v in re.findall(r"(BLAS_INFO|LAPACK_INFO)=(\w+)", m.get("torch_blas", ""))),
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- inputs: P×K batches, K = {s['k']} per class, D = {s['dim']}, float32, seed {s['seed']}; margin 1.0",
        f"- timing: median of up to {s['repeats']} calls after one warm-up call (at least {s['min_repeats']}; "
        + ("2 when it takes over 1 s, " if s["long_call_s"] > 1 else "")
        + f"1 when over {s['long_call_s']:g} s; a configuration predicted over "
        f"{s['single_call_s']:g} s per call is timed by a single call with no separate warm-up); "
        "each configuration in a fresh process",
        f"- budgets: skip when predicted over {s['mem_budget_gib']:g} GiB"
        + (f" ({s['own_mem_budget_gib']:g} GiB for triplet_ref and X @ X.T)" if s.get("own_mem_budget_gib") else "")
        + f" or {s['time_budget_s']:g} s per call",
        f"- memory: {doc['memory_note']}",
    ]
    loads = [r["loadavg_1m"] for r in doc["results"] if r.get("loadavg_1m") is not None]
    if loads:
        lines.append(f"- 1-minute load average at the end of each configuration: {min(loads):.1f} to "
                     f"{max(loads):.1f} (median {sorted(loads)[len(loads) // 2]:.1f}) on "
                     f"{m.get('cpus_available', '?')} cores; other processes share the machine when it exceeds "
                     "the thread count, and the times are then pessimistic")
    return "\n".join(lines)


def markdown(doc):
    tag = doc["tag"]
    met = sum(t["status"] == "met" for t in doc["targets"])
    nm = sum(t["status"] == "not met" for t in doc["targets"])
    parts = [
        f"# triplet_ref benchmark — `{tag}`",
        "",
        f"Made by `{doc['command']}` on {doc['created']} in {doc['elapsed_s']:.0f} s "
        f"({doc['settings']['sweep']} sweep, {len(doc['results'])} configurations"
        + (f", triplet_ref at commit {doc['triplet_ref_commit']}" if doc.get("triplet_ref_commit") else "") + ").",
        "",
        *([f"**Note:** {doc['library_note']}", ""] if doc.get("library_note") else []),
        machine_summary(doc),
        "",
        f"## Targets ({met} met, {nm} not met, {len(doc['targets']) - met - nm} not measured)",
        "",
        "Ratios are measured in this run (time: peer ÷ ours; memory: peer's peak increase ÷ ours, "
        "each at least 1 MiB).",
        "",
        *[f"- {target_line(t)}" for t in doc["targets"]],
        "",
        "## Median time per call",
        "",
        table(doc, "time"),
        "",
        "## Peak memory increase",
        "",
        table(doc, "memory"),
        "",
        "## How the peers are called, and where their semantics differ",
        "",
        *[f"- {k}: {v}" for k, v in doc["notes"].items()],
        "- Agreement is each value's relative difference from triplet_ref's NumPy forward value on the "
        "same P×K batch (the sum of the matrix for `pairwise_distances` and `X @ X.T`); on these "
        "batches every peer's semantics coincide with triplet_ref's.",
        "",
    ]
    skipped = [r for r in doc["results"] if r["status"] not in ("ok",)]
    if skipped:
        parts += ["## Skipped or failed", ""]
        parts += [f"- {label(r)} {r['loss']} {MODE_LABEL[r['mode']]} B={r['b']}: {r['status']} — {short(r.get('reason', ''))}"
                  for r in skipped]
        parts.append("")
    if not doc["settings"].get("no_plots"):
        parts += [f"![time]({tag}-time.png)", "", f"![memory]({tag}-memory.png)", ""]
    return "\n".join(parts)


def console_summary(doc):
    lines = ["", "Median time per call", table(doc, "time"), "", "Peak memory increase", table(doc, "memory"),
             "", "Targets:"]
    for t in doc["targets"]:
        lines.append("  " + target_line(t).replace("**", ""))
    return "\n".join(lines)


# ------------------------------------------------------------------ plots

def plots(doc, base):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _rows_by_series(doc)
    panels = [loss for loss in LOSS_ORDER if any(k[0] == loss for k, _ in series)]
    keys = sorted({(k[1], k[2]) for k, _ in series}, key=lambda t: (list(impls.IMPLS).index(t[0]), t[1]))
    cmap = plt.get_cmap("tab10")
    colour = {k: cmap(i % 10) for i, k in enumerate(keys)}
    n = len(panels)
    cols = min(3, n)
    rows_n = math.ceil(n / cols)
    for what, ylabel, fname in (("time", "median time per call (s)", "time"),
                                ("memory", "peak memory increase (MiB)", "memory")):
        fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.0 * rows_n), squeeze=False)
        for ax, loss in zip(axes.flat, panels):
            for (l2, impl, be, mode, labels), rows in series:
                if l2 != loss:
                    continue
                pts = sorted((b, r) for b, r in rows.items() if r["status"] == "ok")
                if not pts:
                    continue
                xs = [b for b, _ in pts]
                ys = [r["time_s"] if what == "time" else max(r["peak_bytes"], 0) / MIB for _, r in pts]
                ax.plot(xs, ys, marker="o" if not labels else "x", ms=3, color=colour[(impl, be)],
                        ls="-" if mode == "forward" else "--",
                        label=f"{impls.IMPLS[impl].label} [{be}] {MODE_LABEL[mode]}" + (f" {labels}" if labels else ""))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(loss)
            ax.set_xlabel("batch size B")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(f"triplet_ref benchmark {doc['tag']} ({'solid: forward, dashed: forward+backward'})")
        fig.tight_layout()
        fig.savefig(f"{base}-{fname}.png", dpi=110)
        plt.close(fig)
