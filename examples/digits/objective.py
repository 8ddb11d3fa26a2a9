"""The loss code both trainers share, written once against the array API.

``objective(labels, raw_embeddings, loss=..., margin=...)`` takes torch tensors or jax arrays
alike: it L2-normalises the network output, calls the triplet_ref loss (which keeps the
arrays' own framework) and returns the loss with the training curves as 0-d arrays. It runs
inside ``jax.jit`` / ``jax.value_and_grad(..., has_aux=True)`` and under torch autograd.
"""
from __future__ import annotations

from dataclasses import dataclass

import array_api_compat
import numpy as np

import triplet_ref as tr

LOSSES = ("batch_all", "batch_hard", "batch_semihard")
BACKENDS = ("torch", "jax")
CURVES = (
    "loss",
    "fraction_positive",
    "mean_embedding_norm",
    "mean_hardest_positive_dist",
    "mean_hardest_negative_dist",
)


SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class Config:
    loss: str = "batch_hard"
    margin: float = 0.1
    steps: int = 150
    p: int = 7  # classes per batch (all seven seen digits)
    k: int = 8  # images per class
    lr: float = 1e-3
    schedule: str = "cosine"  # learning rate: cosine decay to 0 over `steps`, or constant
    channels: tuple = (32, 64)  # the two 3x3 convolutions
    # None: the embedding is the network's pooled feature map itself (channels[1] * 4 * 4 values);
    # an int adds a final linear projection to that many dimensions
    embedding_dim: int | None = None
    standardize: bool = False  # if set, the network first standardises each image (mean 0, std 1 over its pixels)
    normalize: bool = True  # L2-normalise the network output before the loss and for retrieval
    seed: int = 0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not (np.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be finite and >= 0, got {self.margin!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if len(self.channels) != 2 or min(self.channels) < 1:
            raise ValueError(f"channels must be two positive ints, got {self.channels!r}")
        if self.embedding_dim is not None and self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be None or >= 1, got {self.embedding_dim!r}")

    @property
    def output_dim(self) -> int:
        """Dimension of the embedding."""
        return self.channels[1] * 16 if self.embedding_dim is None else self.embedding_dim

    def learning_rate(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): ``lr * (1 + cos(pi * step / steps)) / 2`` for
        "cosine" (as optax.cosine_decay_schedule and torch's CosineAnnealingLR), ``lr`` for "constant"."""
        if self.schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1.0 + float(np.cos(np.pi * min(step, self.steps) / self.steps)))


def loss_function(name: str):
    return {"batch_all": tr.batch_all, "batch_hard": tr.batch_hard, "batch_semihard": tr.batch_semihard}[name]


def l2_normalize(x, xp=None):
    """Rows scaled to unit length (a tiny epsilon keeps the gradient finite at 0)."""
    xp = xp or array_api_compat.array_namespace(x)
    return x / xp.sqrt(xp.sum(x * x, axis=1, keepdims=True) + 1e-12)


def hardest_distances(labels, embeddings, xp):
    """Mean over valid anchors of the farthest-positive and nearest-negative distance."""
    d = tr.pairwise_distances(embeddings)
    pos = tr.anchor_positive_mask(labels)
    neg = tr.anchor_negative_mask(labels)
    zero = xp.zeros_like(d)
    hp = xp.max(xp.where(pos, d, zero), axis=1)
    hn = xp.min(xp.where(neg, d, zero + xp.max(d) + 1.0), axis=1)
    valid = xp.astype(xp.any(pos, axis=1) & xp.any(neg, axis=1), d.dtype)
    n = xp.maximum(xp.sum(valid), xp.ones_like(xp.sum(valid)))
    return xp.sum(hp * valid) / n, xp.sum(hn * valid) / n


def objective(labels, raw_embeddings, *, loss: str, margin: float, normalize: bool = True):
    """Returns ``(loss_value, curves)``; ``curves`` maps each name of ``CURVES`` to a 0-d array."""
    xp = array_api_compat.array_namespace(raw_embeddings)
    emb = l2_normalize(raw_embeddings, xp) if normalize else raw_embeddings
    value, info = loss_function(loss)(labels, emb, margin=margin, return_info=True)
    if "mean_hardest_positive_dist" in info:
        hp, hn = info["mean_hardest_positive_dist"], info["mean_hardest_negative_dist"]
    else:
        hp, hn = hardest_distances(labels, emb, xp)
    norms = xp.sqrt(xp.sum(raw_embeddings * raw_embeddings, axis=1))
    curves = {
        "loss": value,
        "fraction_positive": info["fraction_positive"],
        "mean_embedding_norm": xp.mean(norms),
        "mean_hardest_positive_dist": hp,
        "mean_hardest_negative_dist": hn,
    }
    return value, curves
