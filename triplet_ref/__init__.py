"""triplet_ref: the triplet-loss family, defined once on the Python array API.

Pure functions that take labels and embeddings of any array-API framework (NumPy,
PyTorch, JAX, CuPy, array-api-strict) and return the loss in the same framework, on the
same device.  ``triplet_ref.oracles`` holds plain-loop definitions that specify them.
No framework is imported until it is used.
"""
from .distances import METRICS, pairwise_distances
from .masks import anchor_negative_mask, anchor_positive_mask, triplet_mask
from .losses import (
    batch_all,
    batch_contrastive,
    batch_hard,
    batch_semihard,
    contrastive_loss,
    triplet_loss,
)
from .mined import mined_triplets, triplets_from_info
from .sampler import PKSampler
from . import backends

# torch.compile cannot trace a backend's first (importing) lookup: build the backends of
# frameworks that are already imported now (imports nothing new)
backends._preload_imported()
# and those imported later, right after their import (torch.compile in any import order)
backends._build_on_import()

__version__ = "0.1.0"

__all__ = [
    "pairwise_distances",
    "anchor_positive_mask",
    "anchor_negative_mask",
    "triplet_mask",
    "batch_all",
    "batch_hard",
    "batch_semihard",
    "batch_contrastive",
    "triplet_loss",
    "contrastive_loss",
    "backends",
    "oracles",
    "METRICS",
    "mined_triplets",
    "triplets_from_info",
    "PKSampler",
]


def __getattr__(name):
    # the oracles are imported on first use (they are for tests and other projects)
    if name == "oracles":
        import importlib

        return importlib.import_module(".oracles", __name__)
    raise AttributeError(f"module 'triplet_ref' has no attribute {name!r}")
