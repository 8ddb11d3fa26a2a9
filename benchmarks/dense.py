"""The textbook dense formulations, written here only as a point of comparison.

These are the methods most tutorials and ports use: they materialise ``B x B x B`` arrays
(every anchor, positive, negative at once).  They follow the published algorithms, written
afresh against the array API so one body runs on NumPy, PyTorch and CuPy:

* ``dense_batch_all``: the batch-all triplet loss of O. Moindrot's "Triplet loss and online
  triplet mining in TensorFlow" (2018): ``d[a, p] - d[a, n] + m`` over a ``(B, B, B)`` grid,
  multiplied by the 3-D triplet mask, hinge, averaged over the triplets with a loss > 1e-16.
* ``dense_batch_semihard``: the semi-hard method of TensorFlow Addons'
  ``triplet_semihard_loss`` (after FaceNet): for every (anchor, positive) pair it masks the
  ``B`` candidate negatives farther than the positive, takes their masked minimum (a
  ``(B, B, B)`` array), falls back to the anchor's farthest negative, and averages the hinge
  over the positive pairs.

Both use the euclidean distance on raw embeddings and, on batches where every anchor has a
positive and a negative (the P x K batches of the benchmark), equal triplet_ref's
``batch_all`` and ``batch_semihard`` exactly (the runner checks this).
Memory is Theta(B^3); the runner predicts it with :func:`predicted_bytes` and skips sizes
over the budget.
"""

from __future__ import annotations

from array_api_compat import array_namespace


def _euclidean(xp, x):
    # the usual expansion ||a||^2 - 2<a, b> + ||b||^2, clamped, with a safe square root
    sq = xp.sum(x * x, axis=1)
    d2 = sq[:, None] - 2.0 * (x @ x.T) + sq[None, :]
    d2 = xp.maximum(d2, xp.zeros_like(d2))
    zero = d2 == 0.0
    d = xp.sqrt(xp.where(zero, xp.ones_like(d2), d2))
    return xp.where(zero, xp.zeros_like(d), d)


def dense_batch_all(labels, embeddings, margin=1.0):
    xp = array_namespace(embeddings)
    b = embeddings.shape[0]
    d = _euclidean(xp, embeddings)
    # (B, B, B) grid: loss[a, p, n] = d[a, p] - d[a, n] + margin
    loss = d[:, :, None] - d[:, None, :] + margin
    eye = xp.eye(b, dtype=xp.bool, device=getattr(embeddings, "device", None))
    not_eye = xp.logical_not(eye)
    distinct = not_eye[:, :, None] & not_eye[:, None, :] & not_eye[None, :, :]
    same = labels[:, None] == labels[None, :]
    valid = same[:, :, None] & xp.logical_not(same)[:, None, :]
    mask = xp.astype(distinct & valid, embeddings.dtype)
    loss = xp.maximum(loss * mask, xp.zeros_like(loss))
    num_positive = xp.sum(xp.astype(loss > 1e-16, embeddings.dtype))
    return xp.sum(loss) / (num_positive + 1e-16)


def dense_batch_semihard(labels, embeddings, margin=1.0):
    xp = array_namespace(embeddings)
    b = embeddings.shape[0]
    d = _euclidean(xp, embeddings)
    adjacency = labels[:, None] == labels[None, :]
    adjacency_not = xp.logical_not(adjacency)
    # candidates[a, p, n]: n is a negative of a farther from a than p is      (B, B, B) bool
    candidates = adjacency_not[:, None, :] & (d[:, None, :] > d[:, :, None])
    found = xp.any(candidates, axis=2)
    # masked minimum over n of d[a, n] (TF-Addons' masked_minimum), on a (B, B, B) tile of d
    tile = xp.broadcast_to(d[:, None, :], (b, b, b))
    row_max = xp.max(d, axis=1)[:, None, None]
    outside = xp.min((tile - row_max) * xp.astype(candidates, d.dtype), axis=2) + row_max[:, :, 0]
    # masked maximum over the negatives (the fallback)
    row_min = xp.min(d, axis=1, keepdims=True)
    inside = xp.max((d - row_min) * xp.astype(adjacency_not, d.dtype), axis=1, keepdims=True) + row_min
    semihard = xp.where(found, outside, xp.broadcast_to(inside, (b, b)))
    eye = xp.eye(b, dtype=d.dtype, device=getattr(embeddings, "device", None))
    positives = xp.astype(adjacency, d.dtype) - eye
    loss = xp.maximum((d - semihard + margin) * positives, xp.zeros_like(d))
    return xp.sum(loss) / xp.maximum(xp.sum(positives), xp.asarray(1e-16, dtype=d.dtype))


# bytes per B^3 element at the peak, from the arrays each method keeps alive at once
# (measured on NumPy and PyTorch CPU at B = 256 and 512, rounded up)
_BYTES_PER_CUBE = {
    ("batch_all", "forward"): 14.0,
    ("batch_all", "forward_backward"): 22.0,
    ("batch_semihard", "forward"): 14.0,
    ("batch_semihard", "forward_backward"): 22.0,
}


def predicted_bytes(loss: str, mode: str, b: int) -> float:
    return _BYTES_PER_CUBE[(loss, mode)] * float(b) ** 3


FUNCS = {"batch_all": dense_batch_all, "batch_semihard": dense_batch_semihard}
