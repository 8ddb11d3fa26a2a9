"""The label masks against the oracle masks, on every backend."""
from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import oracles

MASKS = {
    "anchor_positive_mask": (tr.anchor_positive_mask, oracles.anchor_positive_mask, 2),
    "anchor_negative_mask": (tr.anchor_negative_mask, oracles.anchor_negative_mask, 2),
    "triplet_mask": (tr.triplet_mask, oracles.triplet_mask, 3),
}

LABELS = {
    "mixed": [0, 1, 0, 2, 1, 0, 3, 2],
    "all_same": [5, 5, 5, 5],
    "all_distinct": [3, 1, 4, 0, 2],
    "single": [7],
    "pair_same": [1, 1],
    "pair_distinct": [1, 2],
    "negative_and_large": [-3, 2**31 - 1, -3, 0, 2**31 - 1],
}

FRAMEWORK = {"numpy": ("numpy",), "torch": ("torch",), "jax": ("jax", "jaxlib"),
             "cupy": ("cupy",), "array_api_strict": ("array_api_strict",)}


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("labels", list(LABELS))
def test_mask_matches_oracle(xp, mask, labels):
    fn, oracle, ndim = MASKS[mask]
    y_np = np.asarray(LABELS[labels], dtype=np.int64)
    y = xp.asarray(y_np)
    m = fn(y)
    B = len(y_np)
    assert tuple(m.shape) == (B,) * ndim
    assert m.dtype == xp.xp.bool
    assert type(m).__module__.split(".")[0] in FRAMEWORK[xp.name]
    assert array_api_compat.device(m) == array_api_compat.device(y)
    np.testing.assert_array_equal(xp.to_numpy(m), oracle(y_np))


def test_hand_computed_masks():
    y = [0, 0, 1]
    np.testing.assert_array_equal(tr.anchor_positive_mask(y),
                                  [[False, True, False], [True, False, False], [False, False, False]])
    np.testing.assert_array_equal(tr.anchor_negative_mask(y),
                                  [[False, False, True], [False, False, True], [True, True, False]])
    t = tr.triplet_mask(y)
    assert t.shape == (3, 3, 3)
    assert sorted(zip(*np.nonzero(t))) == [(0, 1, 2), (1, 0, 2)]


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"])
def test_every_integer_dtype(xp, dtype):
    y_np = np.array([3, 1, 3, 0, 1], dtype=dtype)
    try:
        y = xp.asarray(y_np)
    except (TypeError, ValueError) as exc:  # the framework itself lacks the dtype
        pytest.skip(f"{xp.label} cannot hold {dtype}: {exc}")
    for fn, oracle, _ in MASKS.values():
        np.testing.assert_array_equal(xp.to_numpy(fn(y)), oracle(y_np.astype(np.int64)))


def test_backend_argument_converts_labels(xp):
    y = [2, 0, 2, 1]
    for fn, oracle, _ in MASKS.values():
        for backend in (xp.name, xp.xp):
            m = fn(y, backend=backend)
            assert type(m).__module__.split(".")[0] in FRAMEWORK[xp.name], (backend, type(m))
            np.testing.assert_array_equal(xp.to_numpy(m), oracle(y))


def test_triplet_mask_is_the_product_of_the_pair_masks(xp):
    y = xp.asarray(np.array([0, 1, 0, 2, 1, 0, 1]))
    t = xp.to_numpy(tr.triplet_mask(y))
    p = xp.to_numpy(tr.anchor_positive_mask(y))
    n = xp.to_numpy(tr.anchor_negative_mask(y))
    np.testing.assert_array_equal(t, p[:, :, None] & n[:, None, :])
