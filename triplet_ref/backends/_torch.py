"""PyTorch backend (CPU and CUDA); imported only when torch is in use."""
from __future__ import annotations

import numpy as np
import torch

from ._base import Backend


class _SafeSqrt(torch.autograd.Function):
    """sqrt with gradient 0 where the input is 0 (one pass forward, one backward)."""

    @staticmethod
    def forward(x):
        return torch.sqrt(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return torch.where(out > 0, grad / (2 * out), torch.zeros((), dtype=grad.dtype, device=grad.device))


# --- the NumPy kernels as custom ops for CPU tensors (opaque to torch.compile) ---------
from torch import Tensor  # noqa: E402

from ..mining import SQDIST  # noqa: E402
from ..mining.batch_all import batch_all_backward, batch_all_forward  # noqa: E402
from ..mining.semihard import semihard_choice  # noqa: E402


@torch.library.custom_op("triplet_ref::batch_all_fwd", mutates_args=())
def _batch_all_fwd(d: Tensor, pos: Tensor, neg: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    out, count = batch_all_forward(d.numpy(), pos.numpy(), neg.numpy(), margin)
    return torch.from_numpy(out), torch.from_numpy(count)


@_batch_all_fwd.register_fake
def _(d, pos, neg, margin):
    return torch.empty_like(d), torch.empty_like(d, dtype=torch.int32)


@torch.library.custom_op("triplet_ref::batch_all_bwd", mutates_args=())
def _batch_all_bwd(d: Tensor, pos: Tensor, neg: Tensor, margin: float, grad: Tensor,
                   count: Tensor) -> Tensor:
    return torch.from_numpy(batch_all_backward(
        d.numpy(), pos.numpy(), neg.numpy(), margin, grad.numpy(), count.numpy()))


@_batch_all_bwd.register_fake
def _(d, pos, neg, margin, grad, count):
    return torch.empty_like(d)


def _batch_all_setup(ctx, inputs, output):
    d, pos, neg, margin = inputs
    ctx.save_for_backward(d, pos, neg, output[1])
    ctx.margin = margin


def _batch_all_backward(ctx, grad, _grad_count):
    d, pos, neg, count = ctx.saved_tensors
    return _batch_all_bwd(d, pos, neg, ctx.margin, grad, count), None, None, None


_batch_all_fwd.register_autograd(_batch_all_backward, setup_context=_batch_all_setup)


@torch.library.custom_op("triplet_ref::semihard_choice", mutates_args=())
def _semihard_choice(d: Tensor, neg: Tensor, term: Tensor) -> tuple[Tensor, Tensor]:
    chosen, semi = semihard_choice(d.numpy(), neg.numpy(), term.numpy())
    return torch.from_numpy(chosen), torch.from_numpy(semi)


@_semihard_choice.register_fake
def _(d, neg, term):
    return torch.empty_like(d, dtype=torch.int64), torch.empty_like(d, dtype=torch.bool)


def _native_batch_all(d, pos, neg, margin):
    m = margin.detach() if isinstance(margin, torch.Tensor) else margin
    out, count = _batch_all_fwd(d, pos, neg, float(m))
    if isinstance(margin, torch.Tensor) and margin.requires_grad:
        # a learnable margin: each positive triplet's hinge has slope 1 in m, so
        # dL[a,p]/dm = count[a,p]; adding (m - m.detach())·count changes no value
        out = out + (margin - margin.detach()).to(out.dtype) * count.to(out.dtype)
    return out, count


def _native_semihard(d, neg, term):
    return _semihard_choice(d.detach(), neg, term)


class TorchBackend(Backend):
    name = "torch"
    supports_grad = True
    supports_jit = True

    def namespace(self):
        import array_api_compat.torch as xp

        return xp

    def is_native(self, x):
        return isinstance(x, torch.Tensor)

    def device_of(self, x):
        return x.device

    def carries_grad(self, x):
        return isinstance(x, torch.Tensor) and x.requires_grad

    def from_numpy(self, a, dtype=None, device=None):
        a = np.asarray(a)
        if not a.flags.writeable:  # e.g. a view of a JAX array: torch wants writable memory
            a = a.copy()
        if dtype in ("bfloat16",):
            return torch.as_tensor(a.astype(np.float32), device=device).to(torch.bfloat16)
        if dtype is not None:
            a = a.astype(dtype)
        return torch.as_tensor(a, device=device)

    def to_numpy(self, x):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()

    def safe_sqrt(self, xp, x):
        return _SafeSqrt.apply(x)

    def native_kernel(self, step, like):
        if step is SQDIST:
            from ..distances import close_pair_threshold

            return lambda x, squared: _PairwiseSq.apply(
                x, squared, close_pair_threshold(torch, x.dtype))
        if like.device.type != "cpu":
            return None  # CUDA: the portable torch.sort / torch.searchsorted path
        return {"batch_all_hinge": _native_batch_all, "semihard_choice": _native_semihard}.get(step.name)

    def refine_sqdist(self, xp, x, d, w, tau, pairs):
        from .. import distances

        kind = {distances.sqeuclidean_pairs: "sqeuclidean", distances.cosine_pairs: "cosine"}[pairs]
        return _refine_close_pairs(x, d, w, float(tau), kind)

    def finish_sqdist(self, xp, d2, sqrt):
        d2 = torch.clamp_min(d2, 0)
        d2 = d2.fill_diagonal_(0)
        return _SafeSqrt.apply(d2) if sqrt else d2

    def sort_rows(self, xp, x):
        return torch.sort(x, dim=-1).values

    def argsort_rows(self, xp, x):
        return torch.sort(x, dim=-1, stable=True).indices

    def searchsorted_rows(self, xp, sorted_rows, values, side="left", where=None):
        return torch.searchsorted(sorted_rows.contiguous(), values.contiguous(), side=side)

    def take_rows(self, xp, x, idx):
        return torch.gather(x, -1, idx.to(torch.int64))

    def softplus(self, xp, x):
        return torch.nn.functional.softplus(x)

    def value_and_grad(self, fn, x):
        x = x.detach().clone().requires_grad_(True)
        y = fn(x)
        (g,) = torch.autograd.grad(y, x)
        return y.detach().cpu().double().numpy(), self.to_numpy(g)

    def jit(self, fn):
        return torch.compile(fn, fullgraph=True, dynamic=False)

    def devices(self):
        devs = ["cpu"]
        if torch.cuda.is_available():
            devs.append("cuda")
        return devs

    def synchronize(self, x=None):
        if torch.cuda.is_available():
            torch.cuda.synchronize()


BACKEND = TorchBackend()


# --- pairwise distances: one GEMM, in-place blocked epilogue, GEMM backward ----------------
_BLOCK = 256


def _pairs_fn(kind: str):
    from .. import distances

    return {"sqeuclidean": distances.sqeuclidean_pairs, "cosine": distances.cosine_pairs}[kind]


def _refine_found(x, d, thr, r, c, vals, pairs, sqrt):
    """Torch twin of ``_numpy.refine_sparse_inplace`` (in place on ``d``): the candidates
    ``r < c`` with Gram values ``vals`` that pass ``vals < thr_r + thr_c`` are recomputed
    by ``pairs``; then rows equal to an earlier row copy its distances."""
    import array_api_compat.torch as xp

    keep = vals < thr[r] + thr[c]
    r, c = r[keep], c[keep]
    if r.numel() == 0:
        return d
    step = max(1, (1 << 20) // max(1, x.shape[1]))
    dup_r, dup_c = [], []
    for s in range(0, r.numel(), step):
        rr, cc = r[s:s + step], c[s:s + step]
        a, b = x[rr], x[cc]
        v = pairs(xp, a, b)
        same = (v == 0) & (a == b).all(1)
        dup_r.append(rr[same])
        dup_c.append(cc[same])
        if sqrt:
            v = v.sqrt()
        d[rr, cc] = v
        d[cc, rr] = v
    dup_r, dup_c = torch.cat(dup_r), torch.cat(dup_c)
    if dup_r.numel():
        n = d.shape[0]
        ar = torch.arange(n, device=d.device)
        rep = ar.scatter_reduce(0, dup_c, dup_r, reduce="amin")
        moved = torch.nonzero(rep != ar).flatten()
        d.fill_diagonal_(0)
        d[moved, :] = d[rep[moved], :]
        d[:, moved] = d[:, rep[moved]]
    return d


def _candidates(d, thr):
    """Pairs ``r < c`` of ``d`` below the per-row screen ``thr_r + max(thr)``."""
    m = d < (thr + thr.max())[:, None]
    r, c = torch.nonzero(m, as_tuple=True)
    keep = r < c
    r, c = r[keep], c[keep]
    return r, c, d[r, c]


@torch.library.custom_op("triplet_ref::pairwise_sqdist", mutates_args=())
def _pairwise_sqdist(x: Tensor, squared: bool, tau: float) -> Tensor:
    """The forward of ``_PairwiseSq``: opaque to torch.compile (its in-place stripes and its
    data-dependent refinement of close pairs run eagerly)."""
    xc = x - x[:1]
    g = torch.mm(xc, xc.t())
    sq = torch.diagonal(g).clone()
    n = g.shape[0]
    thr = sq * tau
    screen = thr + thr.max() if n else thr
    found = []
    for i in range(0, n, _BLOCK):
        i2 = min(n, i + _BLOCK)
        # the stripe of rows i:i2 on and right of the diagonal, in place:
        # d² = |xc_j|² − 2 G_ij + |xc_i|², clamped at 0 (4 passes, cache-sized rows)
        t = g[i:i2, i:]
        torch.add(sq[None, i:], t, alpha=-2, out=t)
        t.add_(sq[i:i2, None])
        # close pairs (screened per row here, tested exactly in _refine_found)
        m = t < screen[i:i2, None]
        if bool(m.any()):
            r, c = torch.nonzero(m, as_tuple=True)
            keep = c > r
            r, c = r[keep], c[keep]
            found.append((r + i, c + i, t[r, c]))
        t.clamp_min_(0)
        if not squared:
            t.sqrt_()
        # exact symmetry: the part below the diagonal is a copy of the part above
        g[i2:, i:i2] = t[:, i2 - i:].t()
        blk = g[i:i2, i:i2]
        blk.copy_(torch.triu(blk) + torch.triu(blk, 1).t())
    g.fill_diagonal_(0)
    if found:
        r, c, vals = (torch.cat(z) for z in zip(*found))
        _refine_found(x, g, thr, r, c, vals, _pairs_fn("sqeuclidean"), sqrt=not squared)
    return g


@_pairwise_sqdist.register_fake
def _(x, squared, tau):
    return x.new_empty((x.shape[0], x.shape[0]))


@torch.library.custom_op("triplet_ref::refine_close_pairs", mutates_args=())
def _refine_close_pairs(x: Tensor, d: Tensor, w: Tensor, tau: float, kind: str) -> Tensor:
    """``Backend.refine_sqdist`` for torch (the cosine path): values only."""
    d = d.clone()
    if d.shape[0] < 2:
        return d
    thr = w * tau
    r, c, vals = _candidates(d, thr)
    return _refine_found(x, d, thr, r, c, vals, _pairs_fn(kind), sqrt=False)


@_refine_close_pairs.register_fake
def _(x, d, w, tau, kind):
    return torch.empty_like(d)


def _refine_backward(ctx, grad):
    # the refined values are the same function of x as the Gram formula's (they differ only
    # in rounding): the gradient passes through to d unchanged
    return None, grad, None, None, None


_refine_close_pairs.register_autograd(_refine_backward)


class _PairwiseSq(torch.autograd.Function):
    """Euclidean (or squared) distances of the rows of ``x`` with few B×B passes.

    Forward (the custom op ``triplet_ref::pairwise_sqdist``): ``G = xc xcᵀ`` for rows
    shifted by the first row; then, one stripe of rows at a time, ``d² = |xc_i|² + |xc_j|²
    − 2 G_ij`` on and above the diagonal, clamped at 0, square-rooted — in place in G — and
    mirrored below it (exactly symmetric although torch's GEMM is not), so a 4096² float32
    problem allocates one B×B buffer instead of about eight.  The pairs closer than the
    Gram formula resolves (``distances.close_pair_threshold``) are recomputed from
    differences, and bitwise-equal rows get equal distances (0 between them).
    Backward: ``∂/∂xc = 2[(rowsum H + colsum H) ⊙ xc − H xc − Hᵀ xc]`` with
    ``H = g / (2d)`` (0 where d = 0: the diagonal and duplicate rows).
    """

    @staticmethod
    def forward(x, squared, tau):
        return _pairwise_sqdist(x, squared, tau)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, squared, _ = inputs
        ctx.squared = squared
        ctx.save_for_backward(x, output)

    @staticmethod
    def backward(ctx, grad):
        x, d = ctx.saved_tensors
        zero = torch.zeros((), dtype=d.dtype, device=d.device)
        if ctx.squared:
            h = torch.where(d > 0, grad, zero)
        else:
            h = torch.where(d > 0, grad / (2 * torch.where(d > 0, d, 1)), zero)
        xc = x - x[:1]
        coef = h.sum(dim=1) + h.sum(dim=0)
        gxc = 2 * (coef[:, None] * xc - torch.mm(h, xc) - torch.mm(h.t(), xc))
        gx = gxc.clone()
        gx[0] -= gxc.sum(dim=0)
        return gx, None, None
