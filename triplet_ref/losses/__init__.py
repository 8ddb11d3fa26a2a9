"""The losses, one module per family; each is a pure function of (labels, embeddings).

The public functions are wrapped once here by :func:`._common.public` (clear messages for
unknown keywords and non-bool flags); the modules hold the plain definitions.
"""
from ._common import public as _public
from .batch_all import batch_all as _batch_all
from .batch_hard import batch_hard as _batch_hard
from .contrastive import batch_contrastive as _batch_contrastive, contrastive_loss as _contrastive_loss
from .explicit import triplet_loss as _triplet_loss
from .semihard import batch_semihard as _batch_semihard

batch_all = _public(_batch_all)
batch_hard = _public(_batch_hard)
batch_semihard = _public(_batch_semihard)
batch_contrastive = _public(_batch_contrastive)
triplet_loss = _public(_triplet_loss)
contrastive_loss = _public(_contrastive_loss)

__all__ = ["batch_all", "batch_hard", "batch_semihard", "batch_contrastive", "triplet_loss",
           "contrastive_loss"]
