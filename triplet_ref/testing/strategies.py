"""Hypothesis strategies for labels and embeddings, to fuzz any triplet-loss implementation.

Imports hypothesis when this module is imported (``triplet_ref.testing.strategies``);
nothing else in triplet_ref needs it.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .regimes import REGIMES, make_labels

__all__ = ["label_vectors", "regimes"]


def regimes() -> st.SearchStrategy[str]:
    """One of the label regimes of :mod:`triplet_ref.testing.regimes`."""
    return st.sampled_from(REGIMES)


@st.composite
def label_vectors(draw, min_size: int = 1, max_size: int = 64, regime: str | None = None,
                  sparse_ids: bool | None = None) -> np.ndarray:
    """An int64 label vector drawn from a regime (any regime unless ``regime`` is given),
    of a size in ``[min_size, max_size]``, shuffled, with sparse/negative ids at random."""
    name = regime if regime is not None else draw(regimes())
    size = draw(st.integers(min_size, max_size))
    seed = draw(st.integers(0, 2**32 - 1))
    sparse = draw(st.booleans()) if sparse_ids is None else sparse_ids
    return make_labels(name, size, seed, sparse_ids=sparse)
