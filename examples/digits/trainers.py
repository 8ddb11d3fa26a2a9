"""The two trainers: PyTorch (torch.optim.Adam) and JAX (optax.adam, plain jax, no Flax).

Both build the same tiny CNN from the same NumPy initial weights, see the same P x K
batches in the same order, follow the same learning-rate schedule and call the same
``objective`` (and so the same triplet_ref loss):

    8x8 image [-> standardise, if set] -> conv 3x3 (32) -> ReLU -> conv 3x3 (64) -> ReLU
              -> 2x2 max-pool -> flatten: the 1,024-d embedding  [-> linear (embedding_dim), if set]
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np

import array_api_compat

from triplet_ref import PKSampler

from .data import DigitsSplit
from .objective import CURVES, Config, l2_normalize, objective


@dataclass
class TrainResult:
    embed: Callable[[np.ndarray], np.ndarray]  # pixels (N, 64) -> embeddings (N, D), as used for retrieval
    curves: dict  # name -> float64 array, one value per step
    seconds: float  # wall time of the training loop (for JAX: including jit compilation)


def init_params(cfg: Config, seed: int) -> dict:
    """He-normal weights and zero biases in float32, drawn with NumPy so both frameworks start
    from the very same network. Convolutions are OIHW, the linear layer (if any) is (in, out)."""
    rng = np.random.default_rng(seed)
    c1, c2 = cfg.channels
    n_flat = c2 * 4 * 4

    def he(shape, fan_in):
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)

    params = {
        "conv1_w": he((c1, 1, 3, 3), 9),
        "conv1_b": np.zeros(c1, np.float32),
        "conv2_w": he((c2, c1, 3, 3), 9 * c1),
        "conv2_b": np.zeros(c2, np.float32),
    }
    if cfg.embedding_dim is not None:
        params["out_w"] = he((n_flat, cfg.embedding_dim), n_flat)
        params["out_b"] = np.zeros(cfg.embedding_dim, np.float32)
    return params


def standardize_images(x, eps: float = 1e-6):
    """Each row (an image's 64 pixels) shifted to mean 0 and scaled to std 1 (population std):
    the first operation of the network, written once for NumPy, torch and jax arrays."""
    xp = array_api_compat.array_namespace(x)
    centred = x - xp.mean(x, axis=1, keepdims=True)
    return centred / xp.sqrt(xp.mean(centred * centred, axis=1, keepdims=True) + eps)


def forward_numpy(params: dict, x: np.ndarray, cfg: Config) -> np.ndarray:
    """The network in plain NumPy (float64): a third, independent statement of the architecture,
    used for the untrained-network baseline and to check that both frameworks build the same net."""
    x = np.asarray(x, dtype=np.float64)
    if cfg.standardize:
        x = standardize_images(x)
    x = x.reshape(-1, 1, 8, 8)

    def conv_same(x, w, b):  # 3x3 cross-correlation with zero padding 1, as torch and lax compute
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = sum(np.einsum("nchw,oc->nohw", xp[:, :, di:di + 8, dj:dj + 8], w[:, :, di, dj])
                  for di in range(3) for dj in range(3))
        return out + b[None, :, None, None]

    x = np.maximum(conv_same(x, params["conv1_w"], params["conv1_b"]), 0.0)
    x = np.maximum(conv_same(x, params["conv2_w"], params["conv2_b"]), 0.0)
    n, c = x.shape[:2]
    x = x.reshape(n, c, 4, 2, 4, 2).max(axis=(3, 5)).reshape(n, -1)  # 2x2 max-pool, flatten
    return x @ params["out_w"] + params["out_b"] if "out_w" in params else x


def untrained_embed(cfg: Config) -> Callable[[np.ndarray], np.ndarray]:
    """The embedding of the network at its initial weights (the starting point of every run)."""
    params = init_params(cfg, cfg.seed)
    return lambda x: _finish(forward_numpy(params, x, cfg), cfg)


def _finish(raw, cfg: Config):
    return l2_normalize(raw) if cfg.normalize else raw


def batches(split: DigitsSplit, cfg: Config):
    """The P x K training batches as NumPy (pixels, labels): identical for both backends."""
    sampler = PKSampler(split.y_train, cfg.p, cfg.k, seed=cfg.seed)
    for _ in range(cfg.steps):
        idx = sampler.sample()
        yield split.x_train[idx], split.y_train[idx]


def _progress(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


@contextmanager
def _torch_threads(n: int):
    """The network is tiny: one intra-op thread is fastest, and with two threads a busy 2-core
    machine made torch about 15x slower (thread contention). Restores the previous setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _torch_standardize():
    """``standardize_images`` as a torch module (the first layer of the torch network)."""
    from torch import nn

    class Standardize(nn.Module):
        def forward(self, x):
            return standardize_images(x)

    return Standardize()


def train_torch(split: DigitsSplit, cfg: Config, progress: bool = True) -> TrainResult:
    with _torch_threads(1):
        return _train_torch(split, cfg, progress)


def _train_torch(split: DigitsSplit, cfg: Config, progress: bool) -> TrainResult:
    from collections import OrderedDict

    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    c1, c2 = cfg.channels
    layers = [
        ("standardize", _torch_standardize() if cfg.standardize else nn.Identity()),
        ("unflatten", nn.Unflatten(1, (1, 8, 8))),
        ("conv1", nn.Conv2d(1, c1, 3, padding=1)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(c1, c2, 3, padding=1)),
        ("relu2", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
    ]
    if cfg.embedding_dim is not None:
        layers.append(("out", nn.Linear(c2 * 16, cfg.embedding_dim)))
    model = nn.Sequential(OrderedDict(layers))
    p = init_params(cfg, cfg.seed)
    with torch.no_grad():
        for name, layer in model.named_children():
            if f"{name}_w" in p:
                w = p[f"{name}_w"].T if name == "out" else p[f"{name}_w"]
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                layer.bias.copy_(torch.from_numpy(p[f"{name}_b"]))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # step t runs with cfg.learning_rate(t), the very schedule the jax trainer gets from optax
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: cfg.learning_rate(t) / cfg.lr)

    log = {name: np.empty(cfg.steps) for name in CURVES}
    start = time.perf_counter()
    bar = _progress(cfg.steps, f"torch {cfg.loss}", progress)
    for step, (x, y) in enumerate(batches(split, cfg)):
        opt.zero_grad(set_to_none=True)
        value, curves = objective(
            torch.from_numpy(y), model(torch.from_numpy(x)), loss=cfg.loss, margin=cfg.margin, normalize=cfg.normalize
        )
        value.backward()
        opt.step()
        sched.step()
        for name in CURVES:
            log[name][step] = float(curves[name].detach())
        bar.update(1)
        bar.set_postfix(loss=f"{log['loss'][step]:.4f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    model.eval()

    def embed(x: np.ndarray) -> np.ndarray:
        with torch.no_grad(), _torch_threads(1):
            return _finish(model(torch.from_numpy(np.asarray(x, dtype=np.float32))), cfg).numpy()

    return TrainResult(embed, log, seconds)


def train_jax(split: DigitsSplit, cfg: Config, progress: bool = True) -> TrainResult:
    import jax
    import jax.numpy as jnp
    import optax

    params = {k: jnp.asarray(v) for k, v in init_params(cfg, cfg.seed).items()}

    def conv(x, w, b):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + b[None, :, None, None]

    def forward(params, x):
        if cfg.standardize:
            x = standardize_images(x)
        x = x.reshape(x.shape[0], 1, 8, 8)
        x = jax.nn.relu(conv(x, params["conv1_w"], params["conv1_b"]))
        x = jax.nn.relu(conv(x, params["conv2_w"], params["conv2_b"]))
        n, c = x.shape[:2]
        x = jnp.max(x.reshape(n, c, 4, 2, 4, 2), axis=(3, 5)).reshape(n, -1)  # 2x2 max-pool, flatten
        return x @ params["out_w"] + params["out_b"] if "out_w" in params else x

    def loss_fn(params, x, y):
        return objective(y, forward(params, x), loss=cfg.loss, margin=cfg.margin, normalize=cfg.normalize)

    lr = optax.cosine_decay_schedule(cfg.lr, cfg.steps) if cfg.schedule == "cosine" else cfg.lr
    opt = optax.adam(lr)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(params, opt_state, x, y):
        (_, curves), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, curves

    log = {name: np.empty(cfg.steps) for name in CURVES}
    start = time.perf_counter()
    bar = _progress(cfg.steps, f"jax {cfg.loss}", progress)
    for step, (x, y) in enumerate(batches(split, cfg)):
        params, opt_state, curves = train_step(params, opt_state, jnp.asarray(x), jnp.asarray(y))
        curves = jax.device_get(curves)
        for name in CURVES:
            log[name][step] = float(curves[name])
        bar.update(1)
        bar.set_postfix(loss=f"{log['loss'][step]:.4f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start

    embed_jit = jax.jit(lambda p, x: _finish(forward(p, x), cfg))

    def embed(x: np.ndarray) -> np.ndarray:
        return np.asarray(embed_jit(params, jnp.asarray(np.asarray(x, dtype=np.float32))))

    return TrainResult(embed, log, seconds)


TRAINERS = {"torch": train_torch, "jax": train_jax}


def train(backend: str, split: DigitsSplit, cfg: Config, progress: bool = True) -> TrainResult:
    if backend not in TRAINERS:
        raise ValueError(f"backend must be one of {tuple(TRAINERS)}, got {backend!r}")
    return TRAINERS[backend](split, cfg, progress=progress)
