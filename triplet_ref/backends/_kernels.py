"""NumPy kernels for the sort-and-search steps of batch_all and batch_semihard.

These are the "native primitive" for every CPU backend: NumPy calls them directly, the
torch backend registers them as custom ops for CPU tensors (opaque to torch.compile),
and the JAX backend reaches them through ``jax.pure_callback`` on CPU.  Inside a kernel
shapes may depend on data (they run eagerly), which lets them skip everything that is
not a term: only positive pairs are searched.

NumPy sorts float32 rows with SIMD sorting networks (x86-simd-sort), an order of
magnitude faster than torch.sort or XLA's sort on CPU; that is the whole point.

All kernels take ``d`` (B, B) float distances, bool masks, and return NumPy arrays.
"""
from __future__ import annotations

import numpy as np

import functools


def _quiet(fn):
    """NaN inputs are legal (the loss is NaN): no RuntimeWarning from the arithmetic."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(invalid="ignore", over="ignore"):
            return fn(*args, **kwargs)

    return wrapper


# at most this many positives per anchor: the backward uses one masked pass per slot
_SMALL_K = 16


def bsearch(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray, side: str) -> np.ndarray:
    """Vectorised binary search of ``values[k]`` in ``sorted_rows[rows[k]]`` (ascending)."""
    n = sorted_rows.shape[-1]
    lo = np.zeros(values.shape, dtype=np.int64)
    hi = np.full(values.shape, n, dtype=np.int64)
    flat = sorted_rows.reshape(-1)
    base = rows.astype(np.int64) * n
    for _ in range(int(n).bit_length() + 1):
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) >> 1
        v = flat[base + np.minimum(mid, n - 1)]
        right = (v < values) if side == "left" else (v <= values)
        right &= active
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    return lo


def _sorted_negatives(d: np.ndarray, neg: np.ndarray, with_order: bool):
    """Each row's negative distances ascending (+inf after them) and, optionally, the
    column order, ties broken by the smaller index."""
    dn = np.where(neg, d, np.inf)
    dn += 0.0  # -0.0 -> +0.0, so the bit patterns below order like the values
    if not with_order:
        return np.sort(dn, axis=1), None
    B = d.shape[1]  # columns: d may be a block of rows
    if dn.dtype == np.float32:
        # pack (value bits, column) into one uint64 key: one SIMD sort gives the values
        # and a stable order (non-negative float32 bit patterns order like the floats)
        key = (dn.view(np.uint32).astype(np.uint64) << np.uint64(32)) | np.arange(B, dtype=np.uint64)
        key.sort(axis=1)
        order = (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
        srt = (key >> np.uint64(32)).astype(np.uint32).view(np.float32)
        return srt, order
    order = np.argsort(dn, axis=1, kind="stable")
    return np.take_along_axis(dn, order, axis=1), order


# rows per block: every temporary of a kernel holds at most this many elements, so the
# kernels add O(B) rows of scratch to their (B, B) outputs, never several full B×B arrays
_BLOCK_ELEMENTS = 1 << 22


def _row_blocks(B: int):
    rows = max(1, _BLOCK_ELEMENTS // max(B, 1))
    for start in range(0, B, rows):
        yield slice(start, min(B, start + rows))


@_quiet
def batch_all_forward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin: float):
    """``L[a, p] = Σ_n max(d(a,p) − d(a,n) + m, 0)`` and ``count[a, p] = #{n: d(a,n) < d(a,p) + m}``
    (int32) at positive pairs, 0 elsewhere.  Sums are accumulated in float64."""
    B = d.shape[0]
    out = np.zeros((B, B), dtype=d.dtype)
    count = np.zeros((B, B), dtype=np.int32)
    m = d.dtype.type(margin)
    for blk in _row_blocks(B):
        r, c = np.nonzero(pos[blk])
        if r.size == 0:
            continue
        db, nb = d[blk], neg[blk]
        srt, _ = _sorted_negatives(db, nb, with_order=False)
        nneg = nb.sum(axis=1)
        base = np.where(nneg > 0, srt[:, 0], 0).astype(np.float64)
        real = np.arange(B)[None, :] < nneg[:, None]
        shifted = np.where(real, srt - base[:, None], 0.0)
        prefix = np.cumsum(shifted, axis=1, dtype=np.float64)
        v = db[r, c] + m
        k = bsearch(srt, r, v, "left")
        below = np.where(k > 0, prefix[r, np.maximum(k - 1, 0)], 0.0)
        vals = k * (v.astype(np.float64) - base[r]) - below
        out[blk][r, c] = np.maximum(vals, 0.0)
        count[blk][r, c] = k
    return out, count


@_quiet
def batch_all_backward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin: float,
                       grad: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Gradient of ``Σ grad ⊙ L`` with respect to ``d``.

    ``∂/∂d(a,p) = grad[a,p]·count[a,p]`` and
    ``∂/∂d(a,n) = −Σ_{p: d(a,n) < d(a,p) + m} grad[a,p]``.
    """
    B = d.shape[0]
    out = np.zeros((B, B), dtype=d.dtype)
    m = d.dtype.type(margin)
    grad = np.broadcast_to(grad, (B, B))
    for blk in _row_blocks(B):
        db, pb, nb, gb = d[blk], pos[blk], neg[blk], grad[blk]
        ob = out[blk]
        ob[...] = np.where(pb, gb * count[blk], 0)
        r, c = np.nonzero(pb)
        if r.size == 0:
            continue
        rows = db.shape[0]
        npos = np.bincount(r, minlength=rows)
        kmax = int(npos.max())
        start = np.concatenate([[0], np.cumsum(npos)[:-1]])
        slot = np.arange(r.size) - start[r]
        thr = db[r, c] + m
        w = gb[r, c]
        if kmax <= _SMALL_K:
            T = np.full((rows, kmax), -np.inf, dtype=d.dtype)
            W = np.zeros((rows, kmax), dtype=d.dtype)
            T[r, slot] = thr
            W[r, slot] = w
            acc = np.zeros((rows, B), dtype=d.dtype)
            for k in range(kmax):
                acc += np.where(db < T[:, k : k + 1], W[:, k : k + 1], 0)
            ob -= np.where(nb, acc, 0)
            continue
        # many positives per anchor: per row, sort the thresholds and search each negative
        for a in range(rows):
            sel = r == a
            if not sel.any():
                continue
            t = thr[sel]
            o = np.argsort(t)
            ts = t[o]
            tail = np.concatenate([np.cumsum(w[sel][o][::-1])[::-1], [0.0]])  # Σ w over t > x
            idx = np.searchsorted(ts, db[a], side="right")
            ob[a] -= np.where(nb[a], tail[idx], 0).astype(d.dtype)
    return out


@_quiet
def semihard_choice(d: np.ndarray, neg: np.ndarray, term: np.ndarray):
    """The semi-hard negative of every term ``(a, p)``: ``(chosen, semihard)``, both
    (B, B); ``chosen`` is 0 off-term, ``semihard`` says whether the strict rule chose."""
    B = d.shape[0]
    chosen = np.zeros((B, B), dtype=np.int64)
    semi = np.zeros((B, B), dtype=bool)
    for blk in _row_blocks(B):
        r, c = np.nonzero(term[blk])
        if r.size == 0:
            continue
        db = d[blk]
        srt, order = _sorted_negatives(db, neg[blk], with_order=True)
        nneg = neg[blk].sum(axis=1)
        k = bsearch(srt, r, db[r, c], "right")  # first negative strictly farther than d(a, p)
        strict = k < nneg[r]
        rows = np.arange(db.shape[0])
        last = np.maximum(nneg - 1, 0)
        first_largest = bsearch(srt, rows, srt[rows, last], "left")
        at = np.where(strict, k, first_largest[r])
        chosen[blk][r, c] = order[r, np.minimum(at, B - 1)]
        semi[blk][r, c] = strict
    return chosen, semi
