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
            return lambda x, squared: _PairwiseSq.apply(x, squared)
        if like.device.type != "cpu":
            return None  # CUDA: the portable torch.sort / torch.searchsorted path
        return {"batch_all_hinge": _native_batch_all, "semihard_choice": _native_semihard}.get(step.name)

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


class _PairwiseSq(torch.autograd.Function):
    """Euclidean (or squared) distances of the rows of ``x`` with few B×B passes.

    Forward: ``G = xc xcᵀ`` for rows shifted by the first row; then, one stripe of rows
    at a time, ``d² = |xc_i|² + |xc_j|² − 2 G_ij`` on and above the diagonal, clamped at
    0, square-rooted — in place in G — and mirrored below it (exactly symmetric although
    torch's GEMM is not), so a 4096² float32 problem allocates one B×B buffer instead of
    about eight.  ``|xc_i|²`` is G's diagonal, so equal rows give exactly 0.
    Backward: ``∂/∂xc = 2[(rowsum H + colsum H) ⊙ xc − H xc − Hᵀ xc]`` with
    ``H = g / (2d)`` (0 where d = 0: the diagonal and duplicate rows).
    """

    @staticmethod
    def forward(x, squared):
        xc = x - x[:1]
        g = torch.mm(xc, xc.t())
        sq = torch.diagonal(g).clone()
        n = g.shape[0]
        for i in range(0, n, _BLOCK):
            i2 = min(n, i + _BLOCK)
            # the stripe of rows i:i2 on and right of the diagonal, in place:
            # d² = |xc_j|² − 2 G_ij + |xc_i|², clamped at 0 (4 passes, cache-sized rows)
            t = g[i:i2, i:]
            torch.add(sq[None, i:], t, alpha=-2, out=t)
            t.add_(sq[i:i2, None]).clamp_min_(0)
            if not squared:
                t.sqrt_()
            # exact symmetry: the part below the diagonal is a copy of the part above
            g[i2:, i:i2] = t[:, i2 - i:].t()
            blk = g[i:i2, i:i2]
            blk.copy_(torch.triu(blk) + torch.triu(blk, 1).t())
        g.fill_diagonal_(0)
        return g

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, squared = inputs
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
        return gx, None
