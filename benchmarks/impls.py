"""Every implementation the benchmark runs: triplet_ref itself, the bare matmul floor, and the peers.

This module is imported by the parent runner (for the metadata: which losses, backends and
modes each implementation covers, how to predict its memory, whether its value should equal
triplet_ref's) and by the worker subprocess (for :func:`build`).  It imports no framework at
module level, so the parent stays light.
"""

from __future__ import annotations

import dataclasses

LOSSES = ("batch_all", "batch_hard", "batch_semihard", "batch_contrastive")
SOFT = ("batch_all_soft",)  # batch_all(..., soft=True): the softplus version
FLOORS = ("pairwise_distances", "matmul")
MARGIN = 1.0

# backend name -> (array library, device kind)
CPU_BACKENDS = ("numpy", "torch", "jax")
GPU_BACKENDS = ("torch-cuda", "jax-gpu", "cupy")
AUTOGRAD = {"torch", "jax", "torch-cuda", "jax-gpu"}
MODES = ("forward", "forward_backward")


@dataclasses.dataclass(frozen=True)
class Impl:
    key: str  # short id used in configs
    label: str  # display name
    losses: tuple  # losses it implements
    backends: tuple  # backends it runs on (CPU and GPU names)
    growth: float  # time and memory grow like B**growth (for the time-budget prediction)
    # agreement with triplet_ref's NumPy value on the benchmark's P x K batches, per loss:
    # None = the semantics coincide there (checked); a string = why it is not comparable
    differs: dict = dataclasses.field(default_factory=dict)
    # where the semantics differ from triplet_ref on other batches (shown beside the figures)
    notes: dict = dataclasses.field(default_factory=dict)


IMPLS = {
    "triplet_ref": Impl(
        "triplet_ref", "triplet_ref", LOSSES + SOFT + ("pairwise_distances",),
        CPU_BACKENDS + GPU_BACKENDS, 2.0,
    ),
    "bare": Impl("bare", "X @ X.T", ("matmul",), CPU_BACKENDS + GPU_BACKENDS, 2.0),
    "pml": Impl(
        "pml", "pytorch-metric-learning", ("batch_all", "batch_all_soft", "batch_hard"),
        ("torch", "torch-cuda"), 2.0,
        notes={
            "batch_all": "TripletMarginLoss(margin=1, LpDistance(normalize_embeddings=False)), "
            "all triplets, AvgNonZeroReducer: enumerates every triplet as int64 indices",
            "batch_all_soft": "TripletMarginLoss(margin=1, smooth_loss=True, LpDistance(normalize_embeddings=False)), "
            "all triplets: softplus of every triplet (every one > 0, so its AvgNonZeroReducer is the mean)",
            "batch_hard": "BatchHardMiner + TripletMarginLoss(margin=1, MeanReducer), unnormalised "
            "LpDistance; with its default AvgNonZeroReducer it would average over anchors with l > 0",
        },
    ),
    "st": Impl(
        "st", "sentence-transformers", ("batch_all", "batch_hard", "batch_semihard"),
        ("torch", "torch-cuda"), 2.0,
        notes={
            "batch_all": "BatchAllTripletLoss(margin=1): averages over triplets with loss > 1e-16 "
            "(ours: > 0)",
            "batch_hard": "BatchHardTripletLoss(margin=1): averages over all B anchors and counts an "
            "anchor without positives with hp = 0 (ours: excluded); equal on P x K batches",
            "batch_semihard": "BatchSemiHardTripletLoss(margin=1): TF-Addons rule, sort + searchsorted",
        },
    ),
    "dense": Impl(
        "dense", "dense B^3 (textbook)", ("batch_all", "batch_semihard"),
        ("numpy", "torch", "torch-cuda", "cupy"), 3.0,
        notes={
            "batch_all": "omoindrot batch-all: (B, B, B) loss grid and 3-D triplet mask",
            "batch_semihard": "TF-Addons triplet_semihard_loss: (B, B, B) tiled masked minimum",
        },
    ),
}


def supports(impl: str, loss: str, backend: str, mode: str) -> bool:
    spec = IMPLS[impl]
    if loss not in spec.losses or backend not in spec.backends:
        return False
    return mode == "forward" or backend in AUTOGRAD


# ---- memory prediction (bytes) for the implementations whose size is known in closed form ----

def num_triplets(b: int, k: int) -> int:
    """Valid triplets of a P x K batch: every anchor has K - 1 positives and B - K negatives."""
    return b * (k - 1) * (b - k)


def predicted_bytes(impl: str, loss: str, mode: str, b: int, k: int) -> float | None:
    if impl == "dense":
        from dense import predicted_bytes as dense_bytes

        return dense_bytes(loss, mode, b)
    if impl == "pml" and loss in ("batch_all", "batch_all_soft"):
        # torch.where on the (B, B, B) uint8 triplet mask when B^3 < 2^31 (else a per-anchor
        # loop), then per triplet 3 int64 indices, 2 gathered distances, margin, hinge,
        # the reducer's > 0 mask and selection: ~50 bytes (~70 with autograd); measured
        # 1.1 GiB at B = 1024 and 2.5 GiB at B = 4096 (forward, CPU)
        cube = float(b) ** 3 if float(b) ** 3 < 2**31 - 1 else 0.0
        per = 52.0 if mode == "forward" else 76.0
        return cube + per * num_triplets(b, k)
    return None


# ---- building the callables (worker side) ----

def build(impl: str, loss: str, backend: str):
    """Return ``f(labels, embeddings) -> array`` for this implementation on this backend."""
    if impl == "triplet_ref":
        import triplet_ref as tr

        fn = getattr(tr, "batch_all" if loss == "batch_all_soft" else loss, None)
        if fn is None:
            raise NotImplementedError(f"triplet_ref.{loss} is not importable yet")
        if loss == "pairwise_distances":
            return lambda y, x: fn(x)
        if loss == "batch_all_soft":
            return lambda y, x: tr.batch_all(y, x, MARGIN, soft=True)
        return lambda y, x: fn(y, x, MARGIN)
    if impl == "bare":
        return lambda y, x: x @ x.T
    if impl == "dense":
        import dense

        f = dense.FUNCS[loss]
        return lambda y, x: f(y, x, MARGIN)
    if impl == "pml":
        from pytorch_metric_learning import distances, losses, miners, reducers

        def lp():
            return distances.LpDistance(normalize_embeddings=False, p=2, power=1)

        if loss in ("batch_all", "batch_all_soft"):
            lf = losses.TripletMarginLoss(margin=MARGIN, distance=lp(), triplets_per_anchor="all",
                                          smooth_loss=loss == "batch_all_soft")
            return lambda y, x: lf(x, y)
        miner = miners.BatchHardMiner(distance=lp())
        lf = losses.TripletMarginLoss(margin=MARGIN, distance=lp(), reducer=reducers.MeanReducer())
        return lambda y, x: lf(x, y, miner(x, y))
    if impl == "st":
        from sentence_transformers.sentence_transformer import losses as stl

        cls = {
            "batch_all": stl.BatchAllTripletLoss,
            "batch_hard": stl.BatchHardTripletLoss,
            "batch_semihard": stl.BatchSemiHardTripletLoss,
        }[loss]
        lf = cls(model=None, margin=MARGIN)  # no model: called on embeddings directly
        return lambda y, x: lf.compute_loss_from_embeddings([x], y)
    raise ValueError(f"unknown implementation {impl!r}")
