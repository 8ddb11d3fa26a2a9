"""Run by tests/test_keras.py in a fresh interpreter with KERAS_BACKEND set (Keras picks its
backend once, at import). Prints one JSON object of results; the test compares them with the
oracles. Usage: python tests/keras_check.py WORKDIR [--example]"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import triplet_ref.keras as tk  # noqa: E402

work = Path(sys.argv[1])
out: dict = {"backend": keras.backend.backend()}


def num(v):
    return float(keras.ops.convert_to_numpy(v))


def error_of(f):
    try:
        f()
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


rng = np.random.default_rng(0)
y = np.array([3, 3, 7, 7, 7, 1, 1, 9, 3, 1, 7, 5], dtype=np.int64)  # 5 is a singleton
x = rng.standard_normal((12, 5)).astype(np.float32)

# every online loss, labels as int64 (B,), float32 (B, 1) and int32 (B, 1)
online = {"BatchAllLoss": dict(margin=0.5, metric="sqeuclidean"),
          "BatchHardLoss": dict(margin=0.5, soft=True),
          "BatchSemiHardLoss": dict(margin=0.5),
          "BatchContrastiveLoss": dict(margin=1.5)}
out["online"] = {}
out["inputs"] = {"y": y.tolist(), "x": x.tolist()}
for name, kw in online.items():
    loss = getattr(tk, name)(**kw)
    out["online"][name] = [num(loss(y, x)), num(loss(y.astype(np.float32)[:, None], x)),
                           num(loss(y.astype(np.int32)[:, None], x))]
# chunk_size= passes through (blocks of 5, 5 and 2 anchors; torch only: eager JAX compiles
# every block's operations, 15 s more); in the config when given
if out["backend"] == "torch":
    out["online_chunked"] = {name: num(getattr(tk, name)(**kw, chunk_size=5)(y, x)) for name, kw in online.items()}
chunked = tk.BatchHardLoss(margin=0.25, chunk_size=4)
out["chunked_config"] = [chunked.get_config(),
                         keras.losses.deserialize(keras.losses.serialize(chunked)).get_config()]
t = rng.standard_normal((6, 3, 4)).astype(np.float32)
out["inputs"]["t"] = t.tolist()
out["triplet"] = num(tk.TripletLoss(margin=0.3, metric="cosine")(np.zeros(6), t))
same = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=np.float32)[:, None]
out["contrastive"] = num(tk.ContrastiveLoss(margin=2.0)(same, t[:, :2, :]))

out["errors"] = {
    "fractional": error_of(lambda: tk.BatchHardLoss()(y + 0.5, x)),
    "shape": error_of(lambda: tk.BatchHardLoss()(np.stack([y, y], 1), x)),
    "same": error_of(lambda: tk.ContrastiveLoss()(same * 2, t[:, :2, :])),
    "weights": error_of(lambda: tk.BatchHardLoss()(y, x, sample_weight=np.ones(12))),
    "metric": error_of(lambda: tk.BatchHardLoss(metric="l2")),
    "chunk_size": error_of(lambda: tk.BatchAllLoss(chunk_size=-2)),
    "triplet_shape": error_of(lambda: tk.TripletLoss()(np.zeros(6), t[:, :2, :])),
}
real_backend = keras.backend.backend
keras.backend.backend = lambda: "tensorflow"
out["errors"]["tensorflow"] = error_of(lambda: tk.BatchHardLoss())
keras.backend.backend = real_backend
if out["backend"] == "jax":  # traced labels cannot be checked: a non-integer one makes the loss NaN
    import jax

    f = jax.jit(lambda yy, xx: tk.BatchSemiHardLoss()(yy, xx))
    out["traced"] = [num(f(y.astype(np.float32), x)), num(f(y + 0.5, x))]

# configs round-trip
out["configs"] = {}
for name in tk.__all__:
    obj = getattr(tk, name)(margin=0.25)
    cfg = obj.get_config()
    back = keras.losses.deserialize(keras.losses.serialize(obj))
    out["configs"][name] = [cfg, type(back).__name__, back.get_config() == cfg]

# one small model.fit with float (B, 1) labels, then save and load the compiled model
keras.utils.set_random_seed(1)
X = rng.standard_normal((48, 6)).astype(np.float32)
Y = (np.arange(48) % 4).astype(np.float32)[:, None]
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
model.compile(optimizer=keras.optimizers.SGD(0.1), loss=tk.BatchSemiHardLoss(margin=0.5))
hist = model.fit(X, Y, batch_size=16, epochs=3, verbose=0, shuffle=False)
out["fit_loss"] = hist.history["loss"]
path = work / "model.keras"
model.save(path)
loaded = keras.models.load_model(path)
out["loaded_loss"] = [type(loaded.loss).__name__, loaded.loss.get_config()]
out["inputs"]["X"] = X.tolist()
out["pred"] = keras.ops.convert_to_numpy(model.predict(X, verbose=0)).tolist()
out["eval"] = [model.evaluate(X, Y, batch_size=48, verbose=0), loaded.evaluate(X, Y, batch_size=48, verbose=0)]
# the Keras blocks of docs/migrating.md (their output is checked against the guide by the test)
sys.path.insert(0, str(ROOT / "tests"))
from test_migrating import run_blocks, sections  # noqa: E402

out["doc_outputs"] = run_blocks([code for blocks in sections().values() for keras_block, code, _ in blocks
                                 if keras_block])
if "--example" in sys.argv:
    from examples.keras_semihard.train import main

    out["example_rc"] = main(["--epochs", "1", "--train-limit", "64", "--out", str(work / "proj")])
print("RESULT " + json.dumps(out))
