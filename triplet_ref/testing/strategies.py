"""Hypothesis strategies for labels and embeddings, to fuzz any triplet-loss implementation.

Imports hypothesis when this module is imported (``triplet_ref.testing.strategies``);
nothing else in triplet_ref needs it.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .regimes import REGIMES, make_labels

__all__ = ["label_vectors", "regimes", "embeddings", "batches"]


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


@st.composite
def embeddings(draw, batch: int, dim: int | None = None, *, kind: str | None = None,
               dtype: str = "float64") -> np.ndarray:
    """A ``(batch, dim)`` NumPy array of embeddings, of one of the kinds that break triplet
    losses (any kind unless ``kind`` is given):

    * ``"normal"``: standard normal rows;
    * ``"grid"``: small multiples of 1/4 (exactly equal distances, exact ties in float32);
    * ``"duplicates"``: rows repeated (zero distances between different samples);
    * ``"zeros"``: some all-zero rows;
    * ``"scaled"``: normal rows times 1e-3 or 1e3 (scale and offset robustness).

    ``dim`` is drawn from 1..8 when not given.
    """
    kinds = ("normal", "grid", "duplicates", "zeros", "scaled")
    k = kind if kind is not None else draw(st.sampled_from(kinds))
    if k not in kinds:
        raise ValueError(f"kind: expected one of {kinds}, got {k!r}")
    d = dim if dim is not None else draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if k == "grid":
        x = rng.integers(-3, 4, size=(batch, d)) * 0.25
    else:
        x = rng.standard_normal((batch, d))
    if k == "duplicates" and batch > 1:
        src = rng.integers(0, max(1, batch // 2), size=batch)
        x = x[src]
    elif k == "zeros":
        x[rng.random(batch) < 0.3] = 0.0
    elif k == "scaled":
        x = x * draw(st.sampled_from([1e-3, 1e3])) + draw(st.sampled_from([0.0, 10.0]))
    return np.ascontiguousarray(x, dtype=dtype)


@st.composite
def batches(draw, min_size: int = 1, max_size: int = 32, regime: str | None = None,
            dtype: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    """``(labels, embeddings)``: a label vector of :func:`label_vectors` and matching
    :func:`embeddings` of any kind."""
    y = draw(label_vectors(min_size, max_size, regime))
    return y, draw(embeddings(len(y), dtype=dtype))
