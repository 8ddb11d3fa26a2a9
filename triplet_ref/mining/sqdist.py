"""The (squared) euclidean distance matrix: the step every euclidean loss starts with.

Portable: the Gram formula on rows shifted by the first row, in
:func:`triplet_ref.distances.gram_sqdist` (its numerics are documented there).  Native:
torch's fused distance kernel (``_PairwiseSq`` in ``triplet_ref/backends/_torch.py``,
one GEMM and an in-place epilogue); NumPy runs the portable formula with in-place
backend primitives.  No NumPy kernel: a GEMM is already native everywhere.
"""
from __future__ import annotations

from ._dispatch import Step

__all__ = ["SQDIST"]


def _portable(ctx, x, squared: bool):
    from ..distances import gram_sqdist

    return gram_sqdist(ctx, x, squared)


SQDIST = Step("sqdist", "pairwise_distances", _portable)
"""``(x, squared) -> d``: ``(B, B)`` euclidean (or squared, ``squared=True``) distances of
the rows of ``x`` (B, D), of ``x``'s dtype, exactly 0 on the diagonal, differentiable."""
