"""The digits example (examples/digits): metrics, sampler, and short real trainings on both backends."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("sklearn")
from examples.digits.data import load_split  # noqa: E402
from examples.digits.metrics import mean_average_precision, recall_at_1  # noqa: E402


# --- retrieval metrics against hand-computed values ------------------------------------------

def test_metrics_hand_example():
    # points on a line: 0(a) 1(b) 10(c) 11(d) 12(e), labels a,c = 0 and b,d,e = 1
    x = np.array([[0.0], [1.0], [10.0], [11.0], [12.0]])
    y = np.array([0, 1, 0, 1, 1])
    # nearest other: a->b miss, b->a miss, c->d miss, d->c (tie with e, smaller index) miss, e->d hit
    assert recall_at_1(x, y) == pytest.approx(1 / 5)
    # AP: a 1/2; b (1/3 + 2/4)/2 = 5/12; c 1/4; d (1/2 + 2/3)/2 = 7/12; e (1 + 2/3)/2 = 5/6
    assert mean_average_precision(x, y) == pytest.approx((1 / 2 + 5 / 12 + 1 / 4 + 7 / 12 + 5 / 6) / 5)


def test_metrics_perfect_and_worst():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.1]])
    assert recall_at_1(x, np.array([0, 0, 1, 1])) == 1.0
    assert mean_average_precision(x, np.array([0, 0, 1, 1])) == 1.0
    # on the line 0, 1, 10, 11 with labels 0, 1, 1, 0 no nearest neighbour matches;
    # AP: q0 1/3 (match at rank 3), q1 1/2, q10 1/2, q11 1/3
    line = np.array([[0.0], [1.0], [10.0], [11.0]])
    assert recall_at_1(line, np.array([0, 1, 1, 0])) == 0.0
    assert mean_average_precision(line, np.array([0, 1, 1, 0])) == pytest.approx(5 / 12)


def test_metrics_bad_input():
    with pytest.raises(ValueError, match="labels"):
        recall_at_1(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="embeddings"):
        mean_average_precision(np.zeros(3), np.zeros(3))


# --- data and sampler --------------------------------------------------------------------------

def test_split_holds_out_unseen_digits():
    s = load_split(seed=0)
    assert set(np.unique(s.y_train)) == set(range(7)) == set(np.unique(s.y_seen_test))
    assert set(np.unique(s.y_unseen)) == {7, 8, 9}
    assert len(s.y_train) + len(s.y_seen_test) + len(s.y_unseen) == 1797
    # no training image reappears among the held-out seen images (the dataset has no duplicates)
    train_rows = {r.tobytes() for r in s.x_train}
    assert not any(r.tobytes() in train_rows for r in s.x_seen_test)


def test_batches_come_from_the_package_sampler():
    """The example draws its P x K batches with triplet_ref.PKSampler (tested in test_sampler.py)."""
    from examples.digits.objective import Config
    from examples.digits.trainers import batches
    from triplet_ref import PKSampler

    split = load_split(seed=0)
    cfg = Config(steps=3, seed=4)
    sampler = PKSampler(split.y_train, cfg.p, cfg.k, seed=4)
    for x, y in batches(split, cfg):
        idx = sampler.sample()
        np.testing.assert_array_equal(x, split.x_train[idx])
        np.testing.assert_array_equal(y, split.y_train[idx])
        classes, counts = np.unique(y, return_counts=True)
        assert classes.size == cfg.p and (counts == cfg.k).all()


# --- training on both backends -----------------------------------------------------------------

def _needs(backend):
    pytest.importorskip(backend)
    if backend == "jax":
        pytest.importorskip("optax")
    pytest.importorskip("tqdm")


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_first_step_matches_numpy_network(backend):
    """Both frameworks build the same network and call the same loss: the step-0 loss equals the
    one computed from the plain NumPy forward pass and the NumPy backend of triplet_ref."""
    _needs(backend)
    from examples.digits.objective import Config, objective
    from examples.digits.trainers import batches, forward_numpy, init_params, train

    split = load_split(seed=0)
    cfg = Config(loss="batch_hard", steps=1)
    x, y = next(batches(split, cfg))
    raw = forward_numpy(init_params(cfg, cfg.seed), x, cfg)
    assert raw.shape == (x.shape[0], cfg.output_dim) == (56, 1024)
    expected, curves = objective(y, raw, loss=cfg.loss, margin=cfg.margin)
    got = train(backend, split, cfg, progress=False).curves
    for name in ("loss", "fraction_positive", "mean_embedding_norm", "mean_hardest_positive_dist"):
        assert got[name][0] == pytest.approx(float(curves[name]), rel=1e-4, abs=1e-6), name
    assert float(expected) > 0.05  # an untrained network is not already done


@pytest.mark.parametrize("backend, loss", [("torch", "batch_hard"), ("jax", "batch_semihard")])
def test_training_beats_pixels_on_unseen_digits(backend, loss):
    """The acceptance test of the example: the default recipe (150 steps, about 1-3 s) lowers the
    loss, and on the digits 7-9 that training never saw, nearest-neighbour retrieval in the
    learned embedding beats raw pixels on recall@1 and on mAP, and beats the untrained network on
    mAP. Pixels: recall@1 0.9906 (5 errors in 533), mAP 0.7771. Over five seeds x three losses x
    both backends the trained embedding makes 1-4 errors and its mAP lies in 0.823-0.866, above the
    untrained network's (0.780-0.813) on every seed (examples/README.md, examples/results/digits_seeds.json)."""
    _needs(backend)
    from examples.digits.objective import Config
    from examples.digits.train import evaluate
    from examples.digits.trainers import train, untrained_embed

    split = load_split(seed=0)
    cfg = Config(loss=loss)
    result = train(backend, split, cfg, progress=False)
    loss_curve = result.curves["loss"]
    assert np.isfinite(loss_curve).all()
    assert loss_curve[-20:].mean() < 0.7 * loss_curve[:5].mean()

    trained = evaluate(result.embed, split)
    pixels = evaluate(lambda v: v, split)
    assert pixels["recall_at_1_unseen"] == pytest.approx(528 / 533)  # the dataset's own fact: 5 pixel errors
    assert trained["recall_at_1_unseen"] > pixels["recall_at_1_unseen"]
    assert trained["map_unseen"] > pixels["map_unseen"] + 0.02
    assert trained["map_unseen"] > evaluate(untrained_embed(cfg), split)["map_unseen"]
    # held-out images of the trained digits: a far better ranking than raw pixels (mAP about 0.78)
    assert trained["map_seen"] > 0.9 > pixels["map_seen"]


def test_cli_writes_all_outputs(tmp_path):
    _needs("torch")
    _needs("jax")
    pytest.importorskip("matplotlib")
    from examples.digits.train import main

    assert main(["--all", "--steps", "2", "--out", str(tmp_path), "--projection", "pca", "--no-progress"]) == 0
    report = json.loads((tmp_path / "digits.json").read_text())
    assert set(report["baseline_pixels"]) >= {"recall_at_1_unseen", "map_unseen"}
    runs = {(r["backend"], r["loss"]) for r in report["runs"]}
    assert runs == {(b, l) for b in ("torch", "jax") for l in ("batch_all", "batch_hard", "batch_semihard")}
    for r in report["runs"]:
        assert {"recall_at_1_unseen", "map_unseen", "recall_at_1_seen", "seconds"} <= set(r)
        assert 0.0 <= r["map_unseen"] <= 1.0
    for name in ("training_curves.png", "embedding_pca.png", "vecs.tsv", "meta.tsv", "curves.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    vecs = np.loadtxt(tmp_path / "vecs.tsv", delimiter="\t")
    meta = np.loadtxt(tmp_path / "meta.tsv", dtype=int)
    assert vecs.shape == (316 + 533, 1024) and meta.shape == (316 + 533,)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)


def test_learning_rate_schedule_and_standardisation():
    from examples.digits.objective import Config
    from examples.digits.trainers import standardize_images

    cfg = Config(lr=1e-3, steps=100)
    assert cfg.learning_rate(0) == pytest.approx(1e-3)
    assert cfg.learning_rate(50) == pytest.approx(0.5e-3)
    assert cfg.learning_rate(100) == pytest.approx(0.0, abs=1e-15)
    assert Config(lr=1e-3, steps=100, schedule="constant").learning_rate(70) == 1e-3
    with pytest.raises(ValueError, match="schedule"):
        Config(schedule="linear")
    x = np.array([[0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 7.0]])
    # row 1: mean 1.5, population std sqrt(1.25); row 2: mean 5.5, std sqrt(0.75)
    expected = np.array([[-1.5, -0.5, 0.5, 1.5], [-0.5, -0.5, -0.5, 1.5]]) / np.sqrt([[1.25], [0.75]])
    np.testing.assert_allclose(standardize_images(x, eps=0.0), expected, rtol=1e-12)
