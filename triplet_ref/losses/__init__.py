"""The losses, one module per family; each is a pure function of (labels, embeddings)."""
from .batch_all import batch_all
from .batch_hard import batch_hard
from .contrastive import batch_contrastive, contrastive_loss
from .explicit import triplet_loss
from .semihard import batch_semihard

__all__ = ["batch_all", "batch_hard", "batch_semihard", "batch_contrastive", "triplet_loss",
           "contrastive_loss"]
