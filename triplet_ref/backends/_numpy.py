"""NumPy backend: no autograd, so primitives may work in place on intermediates.

Sorting, searching and gathering use the portable array-API primitives: NumPy runs the
mining steps' NumPy kernels natively (``triplet_ref/mining/``), so those primitives serve
only the portable implementation, which the suite forces on NumPy too."""
from __future__ import annotations

import numpy as np

from ._base import Backend


# elements per block of :meth:`NumpyBackend.take_rows` (its flat indices stay in cache)
_TAKE_BLOCK = 1 << 16


class NumpyBackend(Backend):
    name = "numpy"

    def namespace(self):
        import array_api_compat.numpy as xp

        return xp

    def is_native(self, x):
        return isinstance(x, np.ndarray)

    def from_numpy(self, a, dtype=None, device=None):
        a = np.asarray(a)
        return a.astype(dtype) if dtype is not None else a

    def to_numpy(self, x):
        return np.asarray(x)

    def gram_to_sqdist(self, xp, G, sq):
        # NumPy computes ``X @ X.T`` with syrk, which is exactly symmetric; G is a fresh
        # intermediate, so the arithmetic is done in place.  ``sq_i + sq_j`` is formed
        # first (it commutes exactly), then added once: d²_ij and d²_ji round alike.
        G *= -2
        G += sq[:, None] + sq[None, :]
        return G

    def block_distances(self, xp, xb, X, squared, offset):
        # no autograd: the (b, R) buffer of the product is finished in place
        if not (isinstance(xb, np.ndarray) and isinstance(X, np.ndarray)) or xb.dtype.kind != "f":
            return None
        x0 = X[:1]
        xbc = xb - x0
        Xc = X - x0
        d = xbc @ Xc.T
        d *= -2
        d += np.einsum("ij,ij->i", Xc, Xc)[None, :]
        d += np.einsum("ij,ij->i", xbc, xbc)[:, None]
        np.maximum(d, 0, out=d)
        if offset >= 0 and d.shape[0]:
            np.fill_diagonal(d[:, offset:offset + d.shape[0]], 0)
        if not squared:
            np.sqrt(d, out=d)
        return d

    def sqdist_from_gram(self, xp, x, G, sq, tau, pairs, sqrt):
        # gram_to_sqdist + refine_sqdist + finish_sqdist fused, one cache-sized block of
        # rows at a time (one pass over G in memory instead of five); G is a fresh,
        # exactly symmetric (syrk) intermediate, so the work is done in place.  With
        # numba (the kernels' body selection): the numba stripe pass instead, its columns
        # split among the cores (_sqdist_numba)
        n = G.shape[0]
        if n > 1 and isinstance(G, np.ndarray) and G.flags.c_contiguous and G.flags.writeable:
            from ..mining.sqdist import stripe_kernel

            kernel = stripe_kernel(G.dtype)
            if kernel is not None:
                return _sqdist_numba(kernel, x, G, sq, tau, pairs, sqrt)
        thr = sq * tau
        screen = thr + (thr.max() if n else 0)
        found = []
        step = max(1, (1 << 16) // max(1, n))
        for i in range(0, n, step):
            g = G[i:i + step]
            g *= -2
            g += sq[i:i + step, None] + sq[None, :]
            if tau > 0:
                # the diagonal (d² ~ 0) to inf first, so that a block without a close pair
                # costs one comparison and no nonzero (the diagonal is zeroed below)
                k = np.arange(g.shape[0])
                g[k, k + i] = np.inf
            # a row minimum first: one read of the block, no boolean block written (a NaN
            # minimum, from a NaN row, takes the full comparison: the other pairs count)
            m = None
            if tau > 0 and (~(g.min(axis=1) >= screen[i:i + step])).any():
                m = g < screen[i:i + step, None]
            if m is not None:
                r, c = np.nonzero(m)
                r += i
                keep = c > r
                r, c = r[keep], c[keep]
                found.append((r, c, G[r, c]))
            np.maximum(g, 0, out=g)
            if sqrt:
                np.sqrt(g, out=g)
        np.fill_diagonal(G, 0)
        if found:
            r, c, vals = (np.concatenate(z) for z in zip(*found))
            refine_sparse_inplace(np, x, G, sq, tau, pairs, sqrt=sqrt, found=(r, c, vals))
        return G

    def refine_sqdist(self, xp, x, d, w, tau, pairs):
        # the contract is the portable version's (_base._refine_sqdist); sparse and in
        # place: only the close pairs are found (np.nonzero) and recomputed
        return refine_sparse_inplace(np, x, d, w, tau, pairs)

    def finish_sqdist(self, xp, d2, sqrt):
        # d2 is a fresh intermediate owned by the caller: work in place.
        np.maximum(d2, 0, out=d2)
        np.fill_diagonal(d2, 0)
        if sqrt:
            np.sqrt(d2, out=d2)
        return d2

    def take_rows(self, xp, x, idx):
        """``out[i, j] = x[i, idx[i, j]]``: for 2-D arrays, a flat ``np.take`` per
        cache-sized block of rows (the flat indices of a block stay in cache; 1.5–2×
        faster than ``take_along_axis``'s fancy indexing at B = 4096, more so for
        scattered indices).  Blocks holding an index outside ``[0, C)`` (negative
        indices wrap, as in ``take_along_axis``) take the general path."""
        if not (isinstance(x, np.ndarray) and isinstance(idx, np.ndarray) and x.ndim == 2
                and idx.ndim == 2 and idx.shape[0] == x.shape[0] and x.shape[1] > 0
                and x.flags.c_contiguous and idx.dtype.kind in "iu" and idx.size >= _TAKE_BLOCK):
            return super().take_rows(xp, x, idx)
        R, C = x.shape
        out = np.empty(idx.shape, dtype=x.dtype)
        flat = x.reshape(-1)
        step = max(1, _TAKE_BLOCK // idx.shape[1])
        for s in range(0, R, step):
            e = min(R, s + step)
            ib = idx[s:e]
            if ib.size and (int(ib.min()) < 0 or int(ib.max()) >= C):
                out[s:e] = np.take_along_axis(x[s:e], ib, axis=-1)
                continue
            ib = ib.astype(np.intp)  # a copy: the row offsets are added in place
            ib += np.arange(s * C, e * C, C, dtype=np.intp)[:, None]
            np.take(flat, ib, out=out[s:e])
        return out

    def native_kernel(self, step, like):
        # the steps' NumPy kernels are NumPy's native implementation
        return step.kernel.forward if step.kernel is not None else None

    def devices(self):
        return ["cpu"]


BACKEND = NumpyBackend()

#: rows per stripe, columns per tile of the numba pass; stripes split among threads from
#: this many entries on; close pairs stored per row on average (more: one search of d)
_NUMBA_ROWS = 512
_NUMBA_TILE = 128
_NUMBA_THREAD_MIN = 1 << 18
_FOUND_PER_ROW = 16


def _sqdist_numba(kernel, x, G, sq, tau, pairs, sqrt):
    """``NumpyBackend.sqdist_from_gram`` by the numba stripe pass
    (``_numba_sqdist.sqdist_stripe``, :class:`~triplet_ref.mining.sqdist.StripePass`) in
    place on ``G``: the epilogue, the close-pair test, the clamp, the square root, the zero
    diagonal and the (here already exact) symmetry in one sweep, then the close pairs
    found refined (``refine_sparse_inplace``)."""
    from ..mining import _blocks
    from ..mining.sqdist import StripePass

    n = G.shape[0]
    sq = np.array(sq, dtype=G.dtype, copy=True)  # writable, contiguous (compiled for those)
    thr = sq * G.dtype.type(tau) if tau > 0 else np.full(n, -np.inf, dtype=G.dtype)
    with StripePass(kernel, G, sq, thr, sqrt, _NUMBA_TILE, _blocks.cpu_count(),
                    _NUMBA_THREAD_MIN, _FOUND_PER_ROW) as sp:
        for g in range(0, n, _NUMBA_ROWS):
            sp.stripe(g, min(n, g + _NUMBA_ROWS))
    if not sp.count:
        return G
    found = sp.found()
    if found is None:  # more close pairs than the buffers hold: search d² (pairs r < c)
        d2 = G * G if sqrt else G
        r, c = np.nonzero(d2 < (thr + thr.max())[:, None])
        keep = r < c
        r, c = r[keep], c[keep]
        found = (r, c, d2[r, c])
    return refine_sparse_inplace(np, x, G, sq, tau, pairs, sqrt=sqrt, found=found)


def refine_sparse_inplace(xp, x, d, w, tau, pairs, sqrt=False, found=None):
    """``Backend.refine_sqdist`` for eager NumPy-like arrays with fancy indexing (NumPy;
    the torch kernel uses the same steps): cost proportional to the number of close pairs.

    ``found``: the candidate pairs ``(r, c, d_rc)`` with ``r < c`` when the caller already
    has them, else they are searched in ``d``.  ``sqrt``: ``d`` holds square roots of the
    Gram values (the refined values are square-rooted too).
    """
    n = d.shape[0]
    if n < 2 or tau <= 0:
        return d
    thr = w * tau
    if found is None:
        # a one-pass screen against a per-row bound (no B×B temporary), then the exact
        # per-pair test on the few candidates
        r, c = np.nonzero(d < (thr + thr.max())[:, None])
        keep = r < c
        r, c = r[keep], c[keep]
        vals = d[r, c]
    else:
        r, c, vals = found
    keep = vals < thr[r] + thr[c]
    r, c = r[keep], c[keep]
    if r.shape[0] == 0:
        return d
    step = max(1, (1 << 20) // max(1, x.shape[1]))
    dup_r, dup_c = [], []
    for s in range(0, r.shape[0], step):
        rr, cc = r[s:s + step], c[s:s + step]
        a, b = x[rr], x[cc]
        v = pairs(xp, a, b)
        z = v == 0
        if z.any():
            same = (a[z] == b[z]).all(1)
            dup_r.append(rr[z][same])
            dup_c.append(cc[z][same])
        if sqrt:
            v = v ** 0.5
        d[rr, cc] = v
        d[cc, rr] = v
    if dup_r:
        dup_r, dup_c = np.concatenate(dup_r), np.concatenate(dup_c)
        if dup_r.shape[0]:
            canonicalise_duplicates(d, dup_r, dup_c)
    return d


def canonicalise_duplicates(d, dup_r, dup_c):
    """In place: row and column ``j`` become copies of those of ``rep_j``, the smallest
    index equal to row ``j`` (pairs ``dup_r < dup_c`` of equal rows), after the diagonal
    is set to 0 — so equal rows are exactly 0 apart and exactly equidistant from others."""
    n = d.shape[0]
    rep = np.arange(n)
    np.minimum.at(rep, np.asarray(dup_c), np.asarray(dup_r))
    moved = np.nonzero(rep != np.arange(n))[0]
    np.fill_diagonal(d, 0)
    d[moved, :] = d[rep[moved], :]
    d[:, moved] = d[:, rep[moved]]
