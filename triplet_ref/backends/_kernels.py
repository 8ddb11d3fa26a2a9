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


# at most this many positives per anchor: the kernels make one pass over the row per
# positive instead of sorting it (or, in the backward, searching sorted thresholds)
_SMALL_K = 16

# the unsigned integer type with a float type's width (its bit patterns)
_UINT = {np.dtype(np.float32): np.dtype(np.uint32), np.dtype(np.float64): np.dtype(np.uint64)}


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
_BLOCK_ELEMENTS = 1 << 20


def _row_blocks(B: int):
    rows = max(1, _BLOCK_ELEMENTS // max(B, 1))
    for start in range(0, B, rows):
        yield slice(start, min(B, start + rows))


def _slots(r: np.ndarray, rows: int):
    """Rank of each positive pair within its row (pairs from ``np.nonzero``, row-major),
    and the largest number of positives in a row."""
    npos = np.bincount(r, minlength=rows)
    start = np.concatenate([[0], np.cumsum(npos)[:-1]])
    return np.arange(r.size) - start[r], int(npos.max())


def _term_blocks(d: np.ndarray, terms: np.ndarray, neg: np.ndarray):
    """Per row block holding a term: ``(blk, r, c, d[blk], neg[blk], slot, kmax)`` with the
    terms' block-local rows and columns and their slots (see :func:`_slots`)."""
    for blk in _row_blocks(d.shape[0]):
        r, c = np.nonzero(terms[blk])
        if r.size == 0:
            continue
        db = d[blk]
        slot, kmax = _slots(r, db.shape[0])
        yield blk, r, c, db, neg[blk], slot, kmax


@_quiet
def batch_all_forward(d: np.ndarray, pos: np.ndarray, neg: np.ndarray, margin: float):
    """``L[a, p] = Σ_n max(d(a,p) − d(a,n) + m, 0)`` and ``count[a, p] = #{n: d(a,n) < d(a,p) + m}``
    (int32) at positive pairs, 0 elsewhere.  Sums are accumulated in float64."""
    B = d.shape[0]
    out = np.zeros((B, B), dtype=d.dtype)
    count = np.zeros((B, B), dtype=np.int32)
    m = d.dtype.type(margin)
    for blk, r, c, db, nb, slot, kmax in _term_blocks(d, pos, neg):
        rows = db.shape[0]
        if kmax <= _SMALL_K:
            # few positives per anchor (P×K batches): one pass over the row per positive
            # beats sorting it.  Padded slots hold -inf and add nothing.
            dn = np.where(nb, db, np.inf)
            V = np.full((rows, kmax), -np.inf, dtype=d.dtype)
            V[r, slot] = db[r, c] + m
            S = np.zeros((rows, kmax), dtype=np.float64)
            C = np.zeros((rows, kmax), dtype=np.int32)
            h = np.empty_like(dn)
            for k in range(kmax):
                np.subtract(V[:, k : k + 1], dn, out=h)
                np.maximum(h, 0, out=h)
                S[:, k] = np.add.reduce(h, axis=1, dtype=np.float64)
                C[:, k] = np.count_nonzero(h, axis=1)
            out[blk][r, c] = S[r, slot]
            count[blk][r, c] = C[r, slot]
            continue
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
    for blk, r, c, db, nb, slot, kmax in _term_blocks(d, pos, neg):
        gb, ob = grad[blk], out[blk]
        ob[...] = np.where(pos[blk], gb * count[blk], 0)  # blocks without a term stay 0
        rows = db.shape[0]
        thr = db[r, c] + m
        w = gb[r, c]
        if kmax <= _SMALL_K:
            T = np.full((rows, kmax), -np.inf, dtype=d.dtype)
            W = np.zeros((rows, kmax), dtype=d.dtype)
            T[r, slot] = thr
            W[r, slot] = w
            acc = np.zeros((rows, B), dtype=d.dtype)
            tmp = np.empty_like(acc)
            hit = np.empty(acc.shape, dtype=bool)
            for k in range(kmax):
                np.less(db, T[:, k : k + 1], out=hit)
                np.multiply(hit, W[:, k : k + 1], out=tmp)
                acc += tmp
            np.multiply(acc, nb, out=acc)
            ob -= acc
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
    for blk, r, c, db, nb, slot, kmax in _term_blocks(d, term, neg):
        rows = db.shape[0]
        if kmax <= _SMALL_K:
            # few positives per anchor: per positive, the nearest negative beyond it by
            # one integer subtraction and one argmin over the distances' bit patterns
            # (non-negative floats order like their bits; integer arithmetic is exact,
            # so only equal distances tie, and argmin takes the first index)
            uint = _UINT[d.dtype]
            dn = np.where(nb, db, np.inf)
            dn += 0.0  # -0.0 -> +0.0
            bits = dn.view(uint)
            inf_bits = np.array(np.inf, dtype=d.dtype).view(uint)
            key = np.empty_like(bits)
            # fallback, the first farthest negative: + (2^n - bits(inf)) maps +inf (not a
            # negative) to 0 and keeps the finite distances' order above it
            np.add(bits, (~inf_bits) + uint.type(1), out=key)
            fallback = key.argmax(axis=1)
            T = np.full((rows, kmax), np.inf, dtype=d.dtype)
            T[r, slot] = db[r, c]
            T += 0.0
            Tb = T.view(uint) + uint.type(1)
            CH = np.zeros((rows, kmax), dtype=np.int64)
            ST = np.zeros((rows, kmax), dtype=bool)
            idx = np.arange(rows)
            for k in range(kmax):
                # bits(d_an) - bits(d_ap) - 1 (mod 2^n): small for d_an > d_ap, huge otherwise
                np.subtract(bits, Tb[:, k : k + 1], out=key)
                j = key.argmin(axis=1)
                v = dn[idx, j]
                ok = (v > T[:, k]) & (v < np.inf)
                CH[:, k] = np.where(ok, j, fallback)
                ST[:, k] = ok
            chosen[blk][r, c] = CH[r, slot]
            semi[blk][r, c] = ST[r, slot]
            continue
        srt, order = _sorted_negatives(db, nb, with_order=True)
        nneg = nb.sum(axis=1)
        k = bsearch(srt, r, db[r, c], "right")  # first negative strictly farther than d(a, p)
        strict = k < nneg[r]
        rows = np.arange(db.shape[0])
        last = np.maximum(nneg - 1, 0)
        first_largest = bsearch(srt, rows, srt[rows, last], "left")
        at = np.where(strict, k, first_largest[r])
        chosen[blk][r, c] = order[r, np.minimum(at, B - 1)]
        semi[blk][r, c] = strict
    return chosen, semi
