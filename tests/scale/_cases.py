"""What the global-batch workers share: the losses under test, the info scalars they
compare, and the batch (run as scripts, the workers import this module from their folder)."""
from __future__ import annotations

import numpy as np

import triplet_ref as tr

#: name -> (loss, extra keywords): every batch loss, hinge and soft
LOSSES = {
    "batch_all": (tr.batch_all, {}),
    "batch_all_soft": (tr.batch_all, {"soft": True}),
    "batch_hard": (tr.batch_hard, {}),
    "batch_hard_soft": (tr.batch_hard, {"soft": True}),
    "batch_semihard": (tr.batch_semihard, {}),
    "batch_contrastive": (tr.batch_contrastive, {}),
}
INFO_SCALARS = ("num_valid", "num_positive", "fraction_positive", "fraction_semihard",
                "mean_hardest_positive_dist", "mean_hardest_negative_dist")
MARGIN = 0.8


def selected(only=None):
    """The names of :data:`LOSSES` to run (``only``: a list of names, or a comma-separated
    string; None or empty: all)."""
    if isinstance(only, str):
        only = only.split(",") if only else None
    return [n for n in LOSSES if not only or n in only]


def call(name, labels, embeddings, **kw):
    """The loss ``name`` with the shared margin and its extra keywords."""
    fn, extra = LOSSES[name]
    return fn(labels, embeddings, MARGIN, **extra, **kw)


def info_scalars(info):
    return {k: v for k, v in info.items() if k in INFO_SCALARS}


def batch(class_sizes, dim, seed):
    """``(x, y)``: float64 ``(n, dim)`` normal rows and shuffled labels, ``class_sizes[c]``
    rows of class ``c`` (NumPy)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sum(class_sizes), dim))
    y = rng.permutation(np.repeat(np.arange(len(class_sizes)), class_sizes))
    return x, y
