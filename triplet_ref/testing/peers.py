"""The peer-difference table, produced by the kit on the installed peers.

``python -m triplet_ref.testing.peers`` runs :func:`triplet_ref.testing.check_loss` on
pytorch-metric-learning's and sentence-transformers' batch losses (torch, CPU) and prints
a Markdown table: for each peer configuration, the variants the kit finds from the
evidence.  ``docs/semantics.md`` ("Where peers differ") holds its output;
``tests/test_testing_peers.py`` checks that the kit still finds exactly those rows.

Options: ``--quick`` (float64 only, no gradients: what the default test run uses),
``--only NAME`` (one row), ``--verbose`` (print every report).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from .kit import check_loss

__all__ = ["PEERS", "Peer", "run", "table", "main"]

#: the margin the peers are checked at (every peer is built with it, except where it has none)
MARGIN = 0.5


@dataclass(frozen=True)
class Peer:
    """One peer configuration: a label, the loss it implements, ``soft``, and a builder
    returning ``fn(labels, embeddings)`` (torch tensors)."""

    name: str
    loss: str
    build: Callable[[float], Callable]
    soft: bool = False
    package: str = ""


def _pml_dist(normalize):
    from pytorch_metric_learning import distances

    return distances.LpDistance() if normalize else distances.LpDistance(normalize_embeddings=False)


def _pml_all(normalize, soft=False):
    def build(m):
        from pytorch_metric_learning import losses

        kw = {} if normalize else {"distance": _pml_dist(False)}
        lf = losses.TripletMarginLoss(margin=m, smooth_loss=soft, **kw)
        return lambda y, x: lf(x, y)
    return build


def _pml_hard(normalize, mean_reducer):
    def build(m):
        from pytorch_metric_learning import losses, miners, reducers

        kw = {} if normalize else {"distance": _pml_dist(False)}
        if mean_reducer:
            kw["reducer"] = reducers.MeanReducer()
        lf = losses.TripletMarginLoss(margin=m, **kw)
        miner = miners.BatchHardMiner(**({} if normalize else {"distance": _pml_dist(False)}))
        return lambda y, x: lf(x, y, miner(x, y))
    return build


def _pml_contrastive(m):
    from pytorch_metric_learning import losses

    lf = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=m)
    return lambda y, x: lf(x, y)


def _st(cls_name, has_margin=True):
    def build(m):
        from sentence_transformers.sentence_transformer import losses as stl

        cls = getattr(stl, cls_name)
        lf = cls(model=None, margin=m) if has_margin else cls(model=None)
        return lambda y, x: lf.compute_loss_from_embeddings([x], y)
    return build


PEERS = (
    Peer("PML TripletMarginLoss()", "batch_all", _pml_all(True), package="pytorch_metric_learning"),
    Peer("PML TripletMarginLoss(distance=LpDistance(normalize_embeddings=False))", "batch_all",
         _pml_all(False), package="pytorch_metric_learning"),
    Peer("PML TripletMarginLoss(smooth_loss=True)", "batch_all", _pml_all(True, True), soft=True,
         package="pytorch_metric_learning"),
    Peer("PML BatchHardMiner() + TripletMarginLoss()", "batch_hard", _pml_hard(True, False),
         package="pytorch_metric_learning"),
    Peer("PML BatchHardMiner + TripletMarginLoss(reducer=MeanReducer()), unnormalised LpDistance",
         "batch_hard", _pml_hard(False, True), package="pytorch_metric_learning"),
    Peer("PML ContrastiveLoss(pos_margin=0, neg_margin=m)", "batch_contrastive", _pml_contrastive,
         package="pytorch_metric_learning"),
    Peer("ST BatchAllTripletLoss", "batch_all", _st("BatchAllTripletLoss"), package="sentence_transformers"),
    Peer("ST BatchHardTripletLoss", "batch_hard", _st("BatchHardTripletLoss"), package="sentence_transformers"),
    Peer("ST BatchHardSoftMarginTripletLoss", "batch_hard", _st("BatchHardSoftMarginTripletLoss", False),
         soft=True, package="sentence_transformers"),
    Peer("ST BatchSemiHardTripletLoss", "batch_semihard", _st("BatchSemiHardTripletLoss"),
         package="sentence_transformers"),
)


def run(peers=PEERS, *, quick: bool = False, margin: float = MARGIN):
    """``[(peer, report)]`` for the installed peers (a peer whose package is missing is
    left out)."""
    import importlib.util

    out = []
    for p in peers:
        if p.package and importlib.util.find_spec(p.package) is None:
            continue
        kw = dict(dtypes=("float64",), grad=False) if quick else {}
        rep = check_loss(p.build(margin), p.loss, backend="torch", margin=margin, soft=p.soft, **kw)
        out.append((p, rep))
    return out


def table(results) -> str:
    """The Markdown table of ``run``'s results."""
    lines = ["| peer configuration | loss | variants found by `check_loss` |", "|---|---|---|"]
    for p, rep in results:
        found = "; ".join(rep.variants) if rep.variants else (
            "none: conforms" if rep.ok else "unexplained differences (see the report)")
        loss = p.loss + (" (soft)" if p.soft else "")
        lines.append(f"| {p.name} | {loss} | {found} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m triplet_ref.testing.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="float64 only, no gradients")
    ap.add_argument("--only", help="run the peers whose name contains this")
    ap.add_argument("--verbose", action="store_true", help="print every report")
    args = ap.parse_args(argv)
    peers = [p for p in PEERS if not args.only or args.only in p.name]
    results = run(peers, quick=args.quick)
    if args.verbose:
        for _, rep in results:
            print(rep, "\n", file=sys.stderr)
    print(f"margin {MARGIN}, torch CPU, {'float64 only, no gradients' if args.quick else 'float32 and float64, gradients'}:\n")
    print(table(results))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
