"""The TensorFlow Addons semi-hard triplet-loss tutorial, on Keras 3 with triplet_ref.

TF-Addons' tutorial ("TensorFlow Addons Losses: TripletSemiHardLoss") trains a small CNN on
MNIST with ``tfa.losses.TripletSemiHardLoss()`` through ``model.fit``, then writes the test
embeddings and labels as ``vecs.tsv`` / ``meta.tsv`` for the Embedding Projector
(https://projector.tensorflow.org). TF-Addons is end-of-life and needs TensorFlow; here the
same workflow runs on Keras 3 (jax or torch backend) with
``triplet_ref.keras.BatchSemiHardLoss``, on scikit-learn's 8×8 digits (bundled, no download)::

    KERAS_BACKEND=jax python examples/keras_semihard/train.py            # -> examples/keras_semihard/output/
    KERAS_BACKEND=torch python examples/keras_semihard/train.py --epochs 2 --out /tmp/proj

The changes from the tutorial: 8×8 inputs (2×2 kernels, 32/16 filters, a 64-d embedding
instead of 28×28, 64/32 filters and 256-d), the digits' 75/25 split instead of MNIST's, and
Keras 3's ``UnitNormalization`` instead of a ``Lambda(tf.math.l2_normalize)``. Loss, margin
(1.0), optimizer (Adam, 1e-3) and batch size (32, shuffled) are the tutorial's; 60 epochs instead
of 5, because the digits have 1,347 training images against MNIST's 60,000 (60 epochs are 2,580
steps, the tutorial's 5 about 9,400).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "output"


def load_digits_split(seed: int = 0):
    """Images ``(N, 8, 8, 1)`` float32 in [0, 1] and int64 labels: a stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    return train_test_split(x, y.astype(np.int64), test_size=0.25, random_state=seed, stratify=y)


def build_model(embedding_dim: int = 64):
    """The tutorial's network, scaled to 8×8 inputs."""
    import keras

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 2, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Dropout(0.3),
        keras.layers.Conv2D(16, 2, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Dropout(0.3),
        keras.layers.Flatten(),
        keras.layers.Dense(embedding_dim, activation=None),  # no activation on the final layer
        keras.layers.UnitNormalization(),                    # L2-normalised embeddings
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--margin", type=float, default=1.0)
    ap.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    import keras

    from examples.digits.metrics import mean_average_precision, recall_at_1
    from triplet_ref.keras import BatchSemiHardLoss

    keras.utils.set_random_seed(args.seed)
    x_train, x_test, y_train, y_test = load_digits_split(args.seed)
    if args.train_limit is not None:
        x_train, y_train = x_train[:args.train_limit], y_train[:args.train_limit]

    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss=BatchSemiHardLoss(margin=args.margin))
    untrained = keras.ops.convert_to_numpy(model.predict(x_test, verbose=0))
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        shuffle=True, verbose=2)
    results = keras.ops.convert_to_numpy(model.predict(x_test, verbose=0))

    # the Embedding Projector's files: one embedding per line, tab-separated; one label per line
    args.out.mkdir(parents=True, exist_ok=True)
    np.savetxt(args.out / "vecs.tsv", results, delimiter="\t")
    with open(args.out / "meta.tsv", "w", encoding="utf-8") as f:
        f.writelines(f"{label}\n" for label in y_test.tolist())

    losses = history.history["loss"]
    print(f"backend {keras.backend.backend()}: loss per epoch " + " ".join(f"{v:.4f}" for v in losses))
    for name, emb in (("pixels", x_test.reshape(len(x_test), -1)), ("untrained", untrained),
                      ("trained", results)):
        print(f"test set, {name:9s}: recall@1 {recall_at_1(emb, y_test):.4f}  "
              f"mAP {mean_average_precision(emb, y_test):.4f}")
    print(f"wrote {args.out / 'vecs.tsv'} and {args.out / 'meta.tsv'} ({len(y_test)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
