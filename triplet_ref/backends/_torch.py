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
