"""Backend dispatch: backend=None / a name / a module, label conversion, gradient-carrying
arrays, unknown and missing backends."""
from __future__ import annotations

import importlib
import sys

import array_api_compat
import numpy as np
import pytest

import triplet_ref as tr
from triplet_ref import backends, oracles

FRAMEWORK = {"numpy": ("numpy",), "torch": ("torch",), "jax": ("jax", "jaxlib"),
             "cupy": ("cupy",), "array_api_strict": ("array_api_strict",)}
INSTALLED = [n for n in backends.available_backends() if n != "cupy"]
EXTRAS = {"torch": "torch", "jax": "jax", "cupy": "cupy", "array_api_strict": "strict"}

LABELS = np.array([0, 1, 0, 2, 1, 0, 2, 2])
X = np.random.default_rng(0).standard_normal((8, 5))


def framework_of(a) -> str:
    top = type(a).__module__.split(".")[0]
    for name, mods in FRAMEWORK.items():
        if top in mods:
            return name
    return top


def module_of(name: str):
    return {"numpy": "numpy", "torch": "torch", "jax": "jax.numpy",
            "array_api_strict": "array_api_strict", "cupy": "cupy"}[name]


# ----------------------------------------------------------------------------- backend=None
def test_none_keeps_framework_and_device(xp):
    x = xp.asarray(X)
    y = xp.asarray(LABELS)
    d = tr.pairwise_distances(x)
    loss = tr.batch_hard(y, x)
    for out in (d, loss):
        assert framework_of(out) == xp.name
        assert array_api_compat.device(out) == array_api_compat.device(x)
        assert out.dtype == x.dtype
    np.testing.assert_allclose(float(xp.to_numpy(loss)), oracles.batch_hard(LABELS, X), rtol=1e-12)


def test_backend_is_native(xp):
    """The registry's own type check agrees with the array's framework."""
    x = xp.asarray(X)
    assert xp.backend.is_native(x)
    assert not xp.backend.is_native([1.0]) and (xp.name == "numpy" or not xp.backend.is_native(X))


def test_backend_of_never_imports():
    assert backends.backend_of([1.0, 2.0]) is None
    assert backends.backend_of(X).name == "numpy"


# ----------------------------------------------------------------------------- backend=name / module
@pytest.mark.parametrize("name", INSTALLED)
@pytest.mark.parametrize("how", ["name", "module"])
@pytest.mark.parametrize("source", ["numpy", "list"])
def test_backend_argument_converts(name, how, source):
    backend = name if how == "name" else importlib.import_module(module_of(name))
    x = X if source == "numpy" else X.tolist()
    y = LABELS if source == "numpy" else LABELS.tolist()
    d = tr.pairwise_distances(x, backend=backend)
    loss = tr.batch_all(y, x, backend=backend)
    for out in (d, loss):
        assert framework_of(out) == name, (backend, type(out))
    be = backends.get_backend(name)
    np.testing.assert_allclose(be.to_numpy(d), oracles.pairwise_distances(X), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(be.to_numpy(loss)), oracles.batch_all(LABELS, X), rtol=1e-12)


@pytest.mark.parametrize("alias,name", [("np", "numpy"), ("pytorch", "torch"), ("strict", "array_api_strict"),
                                        ("JAX", "jax"), ("array-api-strict", "array_api_strict")])
def test_backend_aliases(alias, name):
    if name not in INSTALLED:
        pytest.skip(f"{name} not installed")
    assert framework_of(tr.pairwise_distances(X, backend=alias)) == name


# ----------------------------------------------------------------------------- labels of any kind
INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
LABEL_SOURCES = ["list"] + INSTALLED


def _labels_in(source: str, dtype: str):
    y = LABELS.astype(dtype)
    if source == "list":
        return y.tolist()
    be = backends.get_backend(source)
    return be.from_numpy(y)


@pytest.mark.parametrize("source", LABEL_SOURCES)
def test_labels_of_any_kind_move_next_to_the_embeddings(xp, source):
    x = xp.asarray(X)
    ref = oracles.batch_hard(LABELS, X)
    tried = 0
    for dtype in INT_DTYPES:
        try:
            y = _labels_in(source, dtype)
        except (TypeError, ValueError):  # that framework has no such dtype
            continue
        tried += 1
        loss = tr.batch_hard(y, x)
        assert framework_of(loss) == xp.name
        assert array_api_compat.device(loss) == array_api_compat.device(x)
        np.testing.assert_allclose(float(xp.to_numpy(loss)), ref, rtol=1e-12, err_msg=f"{source} {dtype}")
    assert tried >= 4


# ----------------------------------------------------------------------------- gradients kept
def test_torch_tensor_with_grad_is_not_copied_to_another_backend():
    if "torch" not in INSTALLED or len(INSTALLED) < 2:
        pytest.skip("needs torch and another backend")
    import torch

    x = torch.tensor(X, requires_grad=True)
    for other in [n for n in INSTALLED if n != "torch"]:
        with pytest.raises(TypeError, match="embeddings"):
            tr.pairwise_distances(x, backend=other)
        with pytest.raises(TypeError, match="embeddings"):
            tr.batch_hard(LABELS, x, backend=other)
        with pytest.raises(TypeError, match="anchor"):
            tr.triplet_loss(x, x, x, backend=other)
    # kept in torch, the gradient flows
    loss = tr.batch_hard(LABELS, x, backend="torch")
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_torch_tensor_without_grad_is_converted():
    if not {"torch", "jax"} <= set(INSTALLED):
        pytest.skip("needs torch and jax")
    import torch

    d = tr.pairwise_distances(torch.tensor(X), backend="jax")
    assert framework_of(d) == "jax"
    np.testing.assert_allclose(np.asarray(d), oracles.pairwise_distances(X), rtol=1e-12, atol=1e-12)


def test_jax_tracer_is_not_copied_to_torch():
    if not {"torch", "jax"} <= set(INSTALLED):
        pytest.skip("needs torch and jax")
    import jax
    import jax.numpy as jnp

    def f(x):
        return tr.batch_hard(jnp.asarray(LABELS), x, backend="torch")

    with pytest.raises(TypeError, match="embeddings"):
        jax.grad(f)(jnp.asarray(X))


# ----------------------------------------------------------------------------- unknown / missing
@pytest.mark.parametrize("bad", ["tensorflow", "", "nump", "cuda"])
def test_unknown_backend_name(bad):
    with pytest.raises(ValueError, match="backend"):
        tr.pairwise_distances(X, backend=bad)
    with pytest.raises(ValueError, match="backend"):
        tr.batch_all(LABELS, X, backend=bad)
    with pytest.raises(ValueError, match="backend"):
        tr.anchor_positive_mask(LABELS, backend=bad)


def test_unknown_backend_module():
    import math

    with pytest.raises(ValueError, match="backend"):
        tr.pairwise_distances(X, backend=math)


@pytest.mark.parametrize("bad", [3, 1.5, object(), ["numpy"]])
def test_backend_of_the_wrong_kind(bad):
    with pytest.raises(TypeError, match="backend"):
        tr.pairwise_distances(X, backend=bad)


@pytest.mark.parametrize("name", ["torch", "jax", "cupy", "array_api_strict"])
def test_missing_backend_names_the_extra(monkeypatch, name):
    """A framework that is not installed gives ImportError naming ``triplet_ref[extra]``
    (simulated by hiding the module; cupy is really missing on a CPU machine)."""
    mod = {"array_api_strict": "array_api_strict"}.get(name, name)
    monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError
    monkeypatch.delitem(backends._CACHE, name, raising=False)
    extra = EXTRAS[name]
    with pytest.raises(ImportError, match=rf"triplet_ref\[{extra}\]"):
        tr.pairwise_distances(X, backend=name)
    with pytest.raises(ImportError, match=rf"triplet_ref\[{extra}\]"):
        tr.batch_hard(LABELS, X, backend=name)
    with pytest.raises(ImportError, match=rf"triplet_ref\[{extra}\]"):
        tr.triplet_mask(LABELS, backend=name)


def test_cupy_really_missing_names_the_extra():
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("cupy is installed")
    assert "cupy" not in backends.available_backends()
    with pytest.raises(ImportError, match=r"triplet_ref\[cupy\]"):
        tr.pairwise_distances(X, backend="cupy")
